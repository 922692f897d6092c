package hub

import (
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
)

// fakePeer is a Peer that keeps what is queued to it, for tests without
// sockets; limit bounds its room messages (0: none).
type fakePeer struct {
	id     string
	limit  int
	frames [][]byte
	closed string // the close reason, once closed
	catch  bool
}

func (p *fakePeer) ID() string                  { return p.id }
func (p *fakePeer) Send(b []byte)               { p.frames = append(p.frames, b) }
func (p *fakePeer) SendLazy(b []byte)           { p.frames = append(p.frames, b) }
func (p *fakePeer) SendError(e *protocol.Error) { p.frames = append(p.frames, protocol.Encode(e)) }
func (p *fakePeer) SendLive(b []byte) bool {
	if p.limit > 0 && len(p.frames) >= p.limit {
		return false
	}
	p.frames = append(p.frames, b)
	return true
}
func (p *fakePeer) Drained() bool                    { return p.limit == 0 || len(p.frames) < p.limit/2 }
func (p *fakePeer) QueueLimits() (frames, bytes int) { return max(p.limit, 1<<20), 1 << 30 }
func (p *fakePeer) SetCatchingUp(on bool)            { p.catch = on }
func (p *fakePeer) Closing() bool                    { return p.closed != "" }
func (p *fakePeer) Close(_ int, reason string)       { p.closed = "closed: " + reason }
func (p *fakePeer) CloseAfter(code int, reason string) {
	p.closed = fmt.Sprintf("closed after its queue (%d): %s", code, reason)
}

func benchRoom(tb testing.TB, n int) (*Hub, *room, []*fakePeer) {
	h := New(Config{Instance: "bench", HistorySize: 50, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: NewMetrics(prometheus.NewRegistry())})
	r := &room{name: "bench", keep: 50, synced: true, local: map[*client]joinState{}, presence: map[string]protocol.Member{}}
	peers := make([]*fakePeer, n)
	for i := range peers {
		peers[i] = &fakePeer{id: fmt.Sprint("u", i)}
		c := h.open(peers[i])
		c.extended = true
		r.local[c] = joined
	}
	return h, r, peers
}

// drain empties the peers' queues as their writers would, keeping each
// queue's array for reuse.
func drain(peers []*fakePeer) {
	for _, p := range peers {
		clear(p.frames)
		p.frames = p.frames[:0]
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
