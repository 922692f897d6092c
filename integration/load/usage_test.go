package load

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	stat := []byte("1234 (ws user) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000000 500 18446744073709551615\n")
	us, err := parseProcStat(stat)
	if err != nil || us != 300*10_000 {
		t.Fatalf("got %d, %v", us, err)
	}
	if _, err := parseProcStat([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short stat accepted")
	}
	rss, err := parseVmRSS([]byte("Name:\tws-user\nVmPeak:\t 9 kB\nVmRSS:\t    2048 kB\n"))
	if err != nil || rss != 2048*1024 {
		t.Fatalf("rss %d, %v", rss, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\n")); err == nil {
		t.Fatal("missing VmRSS accepted")
	}
}

func TestSampleSelf(t *testing.T) {
	u := usage{targets: []target{procTarget{pid: os.Getpid(), root: "/proc"}}}
	s, err := u.sample()
	if err != nil || s.memBytes <= 0 || s.cpuMicros < 0 {
		t.Fatalf("%+v %v", s, err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCgroups(t *testing.T) {
	root := t.TempDir()
	// v2, systemd driver.
	v2 := filepath.Join(root, "system.slice", "docker-abcdef0123.scope")
	write(t, filepath.Join(v2, "cpu.stat"), "usage_usec 1500\nuser_usec 1000\n")
	write(t, filepath.Join(v2, "memory.stat"), "file 999\nanon 4096\n")
	// v1, cgroupfs driver (this machine's layout).
	write(t, filepath.Join(root, "cpuacct", "docker", "fedcba9876", "cpuacct.usage"), "2500000\n")
	write(t, filepath.Join(root, "memory", "docker", "fedcba9876", "memory.stat"), "cache 1\nrss 5\ntotal_cache 1\ntotal_rss 8192\n")

	for _, c := range []struct {
		ref      string
		cpu, mem int64
	}{{"system.slice/docker-abcdef0123.scope", 1500, 4096}, {v2, 1500, 4096},
		{"docker/fedcba9876", 2500, 8192}, {filepath.Join(root, "memory", "docker", "fedcba9876"), 2500, 8192}} {
		tg, err := resolveCgroup(root, c.ref)
		if err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		cpu, mem, err := tg.sample()
		if err != nil || cpu != c.cpu || mem != c.mem {
			t.Fatalf("%s: cpu %d mem %d %v", c.ref, cpu, mem, err)
		}
	}
	for _, id := range []string{"abcdef", "fedcba98"} {
		if _, err := containerCgroup(t.Context(), root, id); err != nil {
			t.Fatalf("container %s: %v", id, err)
		}
	}
	if _, err := resolveCgroup(root, "docker/nothere"); err == nil {
		t.Fatal("missing cgroup accepted")
	}
}
