package load

import (
	"math"
	"testing"
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
