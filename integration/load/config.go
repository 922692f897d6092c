package load

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

type config struct {
	mode, protocol string
	urls           []*url.URL
	sources        []net.Addr
	label, prefix  string

	rooms, members, publishers int
	rate                       float64
	size                       int
	warmup, duration, drain    time.Duration
	joinTimeout, settle        time.Duration

	conns, totalConns  int
	connectRate        float64
	connectConcurrency int
	connectTimeout     time.Duration
	hold               time.Duration

	stormStart, stormFactor, stormMaxRate float64
	stormRefine                           int
	stormMinAchieved                      float64
	stormStep, stormMaxP99                time.Duration

	readBuffer int
	insecure   bool
	maxTime    time.Duration

	pids                []int
	cgroups, containers []string
	cgroupRoot          string
	// tierPIDs are the relay tier's processes (ws-relayer, nats-server):
	// fan-out runs report their CPU apart, per delivery and per publish.
	tierPIDs []int
}

func (c *config) extended() bool { return c.protocol == "extended" }

// centrifugo: the peer's client protocol (Centrifugo's JSON protocol: a
// connect command, a subscription per room, publish commands), for the
// same workloads side by side (centrifugo.go).
func (c *config) centrifugo() bool { return c.protocol == "centrifugo" }

// parseFlags reads the command line. Errors name the flag at fault.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	name := "wsload"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var urls, sources, pids, cgroups, containers, tierPIDs string
	fs.StringVar(&c.mode, "mode", "fanout", "fanout | idle | storm | burst")
	fs.StringVar(&c.protocol, "protocol", "extended", "extended (hello, join acked, chat acked) | seed (join-room, chat, no acks) | centrifugo (the peer: Centrifugo's JSON protocol, rooms as channels)")
	fs.StringVar(&urls, "urls", "ws://127.0.0.1:8080/ws", "comma-separated WebSocket URLs; clients are spread round-robin")
	fs.StringVar(&sources, "source", "", "comma-separated local IPs to dial from, round-robin (for more than ~10,000 connections per destination)")
	fs.StringVar(&c.label, "label", "", "free text copied into the result (a workload name)")
	fs.StringVar(&c.prefix, "prefix", "", "room name prefix; default load-<pid>-<time>, unique per run and process")
	fs.IntVar(&c.rooms, "rooms", 10, "fanout: rooms")
	fs.IntVar(&c.members, "members", 10, "members per room (idle, storm: connections per room)")
	fs.IntVar(&c.publishers, "publishers", 1, "fanout: publishers per room (members that also send)")
	fs.Float64Var(&c.rate, "rate", 10, "fanout: messages per second per publisher")
	fs.IntVar(&c.size, "size", 0, "fanout: pad message text to this many bytes")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "fanout: traffic before the measured window")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "fanout: measured window")
	fs.DurationVar(&c.drain, "drain", 5*time.Second, "fanout: longest wait for deliveries after the last send")
	fs.DurationVar(&c.joinTimeout, "join-timeout", 10*time.Second, "seed: longest wait for every member to see a probe message")
	fs.DurationVar(&c.settle, "settle", 0, "extra pause after all joins before traffic")
	fs.IntVar(&c.conns, "conns", 0, "idle: connections (default rooms*members); storm: cap on connections; burst: connections")
	fs.IntVar(&c.totalConns, "total-conns", 0, "idle: connections of all generator processes together, for RSS per connection (default -conns)")
	fs.Float64Var(&c.connectRate, "connect-rate", 0, "connections opened per second while setting up (0 = as fast as -connect-concurrency allows)")
	fs.IntVar(&c.connectConcurrency, "connect-concurrency", 64, "connection setups in flight")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 10*time.Second, "dial + upgrade + hello/join, per connection")
	fs.DurationVar(&c.hold, "hold", 10*time.Second, "idle: how long to hold the connections")
	fs.Float64Var(&c.stormStart, "storm-start", 100, "storm: first step, connections per second (all instances)")
	fs.Float64Var(&c.stormFactor, "storm-factor", 1.5, "storm: rate multiplier per step")
	fs.IntVar(&c.stormRefine, "storm-refine", 3, "storm: bisection steps between the last sustained rate and the first failed one")
	fs.Float64Var(&c.stormMaxRate, "storm-max-rate", 50000, "storm: highest step rate")
	fs.DurationVar(&c.stormStep, "storm-step", 2*time.Second, "storm: length of a step")
	fs.Float64Var(&c.stormMinAchieved, "storm-min-achieved", 0.9, "storm: a step fails when fewer than this fraction of its planned rate complete per second")
	fs.DurationVar(&c.stormMaxP99, "storm-max-p99", time.Second, "storm: a step fails when its p99 setup time exceeds this")
	fs.IntVar(&c.readBuffer, "read-buffer", 4096, "bytes of the read buffer per connection")
	fs.BoolVar(&c.insecure, "insecure", false, "wss: skip certificate verification")
	fs.DurationVar(&c.maxTime, "max-time", 0, "hard bound on the whole run (default: the schedule + 60s)")
	fs.StringVar(&pids, "pids", "", "comma-separated server PIDs to sample (/proc)")
	fs.StringVar(&tierPIDs, "tier-pids", "", "comma-separated PIDs of the relay tier (ws-relayer, nats-server), usually also in -pids: fan-out runs report their CPU apart as tier")
	fs.StringVar(&cgroups, "cgroups", "", "comma-separated cgroups to sample (relative to -cgroup-root or absolute)")
	fs.StringVar(&containers, "containers", "", "comma-separated Docker container ids or names to sample")
	fs.StringVar(&c.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup file system root")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for _, s := range split(urls) {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			bad("-urls: %q is not a ws:// or wss:// URL", s)
			continue
		}
		if u.Path == "" {
			u.Path = "/"
		}
		c.urls = append(c.urls, u)
	}
	if len(c.urls) == 0 {
		bad("-urls: at least one URL is required")
	}
	for _, s := range split(sources) {
		ip := net.ParseIP(s)
		if ip == nil {
			bad("-source: %q is not an IP address", s)
			continue
		}
		c.sources = append(c.sources, &net.TCPAddr{IP: ip})
	}
	pidsOf := func(flag, list string) []int {
		var out []int
		for _, p := range split(list) {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 {
				bad("-%s: %q is not a process id", flag, p)
				continue
			}
			out = append(out, n)
		}
		return out
	}
	c.pids, c.tierPIDs = pidsOf("pids", pids), pidsOf("tier-pids", tierPIDs)
	c.cgroups, c.containers = split(cgroups), split(containers)
	switch c.mode {
	case "fanout", "idle", "storm", "burst":
	default:
		bad("-mode: want fanout, idle, storm or burst, got %q", c.mode)
	}
	switch c.protocol {
	case "seed", "extended", "centrifugo":
	default:
		bad("-protocol: want seed, extended or centrifugo, got %q", c.protocol)
	}
	if c.rooms < 1 || c.members < 1 {
		bad("-rooms and -members must be at least 1")
	}
	if c.publishers < 1 || c.publishers > c.members {
		bad("-publishers must be between 1 and -members (%d)", c.members)
	}
	if !(c.rate > 0 && c.rate <= 1e6) {
		bad("-rate must be in (0, 1e6]")
	}
	if c.size < 0 || c.size > 1<<20 {
		bad("-size must be in [0, 1MiB]")
	}
	if c.duration <= 0 || c.warmup < 0 || c.drain < 0 || c.settle < 0 || c.hold < 0 {
		bad("-duration must be positive, -warmup, -drain, -settle and -hold not negative")
	}
	if c.joinTimeout <= 0 || c.connectTimeout <= 0 || c.stormStep <= 0 || c.stormMaxP99 <= 0 {
		bad("timeouts and -storm-step must be positive")
	}
	if c.connectConcurrency < 1 || c.connectRate < 0 {
		bad("-connect-concurrency must be at least 1, -connect-rate not negative")
	}
	if !(c.stormMinAchieved >= 0 && c.stormMinAchieved <= 1) {
		bad("-storm-min-achieved must be in [0, 1]")
	}
	if !(c.stormStart > 0) || !(c.stormFactor > 1) || c.stormMaxRate < c.stormStart {
		bad("-storm-start must be positive, -storm-factor above 1, -storm-max-rate at least -storm-start")
	}
	if c.stormRefine < 0 || c.stormRefine > 20 {
		bad("-storm-refine must be in [0, 20]")
	}
	if c.readBuffer < 512 || c.readBuffer > 1<<20 {
		bad("-read-buffer must be in [512, 1MiB]")
	}
	if c.conns < 0 || c.totalConns < 0 {
		bad("-conns and -total-conns must not be negative")
	}
	switch c.mode {
	case "fanout":
		c.conns = c.rooms * c.members
	case "idle":
		if c.conns == 0 {
			c.conns = c.rooms * c.members
		}
	case "storm", "burst":
		if c.conns == 0 {
			c.conns = 5000
		}
	}
	if c.totalConns == 0 {
		c.totalConns = c.conns
	}
	// Every connection is a descriptor; failing midway through a run at
	// EMFILE would measure the generator, not the servers.
	if lim := openFilesLimit(); lim > 0 && uint64(c.conns)+64 > lim {
		bad("%d connections need more descriptors than the open-files limit %d allows: run several generator processes (see README)", c.conns, lim)
	}
	if c.prefix == "" {
		c.prefix = fmt.Sprintf("load-%d-%d", os.Getpid(), time.Now().UnixMilli()%1e9)
	}
	if c.maxTime == 0 {
		c.maxTime = c.warmup + c.duration + c.drain + c.joinTimeout + c.settle + c.hold + 60*time.Second
		if c.mode == "storm" {
			c.maxTime += 10 * time.Minute
		}
	}
	return c, errors.Join(errs...)
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// procTargets are the processes pids, sampled in /proc.
func procTargets(pids []int) []target {
	var ts []target
	for _, n := range pids {
		ts = append(ts, procTarget{pid: n, root: "/proc"})
	}
	return ts
}

// targets resolves -pids, -cgroups and -containers, and -tier-pids apart.
func (c *config) targets(ctx context.Context) (server, tier usage, err error) {
	tier.targets = procTargets(c.tierPIDs)
	if _, err := tier.sample(); err != nil {
		return server, tier, fmt.Errorf("relay tier usage: %w", err)
	}
	server, err = c.serverTargets(ctx)
	return server, tier, err
}

func (c *config) serverTargets(ctx context.Context) (usage, error) {
	u := usage{targets: procTargets(c.pids)}
	for _, p := range c.cgroups {
		t, err := resolveCgroup(c.cgroupRoot, p)
		if err != nil {
			return u, fmt.Errorf("-cgroups: %w", err)
		}
		u.targets = append(u.targets, t)
	}
	for _, id := range c.containers {
		t, err := containerCgroup(ctx, c.cgroupRoot, id)
		if err != nil {
			return u, fmt.Errorf("-containers: %w", err)
		}
		u.targets = append(u.targets, t)
	}
	if _, err := u.sample(); err != nil {
		return u, fmt.Errorf("server usage: %w", err)
	}
	return u, nil
}
