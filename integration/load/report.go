package load

import (
	"fmt"
	"io"
	"strings"
)

// Result is the JSON line a run prints. Counts of messages cover the
// measured window only (by scheduled send time); duplicates and
// out-of-order deliveries are counted over warm-up too.
type Result struct {
	Label            string   `json:"label,omitempty"`
	Mode             string   `json:"mode"`
	Protocol         string   `json:"protocol"`
	URLs             []string `json:"urls"`
	Rooms            int      `json:"rooms"`
	Members          int      `json:"members"`
	Publishers       int      `json:"publishers"`
	RatePerPublisher float64  `json:"rate_per_publisher"`
	WarmupS          float64  `json:"warmup_s"`
	DurationS        float64  `json:"duration_s"`

	Conns         int `json:"conns"` // established and joined
	ConnectFailed int `json:"connect_failed"`

	Sent            int64    `json:"sent"`
	Expected        int64    `json:"expected"` // sent × members of the room
	Delivered       int64    `json:"delivered"`
	Lost            int64    `json:"lost"`
	Duplicated      int64    `json:"duplicated"`
	OutOfOrder      int64    `json:"out_of_order"`
	Unsent          int64    `json:"unsent"` // scheduled but never written (error or hard stop)
	Acked           int64    `json:"acked"`
	DeliveredPerSec float64  `json:"delivered_per_s"`
	MaxBehindMs     float64  `json:"max_behind_ms"` // how late the generator sent vs its schedule
	Latency         *Latency `json:"latency_ms,omitempty"`

	Connect *Latency `json:"connect_ms"`        // TCP + WebSocket upgrade
	Join    *Latency `json:"join_ms,omitempty"` // join → joined (extended)
	Setup   *Latency `json:"setup_ms,omitempty"`

	HoldS float64 `json:"hold_s,omitempty"`
	// TotalConns (idle) counts the connections of every generator process
	// that held connections to the servers at the same time.
	TotalConns int `json:"total_conns,omitempty"`

	Storm *Storm `json:"storm,omitempty"`
	Burst *Burst `json:"burst,omitempty"`

	Errors     map[string]int64 `json:"errors"`
	ErrorCount int64            `json:"error_count"`
	Server     *Usage           `json:"server,omitempty"`
	Tier       *Usage           `json:"tier,omitempty"` // -tier-pids, fan-out only
	Generator  *Usage           `json:"generator"`
}

// Storm is the outcome of a connection storm.
type Storm struct {
	Steps []StormStep `json:"steps"`
	// BestRate is the highest rate sustained, in connections/s over all
	// instances: what the best step that kept up achieved, at most its
	// plan.
	BestRate            float64 `json:"best_rate"`
	BestRatePerInstance float64 `json:"best_rate_per_instance"`
	// Stopped says how the rising steps ended (failure | cap | max_rate |
	// deadline), whatever then cut the bisection short.
	Stopped string `json:"stopped"`
	// PeakAchieved is the highest completion rate of any step, sustained
	// or not: what the servers managed while falling behind.
	PeakAchieved            float64 `json:"peak_achieved_rate"`
	PeakAchievedPerInstance float64 `json:"peak_achieved_rate_per_instance"`
}

// StormStep is one rate step of a storm.
type StormStep struct {
	Rate     float64 `json:"rate"`
	Conns    int     `json:"conns"`
	Failed   int     `json:"failed"`
	Achieved float64 `json:"achieved_rate"` // conns / (last setup done - step start)
	P50      float64 `json:"setup_p50_ms"`
	P99      float64 `json:"setup_p99_ms"`
	OK       bool    `json:"ok"`
	// Partial: cut short by the connection cap; it does not count as
	// sustained.
	Partial bool `json:"partial,omitempty"`
	// Refine: a bisection step after the first failure.
	Refine bool `json:"refine,omitempty"`
}

