package natsbus_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/natsbus"
)

// backend is one NATS server for the buses of one test.
func backend(t *testing.T) (bustest.Backend, string) {
	url := startNATS(t)
	return bustest.Backend{Shared: true, New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
		return natsbus.New(config(url, instance), h)
	}}, url
}

// Instances that publish to one room at the same time number its messages
// 1, 2, 3… without a gap or a repeat, and every instance sees the same
// message at each number, in order: a publish that lost the race to
// another instance's is numbered again after it.
func TestConcurrentPublishersShareOneOrder(t *testing.T) {
	b, _ := backend(t)
	a, ra := bustest.Start(t, b, "ia")
	c, rc := bustest.Start(t, b, "ic")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	bustest.Subscribe(t, c, rc, bus.Interest{Room: "r", Tail: 10})
	const n = 40
	var wg sync.WaitGroup
	for _, p := range []struct {
		name string
		bb   bus.Bus
	}{{"a", a}, {"c", c}} {
		wg.Go(func() {
			for i := range n {
				m := protocol.Message{Room: "r", ID: fmt.Sprint(p.name, i), From: p.name, UID: p.name, Text: fmt.Sprint(p.name, " ", i)}
				if err := p.bb.Publish(fmt.Sprint(p.name, "-", i), "", m); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var acked []uint64
	for _, rec := range []*bustest.Recorder{ra, rc} {
		for range n {
			acked = append(acked, bustest.Next[bustest.Ack](t, rec).Seq)
		}
	}
	slices.Sort(acked)
	for i, s := range acked {
		if s != uint64(i+1) {
			t.Fatalf("acknowledged numbers %v: want 1..%d once each", acked, 2*n)
		}
	}
	var seen [2][]string
	for k, rec := range []*bustest.Recorder{ra, rc} {
		for i := range 2 * n {
			m := bustest.Next[protocol.Message](t, rec)
			if m.Seq != uint64(i+1) {
				t.Fatalf("instance %d got seq %d as its message %d", k, m.Seq, i+1)
			}
			seen[k] = append(seen[k], m.ID)
		}
	}
	if !slices.Equal(seen[0], seen[1]) {
		t.Fatalf("the instances saw different orders:\n%v\n%v", seen[0], seen[1])
	}
}

// An instance that vanishes without a word (its process killed) leaves the
// others' presence once its keys expire, within the bucket's TTL and the
// server's expiry sweep.
func TestVanishedInstanceLeavesPresence(t *testing.T) {
	url := startNATS(t)
	b := bustest.Backend{Shared: true, New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
		return natsbus.New(config(url, instance), h)
	}}
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})

	_, stop := bobJoins(t, config(url, "ic"), ra)
	stop() // no leave, no delete: as if killed
	start := time.Now()
	if p := bustest.Next[bustest.Presence](t, ra); p.Event != protocol.PresenceLeave || p.Member.ID != "ub" {
		t.Fatalf("presence %+v, want bob's leave", p)
	}
	t.Logf("bob left %v after his instance vanished (TTL %v)", time.Since(start), config(url, "").PresenceTTL)
}

// A stream lost and made anew (deleted, here) starts the numbering over:
// the hub is told (Restarted, as for a relayer's new log), and the next
// message is number 1 of the new stream.
func TestNewStreamIsANewEpoch(t *testing.T) {
	b, url := backend(t)
	a, ra := bustest.Start(t, b, "ia")
	old := bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	// c only receives: it learns of the new stream by looking.
	c, rc := bustest.Start(t, b, "ic")
	bustest.Subscribe(t, c, rc, bus.Interest{Room: "r", Tail: 10})
	if got := bustest.Publish(t, a, ra, "r", 3); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("acks %v", got)
	}
	js := jetStream(t, url)
	if err := js.DeleteStream(context.Background(), "wschat"); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish("after", "", protocol.Message{Room: "r", ID: "x", Text: "after the loss"}); err != nil {
		t.Fatal(err)
	}
	bustest.Next[bustest.Restarted](t, ra)
	bustest.Next[bustest.Restarted](t, rc)
	if ack := bustest.Next[bustest.Ack](t, ra); ack.MID != "after" || ack.Seq != 1 {
		t.Fatalf("ack %+v, want after as seq 1 of the new stream", ack)
	}
	if s := bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10}); s.Epoch == old.Epoch || s.Seq != 1 {
		t.Fatalf("after the loss: epoch %q (was %q), seq %d; want a new epoch at seq 1", s.Epoch, old.Epoch, s.Seq)
	}
}

