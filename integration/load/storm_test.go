package load

import (
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
	// A server that keeps up with 95 % of any rate up to 4,000 conn/s
	// and completes at most 4,400 a second beyond that.
	const edge = 4000.0
	base := config{stormStart: 1000, stormFactor: 1.5, stormMaxRate: 50000, stormStep: 500 * time.Millisecond,
		conns: 19000, stormRefine: 3, urls: make([]*url.URL, 2)}
	for _, c := range []struct {
		name    string
		edit    func(*config)
		pauseOK bool
		rates   []float64 // the steps' rates; a refine step is negative
		best    float64   // the plan of the best sustained step
	}{
		{"bisects three times", func(*config) {}, true,
			[]float64{1000, 1500, 2250, 3375, 5062.5, -4218.75, -3796.875, -4007.8125}, 3796.875},
		{"no refining", func(c *config) { c.stormRefine = 0 }, true,
			[]float64{1000, 1500, 2250, 3375, 5062.5}, 3375},
		// After the first refine step, 100 connections are left: not
		// enough for a whole step at 3,797/s.
		{"the cap stops it", func(c *config) { c.conns = 500 + 750 + 1125 + 1687 + 2531 + 2109 + 100 }, true,
			[]float64{1000, 1500, 2250, 3375, 5062.5, -4218.75}, 3375},
		{"from zero", func(c *config) { c.stormStart = 6000 }, true,
			[]float64{6000, -3000, -4500, -3750}, 3750},
		{"pause cut short", func(*config) {}, false,
			[]float64{1000, 1500, 2250, 3375, 5062.5}, 3375},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			c.edit(&cfg)
			pauses, total := 0, 0
			st := ramp(context.Background(), &cfg, func(rate float64, n int, partial bool) StormStep {
				if n != int(rate*cfg.stormStep.Seconds()) || partial {
					t.Errorf("%.2f/s: %d conns (partial %v), want a whole step", rate, n, partial)
				}
				total += n
				if rate <= edge {
					return StormStep{Rate: rate, Conns: n, Achieved: 0.95 * rate, OK: true}
				}
				return StormStep{Rate: rate, Conns: n, Achieved: min(rate, edge*1.1)}
			}, func() error {
				pauses++
				if !c.pauseOK {
					return context.Canceled
				}
				return nil
			})
			var rates []float64
			peak := 0.0
			for _, s := range st.Steps {
				rates = append(rates, map[bool]float64{true: -1, false: 1}[s.Refine]*s.Rate)
				peak = max(peak, s.Achieved)
			}
			// Sustained is what the best step achieved, not its plan.
			best := 0.95 * c.best
			if !slices.Equal(rates, c.rates) || st.BestRate != best || st.Stopped != "failure" ||
				st.BestRatePerInstance != round(best/2) || total > cfg.conns || st.PeakAchieved != peak {
				t.Fatalf("steps %v best %.3f (%.1f per instance) peak %.1f stopped by %s, %d conns; want steps %v best %.3f peak %.1f",
					rates, st.BestRate, st.BestRatePerInstance, st.PeakAchieved, st.Stopped, total, c.rates, best, peak)
			}
			want := 0
			for _, r := range c.rates {
				if r < 0 {
					want++
				}
			}
			if !c.pauseOK {
				want = 1 // the one that failed
			}
			if pauses != want {
				t.Fatalf("%d pauses, want %d: one before each refine step", pauses, want)
			}
		})
	}
}
