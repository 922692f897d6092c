package sequencer

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

func TestSubscribedCatchUp(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 10 })
	p := h.dial("p")
	p.Sync()
	for i := 1; i <= 20; i++ {
		p.Pub(fmt.Sprint(i), "r", fmt.Sprint("msg ", i))
	}
	for range 20 {
		p.Expect(link.OpAck)
	}
	cases := []struct {
		since   uint64
		resume  bool
		tail    int
		want    []uint64
		wantGap bool
	}{
		{0, false, 0, nil, false},
		{0, false, 5, seqRange(16, 20), false},
		{0, false, 50, seqRange(11, 20), false}, // tail capped by what is kept
		{15, false, 2, seqRange(16, 20), false}, // everything after since
		{17, false, 5, seqRange(16, 20), false}, // since is recent: the last tail
		{10, false, 0, seqRange(11, 20), false}, // exactly the first kept one is next
		{3, false, 0, seqRange(11, 20), true},   // 4..10 are gone
		{20, false, 0, nil, false},
		// A subscribed room that had no message yet is owed all of them,
		// and 1..10 are gone.
		{0, true, 0, seqRange(11, 20), true},
		{15, true, 0, seqRange(16, 20), false},
	}
	for i, tc := range cases {
		c := h.dial(fmt.Sprint("c", i))
		sub := c.Sync(link.RoomState{Room: "r", Since: tc.since, Resume: tc.resume, Tail: tc.tail})[0]
		if sub.Room != "r" || sub.Seq != 20 || sub.First != 11 || sub.Gap != tc.wantGap || !slices.Equal(seqs(sub.Msgs), tc.want) {
			t.Errorf("since %d resume %v tail %d: seq %d first %d gap %v msgs %v; want gap %v msgs %v",
				tc.since, tc.resume, tc.tail, sub.Seq, sub.First, sub.Gap, seqs(sub.Msgs), tc.wantGap, tc.want)
		}
		if len(sub.Msgs) > 0 && sub.Msgs[0].Text != fmt.Sprint("msg ", sub.Msgs[0].Seq) {
			t.Errorf("catch-up message %+v", sub.Msgs[0])
		}
	}
	// An empty room: first is last+1.
	c := h.dial("empty")
	if sub := c.Sync(link.RoomState{Room: "new", Since: 5})[0]; sub.Seq != 0 || sub.First != 1 || sub.Gap {
		t.Fatalf("empty room: %+v", sub)
	}
}

func member(id, nick, inst string) protocol.Member {
	return protocol.Member{ID: id, Nick: nick, Instance: inst}
}

func expectPresence(t *testing.T, c *client, event string, m protocol.Member) {
	t.Helper()
	f := c.Expect(link.OpPresence)
	if f.Event != event || f.Member == nil || *f.Member != m || f.Room != "r" {
		t.Fatalf("%s: presence %s %+v, want %s %+v", c.Inst, f.Event, f.Member, event, m)
	}
}

func TestPresence(t *testing.T) {
	h := start(t, "", nil)
	b := h.dial("B")
	b.Sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "b1", Nick: "bob"}}})

	a := h.dial("A")
	sub := a.Sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})[0]
	want := []protocol.Member{member("a1", "ann", "A"), member("b1", "bob", "B")}
	if !slices.Equal(sub.Members, want) {
		t.Fatalf("subscribed members %+v, want %+v", sub.Members, want)
	}
	expectPresence(t, b, protocol.PresenceJoin, member("a1", "ann", "A"))

	// Join and leave go to every subscriber, the originating one included.
	a.Send(&link.Frame{T: link.OpJoin, Room: "r", Member: &protocol.Member{ID: "a2", Nick: "al"}})
	expectPresence(t, a, protocol.PresenceJoin, member("a2", "al", "A"))
	expectPresence(t, b, protocol.PresenceJoin, member("a2", "al", "A"))
	a.Send(&link.Frame{T: link.OpJoin, Room: "r", Member: &protocol.Member{ID: "a2", Nick: "al"}}) // repeated: no event
	a.Send(&link.Frame{T: link.OpLeave, Room: "r", Member: &protocol.Member{ID: "a2"}})
	expectPresence(t, a, protocol.PresenceLeave, member("a2", "al", "A"))
	expectPresence(t, b, protocol.PresenceLeave, member("a2", "al", "A"))
	a.Send(&link.Frame{T: link.OpLeave, Room: "r", Member: &protocol.Member{ID: "nobody"}}) // unknown: no event

	// A re-sync reports only differences to the others.
	a.Send(&link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}, {ID: "a3", Nick: "amy"}}}}})
	if f := a.Expect(link.OpSubscribed); len(f.Members) != 3 {
		t.Fatalf("members after re-sync: %+v", f.Members)
	}
	expectPresence(t, b, protocol.PresenceJoin, member("a3", "amy", "A"))

	// Unsub drops A's members there.
	a.Send(&link.Frame{T: link.OpUnsub, Room: "r"})
	got := []protocol.Member{*b.Expect(link.OpPresence).Member, *b.Expect(link.OpPresence).Member}
	slices.SortFunc(got, func(x, y protocol.Member) int { return strings.Compare(x.ID, y.ID) })
	if !slices.Equal(got, []protocol.Member{member("a1", "ann", "A"), member("a3", "amy", "A")}) {
		t.Fatalf("leaves after unsub: %+v", got)
	}
	// A sync without the room would have done the same; check it drops
	// nothing twice by re-joining through sub.
	a.Send(&link.Frame{T: link.OpSub, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}}}})
	a.Expect(link.OpSubscribed)
	expectPresence(t, b, protocol.PresenceJoin, member("a1", "ann", "A"))

	// The link drops: A's members stay for the grace, then leave.
	dropped := time.Now()
	a.drop()
	expectPresence(t, b, protocol.PresenceLeave, member("a1", "ann", "A"))
	if waited := time.Since(dropped); waited < 150*time.Millisecond {
		t.Fatalf("members removed after %s, before the grace", waited)
	}
	if got := testutil.ToFloat64(h.s.m.members); got != 1 {
		t.Fatalf("presence_members = %v, want 1 (bob)", got)
	}
}

