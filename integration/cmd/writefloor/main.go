// Command writefloor measures the write floor of this machine: the CPU a
// process spends to write one small frame to one of many loopback
// sockets, each write its own write(2), while another process on another
// CPU reads them. No server that writes each delivery with its own
// system call can spend less per delivery; docs/benchmarks.md gives every
// figure as a ratio to it.
//
//	writefloor [-conns 1000] [-rate 40000] [-size 150] [-duration 10s] [-warmup 2s] [-label floor] [-reader-cpus 1]
//
// It listens on loopback, starts itself again as the reader (pinned with
// taskset to -reader-cpus, when taskset is installed), which opens the
// connections and discards what arrives; then it writes -size bytes to
// the connections in turn, -rate writes a second, from one goroutine, and
// prints one JSON line: the writer's CPU (getrusage: user and system) per
// write over -duration after -warmup. Pin the writer itself as the
// servers are pinned (run-local.sh: taskset -c 0).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "writefloor:", err)
		os.Exit(1)
	}
}

// result is the JSON line writefloor prints; wsload table reads it as a
// run of mode "floor".
type result struct {
	Label     string  `json:"label"`
	Mode      string  `json:"mode"`
	Conns     int     `json:"conns"`
	Rate      float64 `json:"rate_per_publisher"` // writes a second, as wsload's field
	Size      int     `json:"size"`
	DurationS float64 `json:"duration_s"`
	Writes    int64   `json:"writes"`
	PerSec    float64 `json:"delivered_per_s"`
	Server    struct {
		CPUPerMsgUs float64 `json:"cpu_us_per_msg"`
		CPUPercent  float64 `json:"cpu_percent"`
	} `json:"server"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	conns := fs.Int("conns", 1000, "loopback connections")
	rate := fs.Float64("rate", 40000, "writes a second, over all connections")
	size := fs.Int("size", 150, "bytes per write")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 2*time.Second, "time written before the measurement")
	label := fs.String("label", "floor", "the result's label")
	readerCPUs := fs.String("reader-cpus", "1", "CPUs of the reader process (taskset -c), empty: not pinned")
	reader := fs.String("reader", "", "internal: be the reader of this address")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *reader != "" {
		return read(ctx, *reader, *conns)
	}
	if *conns < 1 || *rate <= 0 || *size < 1 || *duration <= 0 || *warmup < 0 {
		return errors.New("-conns, -rate, -size and -duration must be positive, -warmup not negative")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find myself: %w", err)
	}
	argv := []string{self, "-reader", ln.Addr().String(), "-conns", strconv.Itoa(*conns)}
	if _, err := exec.LookPath("taskset"); err == nil && *readerCPUs != "" {
		argv = append([]string{"taskset", "-c", *readerCPUs}, argv...)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(rctx, argv[0], argv[1:]...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the reader: %w", err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()

	cs := make([]net.Conn, 0, *conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for len(cs) < *conns {
		if d, ok := ctx.Deadline(); ok {
			_ = ln.(*net.TCPListener).SetDeadline(d)
		}
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept connection %d: %w", len(cs)+1, err)
		}
		cs = append(cs, c)
	}

	frame := make([]byte, *size)
	// Paced by 1 ms ticks: each tick writes what the schedule owes, one
	// write per frame, connections in turn.
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	measureFrom, measureTo := start.Add(*warmup), start.Add(*warmup+*duration)
	var written, writesAtStart int64
	var cpuAtStart time.Duration
	next := 0
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			if cpuAtStart == 0 && !now.Before(measureFrom) {
				cpuAtStart, writesAtStart = cpu(), written
			}
			if !now.Before(measureTo) {
				used, n := cpu()-cpuAtStart, written-writesAtStart
				var r result
				r.Label, r.Mode, r.Conns, r.Rate, r.Size = *label, "floor", *conns, *rate, *size
				r.DurationS, r.Writes, r.PerSec = duration.Seconds(), n, float64(n)/duration.Seconds()
				r.Server.CPUPerMsgUs = float64(used.Microseconds()) / float64(max(n, 1))
				r.Server.CPUPercent = 100 * used.Seconds() / duration.Seconds()
				return json.NewEncoder(stdout).Encode(r)
			}
			due := int64(now.Sub(start).Seconds() * *rate)
			for ; written < due; written++ {
				if _, err := cs[next].Write(frame); err != nil {
					return fmt.Errorf("write: %w", err)
				}
				next = (next + 1) % len(cs)
			}
		}
	}
}

// cpu is this process's CPU time so far, user and system.
func cpu() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// read opens n connections to addr and discards what arrives until the
// writer closes them or ctx ends.
func read(ctx context.Context, addr string, n int) error {
	var d net.Dialer
	done := make(chan struct{}, n)
	for i := range n {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("dial %d: %w", i+1, err)
		}
		go func() {
			defer func() { done <- struct{}{} }()
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}()
	}
	for range n {
		select {
		case <-done:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}