func writeSummary(w io.Writer, r *Result) {
	var b strings.Builder
	fmt.Fprintf(&b, "== wsload %s %s %s: %d conns over %d URL(s), %d connect failures\n",
		r.Label, r.Mode, r.Protocol, r.Conns, len(r.URLs), r.ConnectFailed)
	lat := func(name string, l *Latency) {
		if l != nil && l.Count > 0 {
			fmt.Fprintf(&b, "%-9s ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (n=%d)\n",
				name, l.P50, l.P90, l.P99, l.P999, l.Max, l.Count)
		}
	}
	switch r.Mode {
	case "fanout":
		fmt.Fprintf(&b, "workload : %d rooms x %d members, %d publisher(s)/room at %.1f msg/s, warm-up %.1fs, measured %.1fs\n",
			r.Rooms, r.Members, r.Publishers, r.RatePerPublisher, r.WarmupS, r.DurationS)
		fmt.Fprintf(&b, "messages : sent %d, expected %d, delivered %d (%.0f/s), lost %d, dup %d, out-of-order %d, unsent %d, generator max behind %.1f ms\n",
			r.Sent, r.Expected, r.Delivered, r.DeliveredPerSec, r.Lost, r.Duplicated, r.OutOfOrder, r.Unsent, r.MaxBehindMs)
		lat("latency", r.Latency)
	case "idle":
		fmt.Fprintf(&b, "held %d connections for %.1fs\n", r.Conns, r.HoldS)
	case "storm":
		if s := r.Storm; s != nil {
			for _, st := range s.Steps {
				fmt.Fprintf(&b, "step %8.0f/s: %6d conns, %4d failed, achieved %8.0f/s, setup p50 %.1f p99 %.1f ms, ok=%v%s\n",
					st.Rate, st.Conns, st.Failed, st.Achieved, st.P50, st.P99, st.OK,
					map[bool]string{true: " (partial)"}[st.Partial]+map[bool]string{true: " (refine)"}[st.Refine])
			}
			fmt.Fprintf(&b, "best sustained: %.0f conns/s (%.0f per instance), stopped by %s; peak achieved %.0f conns/s (%.0f per instance)\n",
				s.BestRate, s.BestRatePerInstance, s.Stopped, s.PeakAchieved, s.PeakAchievedPerInstance)
		}
	case "burst":
		if bu := r.Burst; bu != nil {
			fmt.Fprintf(&b, "burst    : %d conns, %d at a time, set up in %.2fs: %.0f conns/s (%.0f per instance)\n",
				r.Conns, bu.Concurrency, bu.WallS, bu.Rate, bu.RatePerInstance)
			if len(bu.TCPDrops) > 0 {
				fmt.Fprintf(&b, "kernel   : handshakes dropped or retried %v\n", bu.TCPDrops)
			}
		}
	}
	lat("connect", r.Connect)
	lat("join", r.Join)
	lat("setup", r.Setup)
	if s := r.Server; s != nil {
		fmt.Fprintf(&b, "server   : cpu %d us (%.1f%% of a core)", s.CPUMicros, s.CPUPercent)
		if s.CPUPerMsgUs > 0 {
			fmt.Fprintf(&b, ", %.2f us/delivered msg", s.CPUPerMsgUs)
		}
		fmt.Fprintf(&b, ", mem %.1f -> %.1f MiB, %.0f B/conn\n", mib(s.MemBase), mib(s.MemEnd), s.MemPerConn)
	}
	if t := r.Tier; t != nil {
		fmt.Fprintf(&b, "tier     : cpu %d us (%.1f%% of a core), %.2f us/published msg, %.2f us/delivered msg\n",
			t.CPUMicros, t.CPUPercent, t.CPUPerPublishUs, t.CPUPerMsgUs)
	}
	if g := r.Generator; g != nil {
		fmt.Fprintf(&b, "generator: cpu %d us (%.1f%% of a core), rss %.1f MiB\n", g.CPUMicros, g.CPUPercent, mib(g.MemEnd))
	}
	fmt.Fprintf(&b, "errors   : %d", r.ErrorCount)
	for _, k := range sortedKeys(r.Errors) {
		fmt.Fprintf(&b, " %s=%d", k, r.Errors[k])
	}
	b.WriteString("\n")
	_, _ = io.WriteString(w, b.String())
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