// A relayer that started less than its presence grace ago says so in
// its subscribed answers: instances connected before it may not have
// re-synced yet, so the members it lists may be fewer than there are.
func TestSubscribedSaysPresenceSettlesAfterStart(t *testing.T) {
	h := start(t, "", func(c *Config) { c.PresenceGrace = time.Minute })
	sub := h.dial("A").Sync(link.RoomState{Room: "r"})[0]
	if sub.Settle <= 50*1000 || sub.Settle > 60*1000 {
		t.Fatalf("subscribed within a minute's grace of the start: settle %d ms, want up to 60000", sub.Settle)
	}
	h = start(t, "", func(c *Config) { c.PresenceGrace = 0 })
	if sub := h.dial("A").Sync(link.RoomState{Room: "r"})[0]; sub.Settle != 0 {
		t.Fatalf("subscribed without a grace: settle %d ms, want none", sub.Settle)
	}
}

func TestReconnectWithinGraceKeepsPresence(t *testing.T) {
	h := start(t, "", func(c *Config) { c.PresenceGrace = time.Minute })
	b := h.dial("B")
	b.Sync(link.RoomState{Room: "r"})
	a := h.dial("A")
	a.Sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	expectPresence(t, b, protocol.PresenceJoin, member("a1", "ann", "A"))

	a.drop()
	a2 := h.dial("A")
	sub := a2.Sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})[0]
	if !slices.Equal(sub.Members, []protocol.Member{member("a1", "ann", "A")}) {
		t.Fatalf("members %+v", sub.Members)
	}
	// b's link is FIFO: a presence change would arrive before this msg.
	a2.Pub("m", "r", "marker")
	if f := b.Next(); f.T != link.OpMsg {
		t.Fatalf("B got %s %+v before the marker: the reconnect caused presence churn", f.T, f)
	}
}

// A sync in parts is applied with its last part, a room listed in several
// with the members of all.
func TestSyncInParts(t *testing.T) {
	h := start(t, "", nil)
	a := h.dial("A")
	ann, bob, cat := protocol.Member{ID: "a1", Nick: "ann"}, protocol.Member{ID: "a2", Nick: "bob"}, protocol.Member{ID: "a3", Nick: "cat"}
	// (A first part applied on its own would answer r with ann alone, and
	// then r again: the first two answers below would not add up.)
	a.Send(&link.Frame{T: link.OpSync, More: true, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{ann}}}})
	a.Send(&link.Frame{T: link.OpSync, Rooms: []link.RoomState{
		{Room: "r", Members: []protocol.Member{bob}}, {Room: "s", Members: []protocol.Member{cat}},
	}})
	subs := map[string][]string{}
	for range 2 {
		f := a.Expect(link.OpSubscribed)
		for _, m := range f.Members {
			subs[f.Room] = append(subs[f.Room], m.ID)
		}
	}
	slices.Sort(subs["r"])
	if !slices.Equal(subs["r"], []string{"a1", "a2"}) || !slices.Equal(subs["s"], []string{"a3"}) {
		t.Fatalf("members after a sync in parts: %v", subs)
	}
	if got := testutil.ToFloat64(h.s.m.members); got != 3 {
		t.Fatalf("presence_members = %v, want 3", got)
	}
}

func TestSyncReplacesSubscriptions(t *testing.T) {
	h := start(t, "", nil)
	b := h.dial("B")
	b.Sync(link.RoomState{Room: "r"}, link.RoomState{Room: "s"})
	a := h.dial("A")
	a.Sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}},
		link.RoomState{Room: "s", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	b.Expect(link.OpPresence)
	b.Expect(link.OpPresence)

	// Re-sync without r: A leaves r (B is told) and gets no more of it.
	a.Sync(link.RoomState{Room: "s", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	expectPresence(t, b, protocol.PresenceLeave, member("a1", "ann", "A"))
	b.Pub("m1", "r", "to r")
	b.Pub("m2", "s", "to s")
	if f := a.Expect(link.OpMsg); f.Msg.Room != "s" {
		t.Fatalf("A got %+v after dropping r", f.Msg)
	}
	if got := testutil.ToFloat64(h.s.m.subs); got != 3 {
		t.Fatalf("subscriptions = %v, want 3", got)
	}
}
