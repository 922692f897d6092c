package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// A target is something whose CPU time and memory can be sampled: a
// process or a cgroup (a container).
type target interface {
	sample() (cpuMicros, memBytes int64, err error)
	String() string
}

// usage samples the sum over several targets.
type usage struct{ targets []target }

func (u usage) empty() bool { return len(u.targets) == 0 }

func (u usage) sample() (snap, error) {
	var s snap
	for _, t := range u.targets {
		cpu, mem, err := t.sample()
		if err != nil {
			return snap{}, fmt.Errorf("sample %s: %w", t, err)
		}
		s.cpuMicros += cpu
		s.memBytes += mem
	}
	return s, nil
}

type snap struct{ cpuMicros, memBytes int64 }

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// it is 100 on every Linux architecture Go supports.
const clockTicks = 100

type procTarget struct {
	pid  int
	root string // "/proc", replaced in tests
}

func (p procTarget) String() string { return "pid " + strconv.Itoa(p.pid) }

func (p procTarget) sample() (int64, int64, error) {
	dir := filepath.Join(p.root, strconv.Itoa(p.pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0, 0, err
	}
	cpu, err := parseProcStat(stat)
	if err != nil {
		return 0, 0, err
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return 0, 0, err
	}
	rss, err := parseVmRSS(status)
	if err != nil {
		return 0, 0, err
	}
	return cpu, rss, nil
}

// parseProcStat returns utime+stime in microseconds. The command name
// (field 2) may hold spaces and parentheses, so fields are counted from the
// last ')'.
func parseProcStat(b []byte) (int64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat times: %w", err)
	}
	return (ut + st) * (1_000_000 / clockTicks), nil
}

func parseVmRSS(b []byte) (int64, error) {
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("malformed VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS (a kernel thread or a zombie?)")
}

// cgroupTarget is one cgroup, v2 (cpu.stat usage_usec, memory.stat anon)
// or v1 (cpuacct.usage in ns, memory.stat total_rss). Memory is the
// anonymous memory, the cgroup's equivalent of RSS: memory.current would
// also count the page cache of the relayer's log.
type cgroupTarget struct {
	name    string
	cpuFile string // v2 cpu.stat or v1 cpuacct.usage
	memFile string // memory.stat
	v2      bool
}

func (c cgroupTarget) String() string { return "cgroup " + c.name }

func (c cgroupTarget) sample() (int64, int64, error) {
	cpuB, err := os.ReadFile(c.cpuFile)
	if err != nil {
		return 0, 0, err
	}
	var cpu int64
	if c.v2 {
		v, ok := statField(cpuB, "usage_usec")
		if !ok {
			return 0, 0, fmt.Errorf("%s has no usage_usec", c.cpuFile)
		}
		cpu = v
	} else {
		ns, err := strconv.ParseInt(strings.TrimSpace(string(cpuB)), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", c.cpuFile, err)
		}
		cpu = ns / 1000
	}
	memB, err := os.ReadFile(c.memFile)
	if err != nil {
		return 0, 0, err
	}
	key := "total_rss"
	if c.v2 {
		key = "anon"
	}
	mem, ok := statField(memB, key)
	if !ok {
		return 0, 0, fmt.Errorf("%s has no %s", c.memFile, key)
	}
	return cpu, mem, nil
}

// statField reads "key value" lines (cpu.stat, memory.stat).
func statField(b []byte, key string) (int64, bool) {
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == key {
			v, err := strconv.ParseInt(f[1], 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// v1Controllers are the directories a v1 hierarchy may be mounted at, to
// strip from an absolute path given for a cgroup.
var v1Controllers = []string{"cpu,cpuacct", "cpuacct,cpu", "cpuacct", "cpu", "memory", "unified", "systemd"}

// resolveCgroup finds the files of a cgroup given as a path relative to the
// cgroup root ("docker/<id>", "system.slice/docker-<id>.scope") or as an
// absolute path under root, in the v2 or the v1 layout.
func resolveCgroup(root, path string) (cgroupTarget, error) {
	rel := path
	if filepath.IsAbs(path) {
		r, err := filepath.Rel(root, path)
		if err != nil || strings.HasPrefix(r, "..") {
			return cgroupTarget{}, fmt.Errorf("cgroup %s is not under %s", path, root)
		}
		rel = r
		first, rest, _ := strings.Cut(rel, string(filepath.Separator))
		for _, c := range v1Controllers {
			if first == c {
				rel = rest
				break
			}
		}
	}
	rel = strings.Trim(rel, "/")
	v2 := filepath.Join(root, rel)
	if b, err := os.ReadFile(filepath.Join(v2, "cpu.stat")); err == nil {
		if _, ok := statField(b, "usage_usec"); ok && exists(filepath.Join(v2, "memory.stat")) {
			return cgroupTarget{name: rel, cpuFile: filepath.Join(v2, "cpu.stat"), memFile: filepath.Join(v2, "memory.stat"), v2: true}, nil
		}
	}
	mem := filepath.Join(root, "memory", rel, "memory.stat")
	for _, c := range []string{"cpuacct", "cpu,cpuacct", "cpuacct,cpu", "cpu"} {
		cpu := filepath.Join(root, c, rel, "cpuacct.usage")
		if exists(cpu) && exists(mem) {
			return cgroupTarget{name: rel, cpuFile: cpu, memFile: mem}, nil
		}
	}
	return cgroupTarget{}, fmt.Errorf("no cgroup %q under %s (neither v2 cpu.stat+memory.stat nor v1 cpuacct+memory)", path, root)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// containerCgroup finds the cgroup of a Docker container: by id or id
// prefix in the layouts Docker uses (cgroupfs: docker/<id>, systemd:
// system.slice/docker-<id>.scope, in v1 or v2), resolving a name through
// `docker inspect` first.
func containerCgroup(ctx context.Context, root, ref string) (cgroupTarget, error) {
	id := ref
	if !isHex(ref) {
		out, err := exec.CommandContext(ctx, "docker", "inspect", "--format", "{{.Id}}", ref).Output()
		if err != nil {
			return cgroupTarget{}, fmt.Errorf("docker inspect %s: %w", ref, err)
		}
		id = strings.TrimSpace(string(out))
	}
	var patterns []string
	for _, base := range []string{"", "memory", "unified"} {
		patterns = append(patterns,
			filepath.Join(root, base, "docker", id+"*"),
			filepath.Join(root, base, "system.slice", "docker-"+id+"*.scope"))
	}
	for _, p := range patterns {
		m, _ := filepath.Glob(p)
		if len(m) > 1 {
			return cgroupTarget{}, fmt.Errorf("container id %s is ambiguous: %v", ref, m)
		}
		if len(m) == 1 {
			t, err := resolveCgroup(root, m[0])
			if err == nil {
				t.name = "container " + ref
				return t, nil
			}
		}
	}
	return cgroupTarget{}, fmt.Errorf("no cgroup found for container %s under %s", ref, root)
}

func isHex(s string) bool {
	if len(s) < 4 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}
