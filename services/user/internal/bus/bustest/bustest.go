// Package bustest is the behaviour every bus.Bus has, written once as a
// table of tests that each implementation's package runs against itself
// (Run), so that the hub cannot tell one backend from another.
package bustest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// Backend makes the buses of one test.
type Backend struct {
	// New returns a bus of the instance named instance, delivering to h,
	// not yet running. It keeps at least 10 messages per room and
	// de-duplicates a session's re-sends.
	New func(t *testing.T, instance string, h bus.Handler) bus.Bus
	// Shared is set when the buses New returns within one test share one
	// backend (a relayer): they are instances of one deployment. A
	// standalone bus is alone.
	Shared bool
}

// PerCase is a shared Backend whose buses of one case share one server
// that start runs for that case (it stops with the case): start returns
// its address, newBus makes a bus of instance on it.
func PerCase(start func(t *testing.T) string, newBus func(addr, instance string, h bus.Handler) bus.Bus) Backend {
	var servers sync.Map // *testing.T → its server's address
	return Backend{Shared: true, New: func(t *testing.T, instance string, h bus.Handler) bus.Bus {
		addr, ok := servers.Load(t)
		if !ok {
			addr = start(t)
			servers.Store(t, addr)
		}
		return newBus(addr.(string), instance, h)
	}}
}

// Run runs the table against b, each case on buses of its own.
func Run(t *testing.T, b Backend) {
	cases := []struct {
		name   string
		shared bool
		run    func(t *testing.T, b Backend)
	}{
		{"PublishesAreSequencedAckedAndDelivered", false, publishes},
		{"SubscribeCatchesUp", false, subscribeCatchesUp},
		{"FetchAnswersTheWindow", false, fetchWindow},
		{"ResentPublishIsOneMessage", false, dedup},
		{"InstancesShareMessagesAndPresence", true, instances},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.shared && !b.Shared {
				t.Skip("the backend has one instance")
			}
			c.run(t, b)
		})
	}
}

// Recorder is a bus.Handler that keeps what it is told for the test to
// take, in order, one type at a time (Next).
type Recorder struct {
	mu    sync.Mutex
	items []any
	wake  chan struct{} // capacity 1: items grew
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{wake: make(chan struct{}, 1)} }

func (r *Recorder) add(v any) {
	r.mu.Lock()
	r.items = append(r.items, v)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// What a Recorder is told, one type per Handler method.
type (
	Ack struct {
		MID, Room string
		Seq       uint64
	}
	Nack struct {
		MID string
		Err *protocol.Error
	}
	Presence struct {
		Room, Event string
		Member      protocol.Member
	}
	Fetched struct {
		Req   uint64
		Msgs  []protocol.Message
		First uint64
		Err   error
	}
	LinkState struct{ Up bool }
	Restarted struct{}
)

func (r *Recorder) Subscribed(s bus.Subscription)    { r.add(s) }
func (r *Recorder) Message(m *protocol.Message)      { r.add(*m) }
func (r *Recorder) Ack(mid, room string, seq uint64) { r.add(Ack{mid, room, seq}) }
func (r *Recorder) Nack(mid string, err *protocol.Error) {
	r.add(Nack{mid, err})
}
func (r *Recorder) Presence(room, event string, m protocol.Member) { r.add(Presence{room, event, m}) }
func (r *Recorder) Fetched(req uint64, msgs []protocol.Message, first uint64, err error) {
	r.add(Fetched{req, msgs, first, err})
}
func (r *Recorder) Restarted()            { r.add(Restarted{}) }
func (r *Recorder) State() []bus.Interest { return nil }
func (r *Recorder) LinkState(up bool)     { r.add(LinkState{up}) }

// Next takes the first thing of type T the Recorder was told and the test
// has not taken yet, waiting for it for up to ten seconds. One goroutine
// takes from a Recorder.
func Next[T any](t *testing.T, r *Recorder) T {
	t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		for i, v := range r.items {
			if x, ok := v.(T); ok {
				r.items = slices.Delete(r.items, i, i+1)
				r.mu.Unlock()
				return x
			}
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-timeout.C:
			var zero T
			t.Fatalf("no %T from the bus within 10s", zero)
			return zero
		}
	}
}

