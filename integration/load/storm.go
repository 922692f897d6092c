package load

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// storm opens connections (each joining a room) at increasing rates, one
// step at a time, until a step fails (any setup error or a setup p99 over
// -storm-max-p99), the connection cap or the highest rate. Connections
// stay open, as after a mass reconnect.
func (r *runner) storm(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	base, selfBase, err := r.sample()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var conns []*conn
	var readers sync.WaitGroup
	defer func() { r.closeAll(conns, &readers) }()

	st := &Storm{}
	stormStart := r.now()
	total, failedTotal := 0, 0
	for rate := cfg.stormStart; ; rate = min(rate*cfg.stormFactor, cfg.stormMaxRate) {
		planned := int(rate * cfg.stormStep.Seconds())
		n := min(planned, cfg.conns-total)
		if n <= 0 {
			st.Stopped = "cap"
			break
		}
		if ctx.Err() != nil {
			st.Stopped = "deadline"
			break
		}
		step := StormStep{Rate: rate, Conns: n, Partial: n < planned}
		rec := newRecorder(4)
		var failed atomic.Int64
		var firstDone, lastDone atomic.Int64
		firstDone.Store(math.MaxInt64)
		var wg sync.WaitGroup
		start := r.now() + int64(10*time.Millisecond)
		r.log.Info("storm step", "rate", rate, "conns", n)
		for j := range n {
			due := start + int64(float64(j)*1e9/rate)
			// Timers are coarser than a millisecond: launch whatever is
			// due within one, keeping the schedule open-loop.
			if due-r.now() > int64(time.Millisecond) {
				if r.sleepUntil(ctx, due) != nil {
					break
				}
			}
			idx := total + j
			wg.Go(func() {
				ws, ns, err := r.setup(ctx, idx, roomName(cfg.prefix, idx/cfg.members))
				if err != nil {
					failed.Add(1)
					return
				}
				rec.record(idx, ns)
				done := r.now()
				settle(&firstDone, done, func(cur int64) bool { return done < cur })
				settle(&lastDone, done, func(cur int64) bool { return done > cur })
				c := &conn{r: r, idx: idx, ws: ws}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				readers.Go(c.readLoop)
			})
		}
		wg.Wait()
		h := rec.merged()
		step.Failed = int(failed.Load())
		step.Achieved = round(achievedRate(n-step.Failed, rate, start, firstDone.Load(), lastDone.Load()))
		step.P50 = float64(h.ValueAtQuantile(50)) / 1000
		step.P99 = float64(h.ValueAtQuantile(99)) / 1000
		// A step is sustained only if the servers kept up with it: no
		// failure, setup p99 in bounds, and the planned rate achieved
		// (open-loop launches alone would otherwise "reach" any rate). A
		// step cut short by the cap is not held to the rate: its last
		// setup's latency weighs on a shorter span, and it cannot raise
		// the best rate anyway.
		step.OK = step.Failed == 0 && time.Duration(h.ValueAtQuantile(99))*time.Microsecond <= cfg.stormMaxP99 &&
			(step.Partial || step.Achieved >= cfg.stormMinAchieved*rate)
		if !step.Partial {
			// A short last step that keeps up reads exactly its rate,
			// which nothing sustained.
			st.PeakAchieved = max(st.PeakAchieved, step.Achieved)
		}
		st.Steps = append(st.Steps, step)
		total += n
		failedTotal += step.Failed
		if !step.OK {
			st.Stopped = "failure"
			break
		}
		if step.Partial {
			st.Stopped = "cap"
			break
		}
		st.BestRate = rate
		if rate >= cfg.stormMaxRate {
			st.Stopped = "max_rate"
			break
		}
	}
	st.BestRatePerInstance = round(st.BestRate / float64(len(cfg.urls)))
	st.PeakAchievedPerInstance = round(st.PeakAchieved / float64(len(cfg.urls)))
	elapsed := time.Duration(r.now() - stormStart)
	end, selfEnd, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.closeAll(conns, &readers)

	res := r.result()
	res.Conns, res.ConnectFailed = total-failedTotal, failedTotal
	res.Storm = st
	if !r.server.empty() {
		res.Server = makeUsage(r.server, base, base, end, elapsed, res.Conns)
	}
	res.Generator = makeUsage(r.self, selfBase, selfBase, selfEnd, elapsed, res.Conns)
	res.Errors, res.ErrorCount = r.errs.snapshot()
	return res, nil
}

// achievedRate is the rate at which a step's ok setups completed: over the
// span from the first completion to the last, but never a shorter span than
// their launches took (setups held up by a stall and then finished in a
// burst must not look faster than the schedule). Measuring from the step's
// start instead would count the last setup's latency against the rate, and
// fail a short step that keeps up with some latency (the setup p99 bound
// judges that). One setup has no span: it is measured from the start.
func achievedRate(ok int, rate float64, start, firstDone, lastDone int64) float64 {
	switch {
	case ok <= 0 || lastDone <= start:
		return 0
	case ok == 1:
		return 1 / (float64(lastDone-start) / 1e9)
	}
	span := max(lastDone-firstDone, int64(float64(ok-1)*1e9/rate))
	return float64(ok-1) / (float64(span) / 1e9)
}

// settle stores x in v for as long as better says x beats v's value.
func settle(v *atomic.Int64, x int64, better func(cur int64) bool) {
	for {
		cur := v.Load()
		if !better(cur) || v.CompareAndSwap(cur, x) {
			return
		}
	}
}