// A resumed subscription far behind gets at most CatchUpMax messages, the
// newest: the answer is held in memory whole.
func TestCatchUpIsBounded(t *testing.T) {
	url := startNATS(t)
	b := bustest.Backend{Shared: true, New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
		cfg := config(url, instance)
		cfg.CatchUpMax = 5
		return natsbus.New(cfg, h)
	}}
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	bustest.Publish(t, a, ra, "r", 12)
	s := bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Resume: true})
	var got []uint64
	for _, m := range s.Msgs {
		got = append(got, m.Seq)
	}
	if !slices.Equal(got, []uint64{8, 9, 10, 11, 12}) || s.Seq != 12 {
		t.Fatalf("resumed from 0 with CatchUpMax 5: seq %d, messages %v; want 8..12", s.Seq, got)
	}
}

// A room whose every kept message went to the stream's limits (its age
// here) goes on with its numbers: instances that saw 1..3 would take a new
// 1 for an old message.
func TestNumbersGoOnWhenNoMessageIsKept(t *testing.T) {
	url := startNATS(t)
	b := bustest.Backend{Shared: true, New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
		cfg := config(url, instance)
		cfg.MaxAge, cfg.DedupWindow = time.Second, time.Second // the window may not outlast the messages
		return natsbus.New(cfg, h)
	}}
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	bustest.Publish(t, a, ra, "r", 3)
	js := jetStream(t, url)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := js.Stream(context.Background(), "wschat")
		if err != nil {
			t.Fatal(err)
		}
		if st.CachedInfo().State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream still keeps the room's messages after 10s of a 1s MaxAge")
		}
		time.Sleep(50 * time.Millisecond) // the server's expiry, not ours to signal
	}
	if got := bustest.Publish(t, a, ra, "r", 1); got[0] != 4 {
		t.Fatalf("the first message after the room's expiry is seq %d, want 4", got[0])
	}
	if s := bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10}); s.Seq != 4 || len(s.Msgs) != 1 || s.Msgs[0].Seq != 4 {
		t.Fatalf("subscription after the expiry: seq %d, %d messages", s.Seq, len(s.Msgs))
	}
}

// jetStream is a JetStream client of the server at url, for what a test
// does to the stream behind the buses' backs.
func jetStream(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// An instance that stops cleanly (its members gone, then its bus) takes
// its members out of presence at once, not after the TTL.
func TestStoppedInstanceLeavesPresenceAtOnce(t *testing.T) {
	url := startNATS(t)
	long := func(instance string) natsbus.Config {
		cfg := config(url, instance)
		cfg.PresenceTTL = time.Minute // far longer than the wait below
		return cfg
	}
	b := bustest.Backend{Shared: true, New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
		return natsbus.New(long(instance), h)
	}}
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	c, stop := bobJoins(t, long("ic"), ra)
	c.Unsubscribe("r") // bob's connection closed at shutdown
	stop()
	if p := bustest.Next[bustest.Presence](t, ra); p.Event != protocol.PresenceLeave || p.Member.ID != "ub" {
		t.Fatalf("presence %+v, want bob's leave", p)
	}
}