// Start runs a bus of instance on b until the test ends, and waits for
// its link to be up.
func Start(t *testing.T, b Backend, instance string) (bus.Bus, *Recorder) {
	t.Helper()
	rec := NewRecorder()
	bb := b.New(t, instance, rec)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = bb.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	for !Next[LinkState](t, rec).Up {
	}
	return bb, rec
}

// Subscribe subscribes a room and returns the answer.
func Subscribe(t *testing.T, bb bus.Bus, rec *Recorder, in bus.Interest) bus.Subscription {
	t.Helper()
	bb.Subscribe(in)
	for {
		if s := Next[bus.Subscription](t, rec); s.Room == in.Room {
			return s
		}
	}
}

// Publish publishes n messages to room and waits for their acks, which
// it returns in order.
func Publish(t *testing.T, bb bus.Bus, rec *Recorder, room string, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := range n {
		mid := fmt.Sprint("m-", room, "-", i)
		if err := bb.Publish(mid, "", protocol.Message{Room: room, ID: fmt.Sprint("c", i), From: "alice", UID: "u1", Text: fmt.Sprint("text ", i)}); err != nil {
			t.Fatal(err)
		}
		a := Next[Ack](t, rec)
		if a.MID != mid || a.Room != room {
			t.Fatalf("publish %s: ack %+v", mid, a)
		}
		seqs = append(seqs, a.Seq)
	}
	return seqs
}

func seqsOf(msgs []protocol.Message) []uint64 {
	out := []uint64{}
	for _, m := range msgs {
		out = append(out, m.Seq)
	}
	return out
}

