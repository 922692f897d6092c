package load

import (
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, 1 µs to 5 min, 3 significant
// digits (0.1% relative error).
const (
	histMin     = 1
	histMax     = int64(5 * time.Minute / time.Microsecond)
	histSigFigs = 3
)

// recorder is a histogram many goroutines record into. Receivers are spread
// over shards so that the lock is nearly always uncontended; an HDR
// histogram per connection would cost ~100 KB each.
type recorder struct {
	shards []shard
}

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [48]byte // keep neighbouring locks off one cache line
}

func newRecorder(shards int) *recorder {
	r := &recorder{shards: make([]shard, max(shards, 1))}
	for i := range r.shards {
		r.shards[i].h = hdrhistogram.New(histMin, histMax, histSigFigs)
	}
	return r
}

// record adds one duration (nanoseconds) to shard i.
func (r *recorder) record(i int, ns int64) {
	us := ns / 1000
	us = min(max(us, histMin), histMax)
	s := &r.shards[i%len(r.shards)]
	s.mu.Lock()
	_ = s.h.RecordValue(us)
	s.mu.Unlock()
}

// merged returns all shards as one histogram.
func (r *recorder) merged() *hdrhistogram.Histogram {
	out := hdrhistogram.New(histMin, histMax, histSigFigs)
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		out.Merge(s.h)
		s.mu.Unlock()
	}
	return out
}

// Latency summarises a histogram in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

func summarize(h *hdrhistogram.Histogram) *Latency {
	if h.TotalCount() == 0 {
		return &Latency{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return &Latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  float64(int64(h.Mean()+0.5)) / 1000,
	}
}
