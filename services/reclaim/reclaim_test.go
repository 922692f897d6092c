package reclaim

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestDue(t *testing.T) {
	const min = 16 << 20
	for _, c := range []struct {
		name                    string
		sinceLast, lastInterval uint64
		burst                   bool
		want                    bool
	}{
		{"burst, then quiet", 100 << 20, 0, true, true},
		{"burst, then a trickle", 100 << 20, min/quietShare - 1, true, true},
		{"still busy", 100 << 20, min / quietShare, true, false},
		{"busy burst", 100 << 20, 100 << 20, true, false},
		{"too little since the last reclaim", min - 1, 0, true, false},
		{"just enough", min, 0, true, true},
		{"a long trickle, no burst", 100 << 20, 0, false, false},
	} {
		if got := due(c.sinceLast, c.lastInterval, c.burst, min); got != c.want {
			t.Errorf("%s: due(%d, %d, %v) = %v, want %v", c.name, c.sinceLast, c.lastInterval, c.burst, got, c.want)
		}
	}
}

var sink [][]byte

// After a burst of garbage and a quiet interval, Run collects and returns
// the free memory to the system: what the heap holds from the system
// (mapped, not released) falls back.
func TestRunReclaimsAfterABurst(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reclaims := make(chan time.Duration, 16)
	// GC off, so that only Run collects the burst.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	retained := func() uint64 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapSys - m.HeapReleased
	}
	// What was allocated before Run started is no burst of its own.
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil
	go Run(ctx, Config{Quiet: 20 * time.Millisecond, MinBytes: 32 << 20, Reclaimed: func(d time.Duration) { reclaims <- d }})
	select {
	case <-reclaims:
		t.Fatal("reclaimed without a burst while running")
	case <-time.After(100 * time.Millisecond): // five quiet intervals
	}
	debug.FreeOSMemory() // that, and what earlier tests left
	before := retained()
	for range 64 {
		sink = append(sink, make([]byte, 1<<20))
	}
	sink = nil // 64 MiB of garbage, in an interval of Run's
	burst := retained()
	if burst < before+48<<20 {
		t.Fatalf("the burst did not grow the heap: %d -> %d bytes", before, burst)
	}
	select {
	case <-reclaims:
	case <-ctx.Done():
		t.Fatal("no reclaim after the burst")
	}
	if after := retained(); after > before+16<<20 {
		t.Fatalf("heap retained %d bytes before the burst, %d with it, still %d after the reclaim", before, burst, after)
	}
}
