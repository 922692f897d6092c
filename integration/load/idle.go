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
	conns := make([]*conn, cfg.conns)
	var readers sync.WaitGroup
	var failed atomic.Int64
	r.log.Info("connecting", "conns", cfg.conns, "urls", len(cfg.urls))
	r.openAll(ctx, cfg.conns, func(i int) {
		ws, _, err := r.setup(ctx, i, roomName(cfg.prefix, i/cfg.members))
		if err != nil {
			failed.Add(1)
			return
		}
		c := &conn{r: r, idx: i, ws: ws}
		conns[i] = c
		readers.Go(c.readLoop)
	})
	defer r.closeAll(conns, &readers)
	established := cfg.conns - int(failed.Load())
	if established == 0 {
		errs, _ := r.errs.snapshot()
		return nil, fmt.Errorf("no connection could be set up (%v)", errs)
	}
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
	r.closeAll(conns, &readers)

	res := r.result()
	res.Rooms = (cfg.conns + cfg.members - 1) / cfg.members
	res.Conns, res.ConnectFailed = established, int(failed.Load())
	res.HoldS = round(held.Seconds())
	if !r.server.empty() {
		// Other generator processes may hold connections to the same
		// servers at the same time: -total-conns counts them all.
		res.TotalConns = cfg.totalConns - int(failed.Load())
		res.Server = makeUsage(r.server, base, start, end, held, res.TotalConns)
	}
	res.Generator = makeUsage(r.self, selfBase, selfStart, selfEnd, held, established)
	res.Errors, res.ErrorCount = r.errs.snapshot()
	return res, nil
}
