package load

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
)

// WriteTable reads Result JSON lines (as the runs print them) and writes
// one Markdown table row per run: the benchmark table of docs/benchmarks.md.
// Idle runs split over several generator processes are separate lines, each
// already reporting memory over the total connections; they are shown once.
//
// Runs of mode "floor" (cmd/writefloor: the CPU of one write(2) to one of
// many loopback sockets read on another CPU) are rows too, and every CPU
// per delivery is also given as a ratio to the floor measured at the
// nearest rate among them ("× floor"): figures taken in one run compare,
// absolute ones do not carry across machines.
func WriteTable(r io.Reader, w io.Writer) error {
	var runs []Result
	seenIdle := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var res Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			return fmt.Errorf("line %d: not a wsload result: %w", n, err)
		}
		if res.Mode == "idle" && res.TotalConns > res.Conns {
			key := res.Label + " " + res.Protocol
			if seenIdle[key] {
				continue
			}
			seenIdle[key] = true
		}
		runs = append(runs, res)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	var floors []Result
	for _, r := range runs {
		if r.Mode == "floor" && r.Server != nil && r.Server.CPUPerMsgUs > 0 {
			floors = append(floors, r)
		}
	}
	var b strings.Builder
	b.WriteString("| run | protocol | conns | deliveries/s | p50 / p99 / max ms | server CPU per delivery | × floor | server CPU | server RSS per conn | loss / dup / order | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range runs {
		b.WriteString(tableRow(&runs[i], floorFor(floors, runs[i].DeliveredPerSec)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// floorFor returns the CPU per write of the floor runs nearest to rate
// (deliveries a second; their mean when several ran at it), 0 without one.
func floorFor(floors []Result, rate float64) float64 {
	dist := func(f Result) float64 { return math.Abs(math.Log(max(f.DeliveredPerSec, 1) / max(rate, 1))) }
	nearest := math.Inf(1)
	for _, f := range floors {
		nearest = min(nearest, dist(f))
	}
	sum, n := 0.0, 0
	for _, f := range floors {
		if dist(f) <= nearest+0.05 { // within 5 %: the same rate
			sum, n = sum+f.Server.CPUPerMsgUs, n+1
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

func tableRow(r *Result, floor float64) string {
	cell := func(format string, args ...any) string { return fmt.Sprintf(format, args...) }
	dash := "–"
	conns, rate, lat, perMsg, ratio, cpu, mem, quality, notes := cell("%d", r.Conns), dash, dash, dash, dash, dash, dash, dash, ""
	if s := r.Server; s != nil {
		cpu = cell("%.0f %%", s.CPUPercent)
		if s.MemPerConn > 0 {
			mem = cell("%.1f KB", s.MemPerConn/1000)
		}
		if s.CPUPerMsgUs > 0 {
			perMsg = cell("%.1f µs", s.CPUPerMsgUs)
			if floor > 0 && r.Mode != "floor" {
				ratio = cell("%.2f", s.CPUPerMsgUs/floor)
			}
		}
	}
	switch r.Mode {
	case "floor":
		rate = cell("%.0f", r.DeliveredPerSec)
		notes = "write floor (cmd/writefloor): one write(2) per frame to loopback sockets read on another CPU"
	case "fanout":
		rate = cell("%.0f", r.DeliveredPerSec)
		if l := r.Latency; l != nil {
			lat = cell("%.1f / %.1f / %.0f", l.P50, l.P99, l.Max)
		}
		quality = cell("%d / %d / %d", r.Lost, r.Duplicated, r.OutOfOrder)
		notes = cell("%d rooms × %d, %d pub/room at %g/s", r.Rooms, r.Members, r.Publishers, r.RatePerPublisher)
		if t := r.Tier; t != nil {
			notes += cell("; relay tier %.1f µs per publish (%.0f %% of a core)", t.CPUPerPublishUs, t.CPUPercent)
		}
	case "idle":
		conns = cell("%d", max(r.Conns, r.TotalConns))
		notes = cell("idle, held %.0fs", r.HoldS)
	case "storm":
		if s := r.Storm; s != nil {
			rate = dash
			on := ""
			if len(r.URLs) > 0 {
				on = cell(" on %d instance(s)", len(r.URLs))
			}
			notes = cell("storm%s: sustained %.0f conn/s (%.0f per instance), peak achieved %.0f (%.0f per instance), stopped by %s",
				on, s.BestRate, s.BestRatePerInstance, s.PeakAchieved, s.PeakAchievedPerInstance, s.Stopped)
		}
		if l := r.Setup; l != nil {
			lat = cell("setup %.0f / %.0f / %.0f", l.P50, l.P99, l.Max)
		}
	case "burst":
		if bu := r.Burst; bu != nil {
			notes = cell("burst: %d at a time over %d instance(s), all set up in %.2f s: %.0f conn/s (%.0f per instance), %.0f µs of server CPU each",
				bu.Concurrency, len(r.URLs), bu.WallS, bu.Rate, bu.RatePerInstance, bu.ServerCPUPerConnUs)
			if len(bu.TCPDrops) > 0 {
				notes += cell("; kernel: %v", bu.TCPDrops)
			}
		}
		if l := r.Setup; l != nil {
			lat = cell("setup %.0f / %.0f / %.0f", l.P50, l.P99, l.Max)
		}
	}
	if r.ErrorCount > 0 {
		notes += cell("; %d errors", r.ErrorCount)
	}
	protocol := r.Protocol
	if protocol == "" {
		protocol = dash
	}
	return cell("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Label, protocol, conns, rate, lat, perMsg, ratio, cpu, mem, quality, notes)
}
