package load

import (
	"context"
	"math"
	"time"
)

// Burst is the outcome of a reconnect burst: every connection at once,
// -connect-concurrency of them in flight, as after a mass reconnect (the
// performance issue's storm: 19,000 clients, 128 at a time).
type Burst struct {
	Concurrency int `json:"concurrency"`
	// WallS runs from the first dial to the last connection set up
	// (dialled, upgraded and joined): how long the reconnect took.
	WallS float64 `json:"wall_s"`
	// Rate is the connections set up per second of WallS, over all
	// instances.
	Rate            float64 `json:"rate"`
	RatePerInstance float64 `json:"rate_per_instance"`
	// ServerCPUPerConnUs is the servers' CPU over the burst per
	// connection set up (with -pids, -cgroups or -containers).
	ServerCPUPerConnUs float64 `json:"server_cpu_per_conn_us,omitempty"`
	// TCPDrops is how much the kernel's handshake-drop counters rose over
	// the burst (tcpDrops; only those that rose): a reason for setups of a
	// second and more that is not the servers' work.
	TCPDrops map[string]int64 `json:"tcp_drops,omitempty"`
}

// burst opens -conns connections, each joining a room, -connect-concurrency
// at a time and as fast as the servers take them; they stay open until the
// last is set up. Unlike storm, it judges nothing: it reports how long the
// burst took and each setup's latency (dial to joined, not counting the
// wait for a place among those in flight).
func (r *runner) burst(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	base, selfBase, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.log.Info("burst", "conns", cfg.conns, "concurrency", cfg.connectConcurrency, "urls", len(cfg.urls))
	drops := readTCPDrops()
	start := r.now()
	o, err := r.openHeld(ctx)
	if err != nil {
		return nil, err
	}
	defer r.closeAll(o.conns, &o.readers)
	wall := time.Duration(max(o.lastDone-start, 0))
	dropped := tcpDelta(drops, readTCPDrops())
	end, selfEnd, err := r.sample()
	if err != nil {
		return nil, err
	}
	// The samples' window: closing 19,000 connections takes a while.
	elapsed := time.Duration(max(r.now()-start, 1))
	r.closeAll(o.conns, &o.readers)

	res := o.result(r)
	b := &Burst{Concurrency: cfg.connectConcurrency, WallS: round(wall.Seconds()), TCPDrops: dropped}
	if wall > 0 {
		b.Rate = math.Round(float64(res.Conns) / wall.Seconds())
		b.RatePerInstance = math.Round(b.Rate / float64(len(cfg.urls)))
	}
	res.Burst = b
	if !r.server.empty() {
		res.Server = makeUsage(r.server, base, base, end, elapsed, res.Conns)
		b.ServerCPUPerConnUs = round(float64(res.Server.CPUMicros) / float64(res.Conns))
	}
	res.Generator = makeUsage(r.self, selfBase, selfBase, selfEnd, elapsed, res.Conns)
	res.Errors, res.ErrorCount = r.errs.snapshot()
	return res, nil
}