// A subscribed room's publishes are numbered 1, 2, 3…, each acknowledged
// with its seq, and delivered once, in order, with their text.
func publishes(t *testing.T, b Backend) {
	bb, rec := Start(t, b, "i1")
	if s := Subscribe(t, bb, rec, bus.Interest{Room: "r", Tail: 10}); s.Seq != 0 || len(s.Msgs) != 0 {
		t.Fatalf("a new room's subscription: %+v", s)
	}
	for i := range 3 {
		mid := fmt.Sprint("m", i)
		if err := bb.Publish(mid, "", protocol.Message{Room: "r", ID: fmt.Sprint("c", i), From: "alice", UID: "u1", Text: fmt.Sprint("hello ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	acks := map[string]uint64{}
	var got []protocol.Message
	for range 3 {
		a := Next[Ack](t, rec)
		acks[a.MID] = a.Seq
		got = append(got, Next[protocol.Message](t, rec))
	}
	for i, m := range got {
		if m.Seq != uint64(i+1) || m.Room != "r" || m.Text != fmt.Sprint("hello ", i) || m.From != "alice" || m.TS == 0 {
			t.Fatalf("message %d: %+v", i, m)
		}
		if acks[fmt.Sprint("m", i)] != m.Seq {
			t.Fatalf("acks %v for messages %v", acks, seqsOf(got))
		}
	}
}

// A subscription brings what the Interest is owed: a new one the last
// Tail messages, a resumed one every message after Since.
func subscribeCatchesUp(t *testing.T, b Backend) {
	bb, rec := Start(t, b, "i1")
	Subscribe(t, bb, rec, bus.Interest{Room: "r", Tail: 10})
	Publish(t, bb, rec, "r", 8)
	for _, c := range []struct {
		in   bus.Interest
		want []uint64
	}{
		{bus.Interest{Room: "r", Tail: 2}, []uint64{7, 8}},
		{bus.Interest{Room: "r", Since: 5, Resume: true}, []uint64{6, 7, 8}},
		{bus.Interest{Room: "r", Resume: true}, []uint64{1, 2, 3, 4, 5, 6, 7, 8}},
		{bus.Interest{Room: "r", Since: 5, Resume: true, Tail: 4}, []uint64{5, 6, 7, 8}},
		{bus.Interest{Room: "r", Since: 8, Resume: true}, []uint64{}},
		{bus.Interest{Room: "empty", Tail: 10}, []uint64{}},
	} {
		s := Subscribe(t, bb, rec, c.in)
		last := uint64(8)
		if c.in.Room == "empty" {
			last = 0
		}
		if got := seqsOf(s.Msgs); !slices.Equal(got, c.want) || s.Seq != last || s.First > 1 || s.Epoch == "" {
			t.Errorf("%+v: seq %d first %d epoch %q, messages %v; want seq %d, first 1, messages %v",
				c.in, s.Seq, s.First, s.Epoch, got, last, c.want)
		}
	}
}

// Fetch answers up to limit messages between after and before: paging
// back (after 0) the newest of them, else the oldest after after.
func fetchWindow(t *testing.T, b Backend) {
	bb, rec := Start(t, b, "i1")
	Subscribe(t, bb, rec, bus.Interest{Room: "r", Tail: 10})
	Publish(t, bb, rec, "r", 8)
	for i, c := range []struct {
		after, before uint64
		limit         int
		want          []uint64
	}{
		{2, 0, 3, []uint64{3, 4, 5}},
		{0, 0, 3, []uint64{6, 7, 8}},
		{2, 6, 10, []uint64{3, 4, 5}},
		{0, 4, 2, []uint64{2, 3}},
		{8, 0, 5, []uint64{}},
	} {
		req := uint64(100 + i)
		bb.Fetch(req, "r", c.after, c.before, c.limit)
		f := Next[Fetched](t, rec)
		if f.Req != req || f.Err != nil || !slices.Equal(seqsOf(f.Msgs), c.want) || f.First != 1 {
			t.Errorf("fetch after %d before %d limit %d: req %d, err %v, first %d, %v; want %v",
				c.after, c.before, c.limit, f.Req, f.Err, f.First, seqsOf(f.Msgs), c.want)
		}
	}
}

// A client's re-send (its session, room and id again, under another mid)
// is acknowledged with the first one's seq and delivered to no one again.
func dedup(t *testing.T, b Backend) {
	bb, rec := Start(t, b, "i1")
	Subscribe(t, bb, rec, bus.Interest{Room: "r", Tail: 10})
	m := protocol.Message{Room: "r", ID: "c1", From: "alice", UID: "u1", Text: "once"}
	for _, mid := range []string{"m1", "m2"} {
		if err := bb.Publish(mid, "S1", m); err != nil {
			t.Fatal(err)
		}
		if a := Next[Ack](t, rec); a.MID != mid || a.Seq != 1 {
			t.Fatalf("ack %+v, want %s with seq 1", a, mid)
		}
	}
	Publish(t, bb, rec, "r", 1) // seq 2, and its delivery follows any second one of seq 1
	var got []uint64
	for len(got) == 0 || got[len(got)-1] != 2 {
		got = append(got, Next[protocol.Message](t, rec).Seq)
	}
	if !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("delivered %v, want 1 once, then 2", got)
	}
}

// Instances of one deployment see each other's messages, in one order,
// and each other's members.
func instances(t *testing.T, b Backend) {
	a, ra := Start(t, b, "ia")
	c, rc := Start(t, b, "ic")
	alice := protocol.Member{ID: "ua", Nick: "alice", Instance: "ia"}
	Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10, Members: []protocol.Member{alice}})
	s := Subscribe(t, c, rc, bus.Interest{Room: "r", Tail: 10})
	if !slices.ContainsFunc(s.Members, func(m protocol.Member) bool { return m.ID == "ua" }) {
		t.Fatalf("the second instance's subscription lacks the first's member: %+v", s.Members)
	}
	Publish(t, a, ra, "r", 2)
	for want := uint64(1); want <= 2; want++ {
		if m := Next[protocol.Message](t, rc); m.Seq != want {
			t.Fatalf("the other instance got seq %d, want %d", m.Seq, want)
		}
	}
	bob := protocol.Member{ID: "ub", Nick: "bob", Instance: "ic"}
	c.Join("r", bob)
	if p := Next[Presence](t, ra); p.Event != protocol.PresenceJoin || p.Member.ID != "ub" {
		t.Fatalf("presence %+v, want bob's join", p)
	}
	c.Leave("r", "ub")
	if p := Next[Presence](t, ra); p.Event != protocol.PresenceLeave || p.Member.ID != "ub" {
		t.Fatalf("presence %+v, want bob's leave", p)
	}
}
