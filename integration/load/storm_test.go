package load

import (
	"cmp"
	"context"
	"math"
	"net/url"
	"slices"
	"testing"
	"time"
)

func TestAchievedRate(t *testing.T) {
	const ms = int64(1e6)
	for _, c := range []struct {
		name               string
		ok                 int
		rate               float64
		start, first, last int64
		want               float64
	}{
		// 1,001 setups launched over 500 ms, each taking 100 ms: the
		// servers kept up. From the step's start it would read 1,668/s.
		{"kept up with latency", 1001, 2000, 0, 100 * ms, 600 * ms, 2000},
		// Completions spread over twice the launch span: half the rate.
		{"fell behind", 1001, 2000, 0, 10 * ms, 1010 * ms, 1000},
		// Setups held up by a stall that then finish in a burst do not
		// make the step faster than its schedule.
		{"burst", 1001, 2000, 0, 400 * ms, 450 * ms, 2000},
		{"one", 1, 2000, 0, 20 * ms, 20 * ms, 50},
		{"none", 0, 2000, 0, math.MaxInt64, 0, 0},
	} {
		if got := achievedRate(c.ok, c.rate, c.start, c.first, c.last); math.Abs(got-c.want) > 0.01 {
			t.Errorf("%s: %.2f/s, want %.2f/s", c.name, got, c.want)
		}
	}
}

func TestRampBisectsTheEdge(t *testing.T) {
	// A server that keeps up with any rate up to 4,000 conn/s (at 95 % of
	// it unless a case says otherwise) and completes at most 4,400 a
	// second beyond that.
	const edge = 4000.0
	base := config{stormStart: 1000, stormFactor: 1.5, stormMaxRate: 50000, stormStep: 500 * time.Millisecond,
		conns: 19000, stormRefine: 3, urls: make([]*url.URL, 2)}
	type ramped struct {
		name     string
		edit     func(*config)
		achieved float64 // of a sustained step's plan; 0: 0.95
		cancelAt int     // the context ends during this step (1-based); 0: never
		pauseOK  bool
		rates    []float64 // the steps' rates; a refine step is negative
		best     float64   // the plan of the best sustained step
		stopped  string
	}
	none := func(*config) {}
	for _, c := range []ramped{
		{name: "bisects three times", edit: none, pauseOK: true, stopped: "failure",
			rates: []float64{1000, 1500, 2250, 3375, 5062.5, -4218.75, -3796.875, -4007.8125}, best: 3796.875},
		{name: "no refining", edit: func(c *config) { c.stormRefine = 0 }, pauseOK: true, stopped: "failure",
			rates: []float64{1000, 1500, 2250, 3375, 5062.5}, best: 3375},
		// After the first refine step, 100 connections are left: not
		// enough for a whole step at 3,797/s.
		{name: "the cap stops it", edit: func(c *config) { c.conns = 500 + 750 + 1125 + 1687 + 2531 + 2109 + 100 }, pauseOK: true,
			stopped: "failure", rates: []float64{1000, 1500, 2250, 3375, 5062.5, -4218.75}, best: 3375},
		// A failed step cut short by the cap leaves nothing to bisect with.
		{name: "failed partial step", edit: func(c *config) { c.conns = 500 + 750 + 1125 + 1687 + 100 }, pauseOK: true,
			stopped: "failure", rates: []float64{1000, 1500, 2250, 3375, 5062.5}, best: 3375},
		{name: "from zero", edit: func(c *config) { c.stormStart = 6000 }, pauseOK: true, stopped: "failure",
			rates: []float64{6000, -3000, -4500, -3750}, best: 3750},
		{name: "pause cut short", edit: none, stopped: "failure",
			rates: []float64{1000, 1500, 2250, 3375, 5062.5}, best: 3375},
		// Nothing failed: nothing to bisect.
		{name: "highest rate", edit: func(c *config) { c.stormMaxRate = 3000 }, pauseOK: true, stopped: "max_rate",
			rates: []float64{1000, 1500, 2250, 3000}, best: 3000},
		{name: "deadline", edit: none, cancelAt: 2, pauseOK: true, stopped: "deadline",
			rates: []float64{1000, 1500}, best: 1500},
		// A step whose completions bunch up may read above its plan; it
		// counts at its plan.
		{name: "above plan", edit: none, achieved: 1.2, pauseOK: true, stopped: "failure",
			rates: []float64{1000, 1500, 2250, 3375, 5062.5, -4218.75, -3796.875, -4007.8125}, best: 3796.875},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.edit(&cfg)
			factor := cmp.Or(c.achieved, 0.95)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			steps, pauses, total := 0, 0, 0
			st := ramp(ctx, &cfg, func(rate float64, n int, partial bool) StormStep {
				steps++
				if steps == c.cancelAt {
					cancel()
				}
				if n > cfg.conns-total || n != int(rate*cfg.stormStep.Seconds()) && !(partial && n == cfg.conns-total) {
					t.Errorf("%.2f/s: %d conns (partial %v) with %d left", rate, n, partial, cfg.conns-total)
				}
				total += n
				if rate <= edge {
					return StormStep{Rate: rate, Conns: n, Achieved: factor * rate, OK: true, Partial: partial}
				}
				return StormStep{Rate: rate, Conns: n, Achieved: min(rate, edge*1.1), Partial: partial}
			}, func() error {
				pauses++
				if !c.pauseOK {
					return context.Canceled
				}
				return nil
			})
			var rates []float64
			peak, want := 0.0, 0
			for _, s := range st.Steps {
				rates = append(rates, map[bool]float64{true: -1, false: 1}[s.Refine]*s.Rate)
				if !s.Partial {
					peak = max(peak, s.Achieved)
				}
				if s.Refine {
					want++
				}
			}
			// Sustained is what the best step achieved, never above its plan.
			best := min(factor, 1) * c.best
			if !slices.Equal(rates, c.rates) || st.BestRate != best || st.Stopped != c.stopped ||
				st.BestRatePerInstance != round(best/2) || st.PeakAchieved != peak {
				t.Fatalf("steps %v best %.3f (%.1f per instance) peak %.1f stopped by %s; want steps %v best %.3f peak %.1f stopped by %s",
					rates, st.BestRate, st.BestRatePerInstance, st.PeakAchieved, st.Stopped, c.rates, best, peak, c.stopped)
			}
			if !c.pauseOK && st.Stopped == "failure" {
				want = 1 // the one that failed
			}
			if pauses != want {
				t.Fatalf("%d pauses, want %d: one before each refine step", pauses, want)
			}
		})
	}
}
