package load

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// storm opens connections (each joining a room) at the rates ramp plans,
// one step at a time; a step fails on any setup error, a setup p99 over
// -storm-max-p99 or the planned rate not achieved. Connections stay open,
// as after a mass reconnect.
func (r *runner) storm(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	base, selfBase, err := r.sample()
	if err != nil {
		return nil, err
	}
	kept := &held{}
	defer func() { r.closeAll(kept.conns, &kept.readers) }()

	stormStart := r.now()
	total := 0
	st := ramp(ctx, cfg, func(rate float64, n int, partial bool) StormStep {
		s := r.stormStep(ctx, rate, n, total, partial, kept)
		total += s.Conns
		return s
	}, func() error {
		return r.sleepUntil(ctx, r.now()+int64(cfg.stormStep))
	})
	failedTotal := 0
	for _, s := range st.Steps {
		failedTotal += s.Failed
	}
	elapsed := time.Duration(r.now() - stormStart)
	end, selfEnd, err := r.sample()
	if err != nil {
		return nil, err
	}
	r.closeAll(kept.conns, &kept.readers)

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

// held is what a storm keeps open: connections stay, as after a mass
// reconnect.
type held struct {
	mu      sync.Mutex
	conns   []*conn
	readers sync.WaitGroup
}

// stormStep opens n connections at rate, the first with index first, into
// h, and judges the step: sustained only if the servers kept up with it (no
// failure, setup p99 in bounds, and the planned rate achieved: open-loop
// launches alone would otherwise "reach" any rate). A partial step, cut
// short by the cap, is not held to the rate: its last setup's latency
// weighs on a shorter span, and it cannot raise the best rate anyway.
func (r *runner) stormStep(ctx context.Context, rate float64, n, first int, partial bool, h *held) StormStep {
	cfg := r.cfg
	step := StormStep{Rate: rate, Conns: n, Partial: partial}
	rec := newRecorder(4)
	var failed atomic.Int64
	var firstDone, lastDone atomic.Int64
	firstDone.Store(math.MaxInt64)
	var wg sync.WaitGroup
	start := r.now() + int64(10*time.Millisecond)
	r.log.Info("storm step", "rate", rate, "conns", n)
	launched := 0
	for j := range n {
		due := start + int64(float64(j)*1e9/rate)
		// Timers are coarser than a millisecond: launch whatever is due
		// within one, keeping the schedule open-loop.
		if due-r.now() > int64(time.Millisecond) {
			if r.sleepUntil(ctx, due) != nil {
				break
			}
		}
		idx := first + j
		launched++
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
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
			h.readers.Go(c.readLoop)
		})
	}
	wg.Wait()
	lat := rec.merged()
	// The run's end may cut the launches short.
	step.Conns = launched
	step.Failed = int(failed.Load())
	step.Achieved = round(achievedRate(launched-step.Failed, rate, start, firstDone.Load(), lastDone.Load()))
	step.P50 = float64(lat.ValueAtQuantile(50)) / 1000
	step.P99 = float64(lat.ValueAtQuantile(99)) / 1000
	step.OK = step.Failed == 0 && time.Duration(lat.ValueAtQuantile(99))*time.Microsecond <= cfg.stormMaxP99 &&
		(partial || step.Achieved >= cfg.stormMinAchieved*rate)
	return step
}

// ramp plans a storm's steps and books them: rising rates until a step
// fails, the cap or the highest rate, then a bisection of the edge between
// the last sustained rate and the failed one, which a factor of 1.5 leaves
// far apart. run opens n connections at rate and judges them; pause lets
// the servers drain a failed step's backlog before the next.
func ramp(ctx context.Context, cfg *config, run func(rate float64, n int, partial bool) StormStep, pause func() error) *Storm {
	st := &Storm{}
	total := 0
	step := func(rate float64, n int, partial, refine bool) StormStep {
		s := run(rate, n, partial)
		s.Refine = refine
		if !partial {
			// A short last step that keeps up reads exactly its rate,
			// which nothing sustained.
			st.PeakAchieved = max(st.PeakAchieved, s.Achieved)
		}
		st.Steps = append(st.Steps, s)
		total += s.Conns
		return s
	}
	// A step kept up with by at least -storm-min-achieved of its plan
	// counts as sustained at what it achieved, never above its plan.
	sustained := func(s StormStep) { st.BestRate = max(st.BestRate, min(s.Rate, s.Achieved)) }
	failedAt := 0.0
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
		s := step(rate, n, n < planned, false)
		if !s.OK {
			st.Stopped = "failure"
			failedAt = rate
			break
		}
		if s.Partial {
			st.Stopped = "cap"
			break
		}
		sustained(s)
		if rate >= cfg.stormMaxRate {
			st.Stopped = "max_rate"
			break
		}
	}
	// Bisect between the last sustained step's plan and the failed one,
	// in whole steps only (a partial one proves nothing). Nothing failed:
	// hi is 0, and so is the first step.
	lo, hi := 0.0, failedAt
	if n := len(st.Steps); n >= 2 && failedAt > 0 {
		lo = st.Steps[n-2].Rate
	}
	for range cfg.stormRefine {
		rate := (lo + hi) / 2
		n := int(rate * cfg.stormStep.Seconds())
		if n <= 0 || n > cfg.conns-total || ctx.Err() != nil || pause() != nil {
			break
		}
		if s := step(rate, n, false, true); s.OK {
			lo = rate
			sustained(s)
		} else {
			hi = rate
		}
	}
	st.BestRatePerInstance = round(st.BestRate / float64(len(cfg.urls)))
	st.PeakAchievedPerInstance = round(st.PeakAchieved / float64(len(cfg.urls)))
	return st
}
