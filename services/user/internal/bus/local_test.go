package bus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// recorder is a Handler that keeps what it is told.
type recorder struct {
	mu   sync.Mutex
	subs []Subscription
	msgs []uint64
	acks map[string]uint64
	got  chan struct{}
}

func newRecorder() *recorder {
	return &recorder{acks: map[string]uint64{}, got: make(chan struct{}, 1000)}
}

func (r *recorder) note(f func()) {
	r.mu.Lock()
	f()
	r.mu.Unlock()
	r.got <- struct{}{}
}
func (r *recorder) Subscribed(s Subscription)                         { r.note(func() { r.subs = append(r.subs, s) }) }
func (r *recorder) Message(m *protocol.Message)                       { r.note(func() { r.msgs = append(r.msgs, m.Seq) }) }
func (r *recorder) Ack(mid, _ string, seq uint64)                     { r.note(func() { r.acks[mid] = seq }) }
func (r *recorder) Nack(string, *protocol.Error)                      {}
func (r *recorder) Presence(string, string, protocol.Member)          {}
func (r *recorder) Fetched(uint64, []protocol.Message, uint64, error) {}
func (r *recorder) State() []Interest                                 { return nil }
func (r *recorder) LinkState(bool)                                    {}
func (r *recorder) Restarted()                                        {}

// wait blocks until n more callbacks happened.
func (r *recorder) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-r.got:
		case <-time.After(5 * time.Second):
			t.Fatal("timed out waiting for the bus")
		}
	}
}

func TestLocalSequencesAndCatchesUp(t *testing.T) {
	rec := newRecorder()
	l := NewLocal(rec, 5)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)

	for k := range 8 {
		if err := l.Publish(fmt.Sprint("m", k), "", protocol.Message{Room: "r", Text: fmt.Sprint(k)}); err != nil {
			t.Fatal(err)
		}
	}
	rec.wait(t, 16) // a message and an ack each
	if !slices.Equal(rec.msgs, []uint64{1, 2, 3, 4, 5, 6, 7, 8}) || rec.acks["m7"] != 8 {
		t.Fatalf("msgs %v acks %v", rec.msgs, rec.acks)
	}
	l.Subscribe(Interest{Room: "r", Tail: 2})           // new: the last 2
	l.Subscribe(Interest{Room: "r", Since: 6, Tail: 1}) // catch-up after 6
	l.Subscribe(Interest{Room: "r", Since: 1, Tail: 1}) // too old: only 4..8 kept
	l.Subscribe(Interest{Room: "new", Tail: 3})         // unknown room
	rec.wait(t, 4)
	seqs := func(s Subscription) (out []uint64) {
		for _, m := range s.Msgs {
			out = append(out, m.Seq)
		}
		return out
	}
	if s := rec.subs[0]; !slices.Equal(seqs(s), []uint64{7, 8}) || s.Seq != 8 || s.First != 4 {
		t.Fatalf("new subscription: %+v", s)
	}
	if s := rec.subs[1]; !slices.Equal(seqs(s), []uint64{7, 8}) {
		t.Fatalf("catch-up: %+v", s)
	}
	if s := rec.subs[2]; s.First != 4 || !slices.Equal(seqs(s), []uint64{4, 5, 6, 7, 8}) {
		t.Fatalf("too old: %+v", s)
	}
	if s := rec.subs[3]; s.Seq != 0 || s.First != 1 || len(s.Msgs) != 0 {
		t.Fatalf("unknown room: %+v", s)
	}
}

// A client's re-send (same session, room and id, another mid) is
// acknowledged with the first one's seq and not delivered again, within
// the window; other sessions' ids, or ids without one, are not keys.
func TestLocalDedupBySession(t *testing.T) {
	rec := newRecorder()
	l := NewLocal(rec, 5).WithDedupWindow(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	pub := func(mid, session, id string) {
		t.Helper()
		if err := l.Publish(mid, session, protocol.Message{Room: "r", ID: id, Text: mid}); err != nil {
			t.Fatal(err)
		}
	}
	pub("m1", "S", "c1")  // seq 1
	pub("m2", "S", "c1")  // its re-send: ack 1
	pub("m3", "T", "c1")  // seq 2
	pub("m4", "", "c1")   // seq 3
	pub("m5", "", "c1")   // seq 4
	pub("m6", "S", "c2")  // seq 5: the window (3) holds S/c1, T/c1, S/c2
	pub("m7", "S", "c1")  // ack 1
	pub("m8", "S", "c3")  // seq 6, S/c1 forgotten
	pub("m9", "S", "c1")  // seq 7: beyond the window
	pub("m10", "S", "c3") // ack 6
	rec.wait(t, 17)       // 10 acks, 7 messages
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.msgs, []uint64{1, 2, 3, 4, 5, 6, 7}) {
		t.Fatalf("delivered %v, want 1..7 once each", rec.msgs)
	}
	want := map[string]uint64{"m1": 1, "m2": 1, "m3": 2, "m4": 3, "m5": 4, "m6": 5, "m7": 1, "m8": 6, "m9": 7, "m10": 6}
	for mid, seq := range want {
		if rec.acks[mid] != seq {
			t.Errorf("ack of %s: seq %d, want %d", mid, rec.acks[mid], seq)
		}
	}
}
