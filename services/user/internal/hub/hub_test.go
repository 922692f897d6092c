package hub

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
)

func benchRoom(tb testing.TB, n int) (*Hub, *room, []*Client) {
	h := New(Config{Instance: "bench", HistorySize: 50, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: NewMetrics(prometheus.NewRegistry())})
	tb.Cleanup(func() {
		if h.poller != nil {
			h.poller.Close()
		}
	})
	r := &room{name: "bench", synced: true, local: map[*Client]joinState{}, presence: map[string]protocol.Member{}}
	clients := make([]*Client, n)
	for i := range clients {
		// closed: no writer starts; drain empties the queues instead.
		clients[i] = &Client{h: h, q: queue{limit: 1 << 20, limitBytes: 1 << 30, wake: make(chan struct{}, 1), closed: true},
			done: make(chan struct{}), extended: true}
		r.local[clients[i]] = joined
	}
	return h, r, clients
}

// drain empties the clients' queues as their writers would, keeping each
// queue's array for reuse.
func drain(clients []*Client) {
	for _, c := range clients {
		c.q.mu.Lock()
		clear(c.q.items)
		c.q.items = c.q.items[:0]
		c.q.mu.Unlock()
	}
}

// The fan-out encodes once: its allocations do not grow with the members.
func TestFanoutAllocatesOncePerMessage(t *testing.T) {
	h, r, clients := benchRoom(t, 500)
	m := protocol.Message{Room: "bench", Text: "hi", TS: 1}
	allocs := testing.AllocsPerRun(100, func() {
		m.Seq++
		h.mu.Lock()
		h.deliverLocked(r, &m)
		h.mu.Unlock()
		drain(clients)
	})
	if allocs > 1 {
		t.Fatalf("%.1f allocations per message for 500 members, want 1", allocs)
	}
}

// BenchmarkFanout measures delivering one message to every local member of
// a room: one encoding, then one queue operation per member (the members'
// queues are drained outside the timer's concern but inside the loop, as a
// writer goroutine would).
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			h, r, clients := benchRoom(b, n)
			m := protocol.Message{Room: "bench", From: "alice", UID: "u1", ID: "c1", Text: "hello world, this is a chat message", TS: 1764400000000}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				m.Seq = r.last + 1
				h.mu.Lock()
				h.deliverLocked(r, &m)
				h.mu.Unlock()
				drain(clients)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}