// bobJoins runs a bus of instance "ic" on cfg, puts bob in room r there,
// and waits until ra's instance sees him join; stop ends the bus (without
// a word to anyone).
func bobJoins(t *testing.T, cfg natsbus.Config, ra *bustest.Recorder) (*natsbus.Bus, func()) {
	t.Helper()
	rc := bustest.NewRecorder()
	c := natsbus.New(cfg, rc)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	for !bustest.Next[bustest.LinkState](t, rc).Up {
	}
	bob := protocol.Member{ID: "ub", Nick: "bob", Instance: "ic"}
	bustest.Subscribe(t, c, rc, bus.Interest{Room: "r", Tail: 10, Members: []protocol.Member{bob}})
	if p := bustest.Next[bustest.Presence](t, ra); p.Event != protocol.PresenceJoin || p.Member.ID != "ub" {
		t.Fatalf("presence %+v, want bob's join", p)
	}
	return c, func() {
		cancel()
		<-done
	}
}

// An instance subscribes more rooms than a NATS server lets a stream have
// consumers by default (1,000 on nats-server 2.15; 4 here): a room is an
// ordered consumer of the message stream and a watch of the presence
// bucket's, so the bus raises both streams' limit to MaxConsumers. Every
// room is answered and its messages delivered.
func TestMoreRoomsThanTheServersDefaultConsumerLimit(t *testing.T) {
	const limit, rooms = 4, 7
	cfg := config(startNATSWith(t, server.JSLimitOpts{DefaultMaxConsumers: limit}), "ia")
	cfg.MaxConsumers = 2 * rooms
	a, ra := bustest.Start(t, bustest.Backend{Shared: true, New: func(_ *testing.T, _ string, h bus.Handler) bus.Bus {
		return natsbus.New(cfg, h)
	}}, "ia")
	for i := range rooms {
		bustest.Subscribe(t, a, ra, bus.Interest{Room: fmt.Sprint("r", i), Tail: 10})
	}
	last := fmt.Sprint("r", rooms-1)
	if got := bustest.Publish(t, a, ra, last, 1); got[0] != 1 {
		t.Fatalf("the last room's first message is seq %d, want 1", got[0])
	}
	if m := bustest.Next[protocol.Message](t, ra); m.Room != last || m.Seq != 1 {
		t.Fatalf("delivered %s #%d, want %s #1", m.Room, m.Seq, last)
	}
}

// A room's publishes, one at a time, read nothing from the cluster once
// the instance knows the room, whether the room's queue is still there or
// emptied in between: neither the room's last message nor its recorded
// head. Each is one publish to the stream and one update of the head.
func TestPublishesToAKnownRoomReadNothing(t *testing.T) {
	b, url := backend(t)
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	heads := watchHeads(t, url)
	bustest.Publish(t, a, ra, "r", 1) // learns the room's head
	heads.until(t, 1)                 // and has recorded it
	upTo := watchRequests(t, url, "$JS.API.>", "wschat.r.>")
	for i := range 3 {
		m := protocol.Message{Room: "r", ID: fmt.Sprint("k", i), From: "alice", UID: "u1", Text: "hi"}
		if err := a.Publish(fmt.Sprint("k-", i), "", m); err != nil {
			t.Fatal(err)
		}
		if ack := bustest.Next[bustest.Ack](t, ra); ack.Seq != uint64(i+2) {
			t.Fatalf("ack %+v, want seq %d", ack, i+2)
		}
		heads.until(t, uint64(i+2))
	}
	sent := upTo(".4") // the last publish, and whatever a sent before it
	for _, s := range sent {
		if strings.Contains(s, ".MSG.GET.") || strings.Contains(s, ".DIRECT.GET.") {
			t.Fatalf("the publishes read from the cluster: %q", sent)
		}
	}
}

