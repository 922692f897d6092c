package load

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// idle opens connections that each join one room and then hold still,
// to measure what an idle connection costs the servers.
func (r *runner) idle(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	base, selfBase, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.log.Info("connecting", "conns", cfg.conns, "urls", len(cfg.urls))
	o, err := r.openHeld(ctx)
	if err != nil {
		return nil, err
	}
	defer r.closeAll(o.conns, &o.readers)
	established := cfg.conns - o.failed
	start, selfStart, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.log.Info("holding", "conns", established, "hold", cfg.hold)
	holdStart := r.now()
	_ = r.sleepUntil(ctx, holdStart+int64(cfg.hold))
	held := time.Duration(r.now() - holdStart)
	end, selfEnd, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.closeAll(o.conns, &o.readers)

	res := o.result(r)
	res.HoldS = round(held.Seconds())
	if !r.server.empty() {
		// Other generator processes may hold connections to the same
		// servers at the same time: -total-conns counts them all.
		res.TotalConns = cfg.totalConns - o.failed
		res.Server = makeUsage(r.server, base, start, end, held, res.TotalConns)
	}
	res.Generator = makeUsage(r.self, selfBase, selfStart, selfEnd, held, established)
	res.Errors, res.ErrorCount = r.errs.snapshot()
	return res, nil
}

// opened is what openHeld set up.
type opened struct {
	conns    []*conn // nil where the setup failed
	readers  sync.WaitGroup
	failed   int
	lastDone int64 // the run's clock when the last setup completed
}

// openHeld opens -conns connections, each joining its room (-members to a
// room), -connect-concurrency at a time, and keeps them open and read. It
// fails when none could be set up.
func (r *runner) openHeld(ctx context.Context) (*opened, error) {
	cfg := r.cfg
	o := &opened{conns: make([]*conn, cfg.conns)}
	var failed, lastDone atomic.Int64
	r.openAll(ctx, cfg.conns, func(i int) {
		ws, _, err := r.setup(ctx, i, roomName(cfg.prefix, i/cfg.members))
		if err != nil {
			failed.Add(1)
			return
		}
		done := r.now()
		settle(&lastDone, done, func(cur int64) bool { return done > cur })
		c := &conn{r: r, idx: i, ws: ws}
		o.conns[i] = c
		o.readers.Go(c.readLoop)
	})
	o.failed, o.lastDone = int(failed.Load()), lastDone.Load()
	if o.failed == cfg.conns {
		errs, _ := r.errs.snapshot()
		return nil, fmt.Errorf("no connection could be set up (%v)", errs)
	}
	return o, nil
}

// result starts the run's result with the connections o set up.
func (o *opened) result(r *runner) *Result {
	res := r.result()
	res.Rooms = (r.cfg.conns + r.cfg.members - 1) / r.cfg.members
	res.Conns, res.ConnectFailed = r.cfg.conns-o.failed, o.failed
	return res
}