// An instance whose delivery saw another instance's message in a room
// numbers its next publish after it: one attempt, not one refused by the
// cluster (wrong last sequence) and another after reading the room.
func TestAPublisherTakesTheHeadItsDeliverySaw(t *testing.T) {
	b, url := backend(t)
	a, ra := bustest.Start(t, b, "ia")
	c, rc := bustest.Start(t, b, "ic")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	bustest.Subscribe(t, c, rc, bus.Interest{Room: "r", Tail: 10})
	heads := watchHeads(t, url)
	bustest.Publish(t, a, ra, "r", 1) // a knows the room at 1
	heads.until(t, 1)
	if got := bustest.Publish(t, c, rc, "r", 1); got[0] != 2 {
		t.Fatalf("c's message is seq %d, want 2", got[0])
	}
	for { // a's delivery has c's message
		if m := bustest.Next[protocol.Message](t, ra); m.Seq == 2 {
			break
		}
	}
	heads.until(t, 2)
	upTo := watchRequests(t, url, "wschat.r.>")
	m := protocol.Message{Room: "r", ID: "k", From: "alice", UID: "u1", Text: "after c"}
	if err := a.Publish("k", "", m); err != nil {
		t.Fatal(err)
	}
	if ack := bustest.Next[bustest.Ack](t, ra); ack.Seq != 3 {
		t.Fatalf("ack %+v, want seq 3", ack)
	}
	if got := upTo(".3"); len(got) != 1 {
		t.Fatalf("a's publish went to the stream %d times, want once: %q", len(got), got)
	}
}

// watchRequests records the subjects of what is sent to any of subjects
// from now on (a core subscription sees every request and every publish
// attempt). upTo returns them up to the first that ends with suffix: one
// connection's messages reach a subscriber in the order it sent them, so
// everything the bus sent before that one is in.
func watchRequests(t *testing.T, url string, subjects ...string) (upTo func(suffix string) []string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	msgs := make(chan *nats.Msg, 1024)
	for _, subj := range subjects {
		if _, err := nc.ChanSubscribe(subj, msgs); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func(suffix string) []string {
		t.Helper()
		var seen []string
		timeout := time.After(10 * time.Second)
		for {
			select {
			case m := <-msgs:
				if seen = append(seen, m.Subject); strings.HasSuffix(m.Subject, suffix) {
					return seen
				}
			case <-timeout:
				t.Fatalf("nothing ending with %q sent within 10s: %q", suffix, seen)
				return nil
			}
		}
	}
}

// headsWatch follows every value the heads bucket's keys take.
type headsWatch struct{ w jetstream.KeyWatcher }

func watchHeads(t *testing.T, url string) headsWatch {
	t.Helper()
	kv, err := jetStream(t, url).KeyValue(context.Background(), "wschat_heads")
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return headsWatch{w}
}

// until waits for a key to take the value v, and fails if one went down
// on the way.
func (h headsWatch) until(t *testing.T, v uint64) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var last uint64
	for {
		select {
		case e := <-h.w.Updates():
			if e == nil {
				continue // the initial values are in
			}
			got, err := strconv.ParseUint(string(e.Value()), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			if got < last {
				t.Fatalf("the recorded head went down: %d after %d", got, last)
			}
			if last = got; got == v {
				return
			}
		case <-timeout:
			t.Fatalf("the recorded head did not reach %d within 10s (last %d)", v, last)
		}
	}
}

// A client's re-send is acknowledged with its first, older, number; the
// room's recorded head, which numbers the room once none of its messages
// is kept, never goes down with it. Every value the heads bucket takes is
// watched: 1, 2, 3, then 4, never back to 1 in between.
func TestAResendNeverLowersTheRecordedHead(t *testing.T) {
	b, url := backend(t)
	a, ra := bustest.Start(t, b, "ia")
	bustest.Subscribe(t, a, ra, bus.Interest{Room: "r", Tail: 10})
	heads := watchHeads(t, url)
	chat := func(mid, id string, want uint64) {
		t.Helper()
		m := protocol.Message{Room: "r", ID: id, From: "alice", UID: "u1", Text: "hi " + id}
		if err := a.Publish(mid, "session-1", m); err != nil {
			t.Fatal(err)
		}
		if ack := bustest.Next[bustest.Ack](t, ra); ack.MID != mid || ack.Seq != want {
			t.Fatalf("ack %+v, want %s at seq %d", ack, mid, want)
		}
	}
	chat("m1", "k1", 1)
	chat("m2", "k2", 2)
	chat("m3", "k3", 3)
	chat("m1-again", "k1", 1) // the re-send: its first number
	chat("m4", "k4", 4)       // recorded after the re-send's turn
	heads.until(t, 4)         // 1, 2, 3, 4: never back to 1 on the way
}
