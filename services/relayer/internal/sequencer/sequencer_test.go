package sequencer

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

func TestFanOutOrderAndInterest(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 1000 })
	const pubs, perPub = 3, 100
	subs := make([]*client, 4)
	for i := range subs {
		subs[i] = h.dial(fmt.Sprintf("sub%d", i))
		subs[i].sync(link.RoomState{Room: "r"}, link.RoomState{Room: "other"})
	}
	outsider := h.dial("outsider")
	outsider.sync(link.RoomState{Room: "other"})

	publishers := make([]*client, pubs)
	for i := range publishers {
		// Publishers need no subscription of their own.
		publishers[i] = h.dial(fmt.Sprintf("pub%d", i))
		publishers[i].sync()
	}
	var wg sync.WaitGroup
	for i, p := range publishers {
		wg.Go(func() {
			for j := range perPub {
				if j%10 == 0 {
					// Mixed: single frames and several frames per message.
					p.send(pubFrame(fmt.Sprintf("p%d-%d", i, j), "r", "x"),
						pubFrame(fmt.Sprintf("p%d-%d-b", i, j), "r", "y"))
					continue
				}
				p.pub(fmt.Sprintf("p%d-%d", i, j), "r", fmt.Sprintf("from %d #%d", i, j))
			}
		})
	}
	wg.Wait()
	total := pubs * (perPub + perPub/10)
	// Acks: every publish acknowledged once, in the publisher's own order.
	for i, p := range publishers {
		var last uint64
		for range perPub + perPub/10 {
			a := p.expect(link.OpAck)
			if a.Room != "r" || a.Seq <= last || !strings.HasPrefix(a.MID, fmt.Sprintf("p%d-", i)) {
				t.Fatalf("publisher %d: bad ack %+v after seq %d", i, a, last)
			}
			last = a.Seq
		}
	}
	var first []protocol.Message
	for i, c := range subs {
		var got []protocol.Message
		for range total {
			got = append(got, *c.expect(link.OpMsg).Msg)
		}
		if !slices.Equal(seqs(got), seqRange(1, uint64(total))) {
			t.Fatalf("subscriber %d got seqs %v", i, seqs(got))
		}
		if i == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("subscriber %d saw a different stream than subscriber 0", i)
		}
	}
	// The outsider's link is FIFO: had it been sent any msg of "r", it
	// would come before this one.
	publishers[0].pub("last", "other", "to other")
	if f := outsider.expect(link.OpMsg); f.Msg.Room != "other" || f.Msg.Seq != 1 {
		t.Fatalf("outsider got %+v", f.Msg)
	}
	for _, m := range first {
		if m.TS == 0 || m.UID == "" || m.From != "nick" {
			t.Fatalf("message not completed: %+v", m)
		}
	}
}

func TestDedupByMID(t *testing.T) {
	h := start(t, "", nil)
	a, b := h.dial("a"), h.dial("b")
	a.sync(link.RoomState{Room: "r"})
	b.sync()

	b.pub("m1", "r", "one")
	if ack := b.expect(link.OpAck); ack.Seq != 1 || ack.MID != "m1" {
		t.Fatalf("ack %+v", ack)
	}
	b.pub("m1", "r", "one again")
	if ack := b.expect(link.OpAck); ack.Seq != 1 || ack.MID != "m1" {
		t.Fatalf("re-sent pub: ack %+v, want the original seq", ack)
	}
	// Another instance may use the same mid: it is only unique per instance.
	a.pub("m1", "r", "a's own m1")
	if m := a.expect(link.OpMsg); m.Msg.Seq != 1 {
		t.Fatalf("got %+v", m.Msg)
	}
	if m := a.expect(link.OpMsg); m.Msg.Seq != 2 || m.Msg.Text != "a's own m1" {
		t.Fatalf("the duplicate was re-broadcast, or a's message lost: %+v", m.Msg)
	}
	if ack := a.expect(link.OpAck); ack.Seq != 2 {
		t.Fatalf("ack %+v", ack)
	}
	if got := testutil.ToFloat64(h.s.m.dedup); got != 1 {
		t.Fatalf("dedup_total = %v", got)
	}
}

// A publish re-sent after its room's ring forgot it (an instance cut off
// while the room moved on) is still recognised.
func TestDedupBeyondTheRing(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 5 })
	a, b := pubThenMoveOn(t, h, 20)
	pubLostAck(t, a, "re-sent pub")
	b.pub("b-last", "r", "next")
	if ack := b.expect(link.OpAck); ack.Seq != 22 {
		t.Fatalf("the re-sent publish was sequenced again: next seq %d, want 22", ack.Seq)
	}
}

// pubLostAck has c publish "lost-ack" to room r, the first time or again,
// and checks it is (still) seq 1; when says which time, for the failure.
func pubLostAck(t *testing.T, c *client, when string) {
	t.Helper()
	c.pub("lost-ack", "r", "once")
	if ack := c.expect(link.OpAck); ack.Seq != 1 || ack.MID != "lost-ack" {
		t.Fatalf("%s: ack %+v, want lost-ack at seq 1", when, ack)
	}
}

// afterCompactions waits for b's batches so far to be applied (and any
// compaction they caused to be logged) and returns how many compactions
// h logged.
func afterCompactions(h *harness, b *client) int {
	b.send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r"})
	b.expect(link.OpFetched)
	return strings.Count(h.logs.String(), "log compacted")
}

// pubThenMoveOn has instance a publish "lost-ack" to room r (seq 1), then
// instance b publish n more there.
func pubThenMoveOn(t *testing.T, h *harness, n int) (a, b *client) {
	t.Helper()
	a, b = h.dial("a"), h.dial("b")
	a.sync()
	b.sync()
	pubLostAck(t, a, "first pub")
	for i := range n {
		b.pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
		b.expect(link.OpAck)
	}
	return a, b
}

// pubToRooms publishes n messages to each of rooms rooms x0, x1, ...
func pubToRooms(c *client, rooms, n int) {
	for room := range rooms {
		for i := range n {
			c.pub(fmt.Sprint("x", room, "-", i), fmt.Sprint("x", room), "old")
			c.expect(link.OpAck)
		}
	}
}

// The same after a compaction and a restart: the compacted log remembers
// the window's keys whose messages it no longer holds.
func TestDedupSurvivesCompactionAndRestart(t *testing.T) {
	dir := t.TempDir()
	tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = 4096 }
	h := start(t, dir, tweak)
	_, b := pubThenMoveOn(t, h, 100)
	// The keys a compaction keeps do not make every later batch compact
	// again (the log must grow by half the threshold first): about one
	// compaction per 2 KB of these 100 publishes, not one per batch.
	if n := afterCompactions(h, b); n == 0 || n > 15 {
		t.Fatalf("%d compactions", n)
	}
	h.stop()

	h2 := start(t, dir, tweak)
	a2 := h2.dial("a")
	a2.sync()
	pubLostAck(t, a2, "re-sent pub after compaction and restart")
	a2.pub("next", "r", "new")
	if ack := a2.expect(link.OpAck); ack.Seq != 102 {
		t.Fatalf("next seq %d, want 102: the re-sent publish was sequenced again", ack.Seq)
	}
}

// And when the retained messages of other, older rooms and the window's
// other keys are more than the window holds: replay must forget retained
// messages (their rings know them), not the window's keys.
func TestDedupSurvivesCompactionBesideOldRooms(t *testing.T) {
	dir := t.TempDir()
	tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = 4096; c.DedupWindow = 110 }
	h := start(t, dir, tweak)
	a, b := h.dial("a"), h.dial("b")
	a.sync()
	b.sync()
	pubToRooms(b, 13, 5) // 65 retained messages, older than what follows
	pubLostAck(t, a, "first pub")
	for i := range 100 {
		b.pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
		b.expect(link.OpAck)
	}
	if afterCompactions(h, b) == 0 {
		t.Fatal("no compaction logged")
	}
	h.stop()

	h2 := start(t, dir, tweak)
	a2 := h2.dial("a")
	a2.sync()
	pubLostAck(t, a2, "re-sent pub after compaction and restart")
}

// A compacted log holds the rooms' messages in no particular order of
// rooms; replay must still rebuild the window in publish order. Here many
// older rooms retain more messages than the window holds: were the window
// rebuilt in the rooms' order, the still-retained "lost-ack" would be
// forgotten by the window in most runs, and then by its ring once the
// room moves on.
func TestDedupWindowKeepsPublishOrderAcrossCompaction(t *testing.T) {
	dir := t.TempDir()
	tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = 4096; c.DedupWindow = 60 }
	h := start(t, dir, tweak)
	a, b := h.dial("a"), h.dial("b")
	a.sync()
	b.sync()
	pubToRooms(b, 100, 5) // 500 retained messages, older than lost-ack
	compactions := afterCompactions(h, b)
	pubLostAck(t, a, "first pub")
	// Room y's evicted messages make the log compact; the window (60)
	// still holds lost-ack with room for 5 more, and r's ring too.
	for i := range 45 {
		b.pub(fmt.Sprint("y", i), "y", strings.Repeat("z", 2000))
		b.expect(link.OpAck)
	}
	if afterCompactions(h, b) == compactions {
		t.Fatal("no compaction after lost-ack")
	}
	h.stop()

	h2 := start(t, dir, tweak)
	a2, b2 := h2.dial("a"), h2.dial("b")
	a2.sync()
	b2.sync()
	for i := range 5 { // r's ring forgets lost-ack
		b2.pub(fmt.Sprint("later", i), "r", "new")
		b2.expect(link.OpAck)
	}
	pubLostAck(t, a2, "re-sent pub after compaction, restart and 5 more")
}

func TestSubscribedCatchUp(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 10 })
	p := h.dial("p")
	p.sync()
	for i := 1; i <= 20; i++ {
		p.pub(fmt.Sprint(i), "r", fmt.Sprint("msg ", i))
	}
	for range 20 {
		p.expect(link.OpAck)
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
		sub := c.sync(link.RoomState{Room: "r", Since: tc.since, Resume: tc.resume, Tail: tc.tail})[0]
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
	if sub := c.sync(link.RoomState{Room: "new", Since: 5})[0]; sub.Seq != 0 || sub.First != 1 || sub.Gap {
		t.Fatalf("empty room: %+v", sub)
	}
}

// A message of fetches, a few bytes each, must not stage unbounded
// answers: past LINK_QUEUE_BYTES of output owed to the link, fetches are
// refused (and the link stays up).
func TestFetchesAreRefusedPastTheQueueBound(t *testing.T) {
	h := start(t, "", func(c *Config) { c.QueueBytes = 4096 })
	p := h.dial("p")
	p.sync()
	for i := range 50 {
		p.pub(fmt.Sprint(i), "r", strings.Repeat("m", 100))
		p.expect(link.OpAck)
	}
	c := h.dial("c")
	c.sync()
	var fetches []*link.Frame
	for i := range 10 {
		fetches = append(fetches, &link.Frame{T: link.OpFetch, Req: uint64(i + 1), Room: "r"})
	}
	c.send(fetches...)
	answered, refused := 0, 0
	for range 10 {
		f := c.expect(link.OpFetched)
		switch {
		case f.Code == "" && len(f.Msgs) == 50:
			answered++
		case f.Code == protocol.CodeUnavailable && len(f.Msgs) == 0:
			refused++
		default:
			t.Fatalf("fetched %+v", f)
		}
	}
	// The first answer alone is over 4096 bytes: every later one in the
	// batch is refused. (Fetches in a later batch may be answered again.)
	if answered < 1 || refused < 1 || answered+refused != 10 {
		t.Fatalf("%d answered, %d refused", answered, refused)
	}
	if got := testutil.ToFloat64(h.s.m.fetchesRefused); got != float64(refused) {
		t.Fatalf("fetches_refused_total %v, want %d", got, refused)
	}
	c.send(&link.Frame{T: link.OpFetch, Req: 99, Room: "r", Limit: 1})
	if f := c.expect(link.OpFetched); f.Req != 99 {
		t.Fatalf("the link after the refusals: %+v", f)
	}
}

func TestFetchPaging(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 25 })
	p := h.dial("p")
	p.sync()
	for i := 1; i <= 30; i++ {
		p.pub(fmt.Sprint(i), "r", "x")
	}
	for range 30 {
		p.expect(link.OpAck)
	}
	cases := []struct {
		after, before uint64
		limit         int
		want          []uint64
	}{
		{0, 0, 10, seqRange(21, 30)},
		{0, 21, 10, seqRange(11, 20)},
		{0, 11, 10, seqRange(6, 10)}, // 1..5 are no longer kept
		{0, 6, 10, nil},
		{7, 0, 3, seqRange(8, 10)},
		{7, 10, 0, seqRange(8, 9)},
		{0, 0, 0, seqRange(6, 30)},    // default limit: everything kept
		{0, 0, 5000, seqRange(6, 30)}, // capped
		{30, 0, 10, nil},
	}
	for i, tc := range cases {
		req := uint64(100 + i)
		p.send(&link.Frame{T: link.OpFetch, Req: req, Room: "r", After: tc.after, Before: tc.before, Limit: tc.limit})
		f := p.expect(link.OpFetched)
		if f.Req != req || f.Room != "r" || f.First != 6 || !slices.Equal(seqs(f.Msgs), tc.want) {
			t.Errorf("fetch after %d before %d limit %d: req %d first %d msgs %v; want %v",
				tc.after, tc.before, tc.limit, f.Req, f.First, seqs(f.Msgs), tc.want)
		}
	}
	p.send(&link.Frame{T: link.OpFetch, Req: 7, Room: "nowhere"})
	if f := p.expect(link.OpFetched); f.Req != 7 || f.First != 1 || len(f.Msgs) != 0 {
		t.Fatalf("fetch of an unknown room: %+v", f)
	}
}

func member(id, nick, inst string) protocol.Member {
	return protocol.Member{ID: id, Nick: nick, Instance: inst}
}

func expectPresence(t *testing.T, c *client, event string, m protocol.Member) {
	t.Helper()
	f := c.expect(link.OpPresence)
	if f.Event != event || f.Member == nil || *f.Member != m || f.Room != "r" {
		t.Fatalf("%s: presence %s %+v, want %s %+v", c.inst, f.Event, f.Member, event, m)
	}
}

func TestPresence(t *testing.T) {
	h := start(t, "", nil)
	b := h.dial("B")
	b.sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "b1", Nick: "bob"}}})

	a := h.dial("A")
	sub := a.sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})[0]
	want := []protocol.Member{member("a1", "ann", "A"), member("b1", "bob", "B")}
	if !slices.Equal(sub.Members, want) {
		t.Fatalf("subscribed members %+v, want %+v", sub.Members, want)
	}
	expectPresence(t, b, protocol.PresenceJoin, member("a1", "ann", "A"))

	// Join and leave go to every subscriber, the originating one included.
	a.send(&link.Frame{T: link.OpJoin, Room: "r", Member: &protocol.Member{ID: "a2", Nick: "al"}})
	expectPresence(t, a, protocol.PresenceJoin, member("a2", "al", "A"))
	expectPresence(t, b, protocol.PresenceJoin, member("a2", "al", "A"))
	a.send(&link.Frame{T: link.OpJoin, Room: "r", Member: &protocol.Member{ID: "a2", Nick: "al"}}) // repeated: no event
	a.send(&link.Frame{T: link.OpLeave, Room: "r", Member: &protocol.Member{ID: "a2"}})
	expectPresence(t, a, protocol.PresenceLeave, member("a2", "al", "A"))
	expectPresence(t, b, protocol.PresenceLeave, member("a2", "al", "A"))
	a.send(&link.Frame{T: link.OpLeave, Room: "r", Member: &protocol.Member{ID: "nobody"}}) // unknown: no event

	// A re-sync reports only differences to the others.
	a.send(&link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}, {ID: "a3", Nick: "amy"}}}}})
	if f := a.expect(link.OpSubscribed); len(f.Members) != 3 {
		t.Fatalf("members after re-sync: %+v", f.Members)
	}
	expectPresence(t, b, protocol.PresenceJoin, member("a3", "amy", "A"))

	// Unsub drops A's members there.
	a.send(&link.Frame{T: link.OpUnsub, Room: "r"})
	got := []protocol.Member{*b.expect(link.OpPresence).Member, *b.expect(link.OpPresence).Member}
	slices.SortFunc(got, func(x, y protocol.Member) int { return strings.Compare(x.ID, y.ID) })
	if !slices.Equal(got, []protocol.Member{member("a1", "ann", "A"), member("a3", "amy", "A")}) {
		t.Fatalf("leaves after unsub: %+v", got)
	}
	// A sync without the room would have done the same; check it drops
	// nothing twice by re-joining through sub.
	a.send(&link.Frame{T: link.OpSub, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}}}})
	a.expect(link.OpSubscribed)
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
	sub := h.dial("A").sync(link.RoomState{Room: "r"})[0]
	if sub.Settle <= 50*1000 || sub.Settle > 60*1000 {
		t.Fatalf("subscribed within a minute's grace of the start: settle %d ms, want up to 60000", sub.Settle)
	}
	h = start(t, "", func(c *Config) { c.PresenceGrace = 0 })
	if sub := h.dial("A").sync(link.RoomState{Room: "r"})[0]; sub.Settle != 0 {
		t.Fatalf("subscribed without a grace: settle %d ms, want none", sub.Settle)
	}
}

func TestReconnectWithinGraceKeepsPresence(t *testing.T) {
	h := start(t, "", func(c *Config) { c.PresenceGrace = time.Minute })
	b := h.dial("B")
	b.sync(link.RoomState{Room: "r"})
	a := h.dial("A")
	a.sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	expectPresence(t, b, protocol.PresenceJoin, member("a1", "ann", "A"))

	a.drop()
	a2 := h.dial("A")
	sub := a2.sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})[0]
	if !slices.Equal(sub.Members, []protocol.Member{member("a1", "ann", "A")}) {
		t.Fatalf("members %+v", sub.Members)
	}
	// b's link is FIFO: a presence change would arrive before this msg.
	a2.pub("m", "r", "marker")
	if f := b.next(); f.T != link.OpMsg {
		t.Fatalf("B got %s %+v before the marker: the reconnect caused presence churn", f.T, f)
	}
}

func TestNewLinkReplacesOld(t *testing.T) {
	h := start(t, "", nil)
	old := h.dial("A")
	old.sync(link.RoomState{Room: "r"})
	nu := h.dial("A")
	if code, why := old.closed(); code != ClosePolicyViolation || why != DropReplaced {
		t.Fatalf("old link closed with %v (%s)", code, why)
	}
	nu.sync(link.RoomState{Room: "r"})
	nu.pub("m", "r", "hi")
	nu.expect(link.OpMsg)
	nu.expect(link.OpAck)
}

func TestBadFramesDoNotHurt(t *testing.T) {
	h := start(t, "", nil)
	c := h.dial("A")
	c.sync(link.RoomState{Room: "r"})
	long := strings.Repeat("x", maxTextBytes+1)
	nacks := []struct {
		f    *link.Frame
		code string
	}{
		{&link.Frame{T: link.OpPub, MID: "n1"}, protocol.CodeBadRequest},
		{&link.Frame{T: link.OpPub, Msg: &protocol.Message{Room: "r", Text: "no mid"}}, protocol.CodeBadRequest},
		{pubFrame("n2", "", "x"), protocol.CodeBadRoom},
		{pubFrame("n3", " r", "x"), protocol.CodeBadRoom},
		{pubFrame("n4", "r\x00", "x"), protocol.CodeBadRoom},
		{pubFrame("n5", "r", ""), protocol.CodeBadRequest},
		{pubFrame("n6", "r", long), protocol.CodeTooLarge},
		{&link.Frame{T: link.OpPub, MID: "n7", Msg: &protocol.Message{Room: "r", Text: "x", From: long[:maxFieldBytes+1]}}, protocol.CodeBadRequest},
	}
	for _, n := range nacks {
		c.send(n.f)
		if f := c.expect(link.OpNack); f.Code != n.code || f.MID != n.f.MID || f.Error == "" {
			t.Fatalf("%+v: got %+v, want code %s", n.f, f, n.code)
		}
	}
	// Ignored without an answer; the marker shows nothing came first.
	c.send(&link.Frame{T: "no-such-op"},
		&link.Frame{T: link.OpJoin, Room: "r"},
		&link.Frame{T: link.OpJoin, Room: "", Member: &protocol.Member{ID: "x"}},
		&link.Frame{T: link.OpLeave, Room: "r"},
		&link.Frame{T: link.OpUnsub, Room: "never-subscribed"},
		&link.Frame{T: link.OpSub, Rooms: []link.RoomState{{Room: "\x01"}}},
		pubFrame("ok", "r", "fine"))
	if f := c.expect(link.OpMsg); f.Msg.Seq != 1 {
		t.Fatalf("got %+v", f.Msg)
	}
	c.expect(link.OpAck)

}

func TestRestartContinuesSequence(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, nil)
	p := h.dial("p")
	p.sync()
	for i := 1; i <= 5; i++ {
		p.pub(fmt.Sprint("m", i), "r", fmt.Sprint("before ", i))
	}
	for range 5 {
		p.expect(link.OpAck)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if code, why := p.closed(); code != CloseServiceRestart || why != DropShutdown {
		t.Fatalf("closed on shutdown with %v (%s), want 1012", code, why)
	}

	h2 := start(t, dir, nil)
	c := h2.dial("p")
	sub := c.sync(link.RoomState{Room: "r", Tail: 10})[0]
	if sub.Seq != 5 || !slices.Equal(seqs(sub.Msgs), seqRange(1, 5)) || sub.Msgs[4].Text != "before 5" {
		t.Fatalf("after restart: %+v", sub)
	}
	// A publish re-sent across the restart is still recognised.
	c.pub("m3", "r", "re-sent")
	if a := c.expect(link.OpAck); a.Seq != 3 {
		t.Fatalf("re-sent ack %+v", a)
	}
	c.pub("m6", "r", "after")
	if m := c.expect(link.OpMsg); m.Msg.Seq != 6 {
		t.Fatalf("first seq after restart %d, want 6", m.Msg.Seq)
	}
}

func TestShutdownDeliversWhatWasAcknowledged(t *testing.T) {
	h := start(t, "", nil)
	sub := h.dial("s")
	sub.sync(link.RoomState{Room: "r"})
	p := h.dial("p")
	p.sync()
	var frames []*link.Frame
	for i := range 200 {
		frames = append(frames, pubFrame(fmt.Sprint(i), "r", "x"))
	}
	p.send(frames...)
	p.expect(link.OpAck) // the batch is applied and on disk
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if code, _ := sub.closed(); code != CloseServiceRestart {
		t.Fatalf("close status %v", code)
	}
	n := 0
	for len(sub.frames) > 0 {
		if f := <-sub.frames; f.T == link.OpMsg {
			n++
		}
	}
	if n != 200 {
		t.Fatalf("subscriber got %d of 200 sequenced messages before the close", n)
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	// A small window: its keys are kept by compaction too.
	tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = 4096; c.DedupWindow = 10 }
	h := start(t, dir, tweak)
	p := h.dial("p")
	p.sync()
	for i := 1; i <= 300; i++ {
		p.pub(fmt.Sprint("m", i), fmt.Sprint("r", i%2), strings.Repeat("z", 50))
	}
	for range 300 {
		p.expect(link.OpAck)
	}
	// A round trip: the sequencer compacts after delivering a batch, so
	// the next answer comes after any compaction the pubs caused.
	p.send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r0"})
	p.expect(link.OpFetched)
	if size := testutil.ToFloat64(h.s.m.logBytes); size >= 4096 {
		t.Fatalf("log is %v bytes after compaction, threshold 4096", size)
	}
	if !strings.Contains(h.logs.String(), "log compacted") {
		t.Fatal("no compaction logged")
	}
	h.stop()
	h2 := start(t, dir, tweak)
	c := h2.dial("c")
	subs := c.sync(link.RoomState{Room: "r0", Tail: 100}, link.RoomState{Room: "r1", Tail: 100})
	if subs[0].Seq != 150 || !slices.Equal(seqs(subs[0].Msgs), seqRange(146, 150)) ||
		subs[1].Seq != 150 || !slices.Equal(seqs(subs[1].Msgs), seqRange(146, 150)) {
		t.Fatalf("after compaction and restart: r0 %d %v, r1 %d %v", subs[0].Seq, seqs(subs[0].Msgs), subs[1].Seq, seqs(subs[1].Msgs))
	}
	c.pub("m1", "r1", "after")
	if m := c.expect(link.OpMsg); m.Msg.Seq != 151 {
		t.Fatalf("seq %d after compaction, want 151", m.Msg.Seq)
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
	a.send(&link.Frame{T: link.OpSync, More: true, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{ann}}}})
	a.send(&link.Frame{T: link.OpSync, Rooms: []link.RoomState{
		{Room: "r", Members: []protocol.Member{bob}}, {Room: "s", Members: []protocol.Member{cat}},
	}})
	subs := map[string][]string{}
	for range 2 {
		f := a.expect(link.OpSubscribed)
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
	b.sync(link.RoomState{Room: "r"}, link.RoomState{Room: "s"})
	a := h.dial("A")
	a.sync(link.RoomState{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}},
		link.RoomState{Room: "s", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	b.expect(link.OpPresence)
	b.expect(link.OpPresence)

	// Re-sync without r: A leaves r (B is told) and gets no more of it.
	a.sync(link.RoomState{Room: "s", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}})
	expectPresence(t, b, protocol.PresenceLeave, member("a1", "ann", "A"))
	b.pub("m1", "r", "to r")
	b.pub("m2", "s", "to s")
	if f := a.expect(link.OpMsg); f.Msg.Room != "s" {
		t.Fatalf("A got %+v after dropping r", f.Msg)
	}
	if got := testutil.ToFloat64(h.s.m.subs); got != 3 {
		t.Fatalf("subscriptions = %v, want 3", got)
	}
}

// A key sequenced again in another room (an instance reusing a mid) is one
// entry of the window: the newer room's seq, at the newest end, forgotten
// when that slot is evicted, not when its older one is.
func TestRecentPubsOneEntryPerKey(t *testing.T) {
	d := newRecentPubs(3)
	k := pubKey{a: "a", b: "m"}
	d.add(k, "r1", 1)
	d.add(k, "r2", 5)
	if seq, ok := d.get(k, "r2"); !ok || seq != 5 {
		t.Fatalf("get = %d, %v; want 5 in r2", seq, ok)
	}
	n := 0
	for range d.all {
		n++
	}
	if n != 1 {
		t.Fatalf("%d entries for one key", n)
	}
	d.add(pubKey{a: "a", b: "x"}, "r1", 2) // slots: k (stale), k, x
	d.add(k, "r2", 5)                      // k moves to the newest end: k (stale), x, k
	var order []string
	for key := range d.all {
		order = append(order, key.b)
	}
	if !slices.Equal(order, []string{"x", "m"}) {
		t.Fatalf("window %v, want [x m]: a re-added key moves to the newest end", order)
	}
	d.add(pubKey{a: "a", b: "y"}, "r1", 3) // evicts k's stale slot
	if _, ok := d.get(k, "r2"); !ok {
		t.Fatal("evicting a key's stale slot forgot the key")
	}
	d.add(pubKey{a: "a", b: "z"}, "r1", 4) // evicts x
	d.add(pubKey{a: "a", b: "w"}, "r1", 6) // evicts k, now the oldest
	if _, ok := d.get(k, "r2"); ok {
		t.Fatal("k still known after its eviction")
	}
	for key, rs := range d.all {
		if rs.room == "" || rs.seq == 0 {
			t.Fatalf("entry %v without its room and seq", key)
		}
	}
}

// A link whose peer stops reading is closed once output it already owed
// is over the limit; one large answer alone does not condemn it.
func TestSlowLinkIsClosed(t *testing.T) {
	h := start(t, "", func(c *Config) { c.QueueBytes = 64 << 10 })
	slow := h.dial("slow")
	slow.sync(link.RoomState{Room: "r"})
	slow.stall()
	p := h.dial("p")
	p.sync()
	var frames []*link.Frame
	for i := range 400 { // about 100 KB of msg frames, in one batch
		frames = append(frames, pubFrame(fmt.Sprint(i), "r", strings.Repeat("y", 200)))
	}
	p.send(frames...)
	for range 400 {
		p.expect(link.OpAck)
	}
	// A round trip: the batch was delivered to every link.
	p.send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r", Limit: 1})
	p.expect(link.OpFetched)
	select {
	case <-slow.done:
		t.Fatal("one batch over the limit closed the link")
	default:
	}
	p.pub("more", "r", "more")
	if code, why := slow.closed(); code != CloseTryAgainLater || why != DropSlow {
		t.Fatalf("slow link closed with %v (%s), want 1013 for being slow", code, why)
	}
	p.expect(link.OpAck) // the publisher is not held back by the slow link
}

// A link's reader waits once more than InflightBytes of its input wait for
// the sequencer, and goes on once they are applied.
func TestLinkInputIsBounded(t *testing.T) {
	h, run := startPaused(t, "", func(c *Config) { c.InflightBytes = 8 << 10 })
	p := h.dial("p")
	const n = 50
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		p.send(&link.Frame{T: link.OpSync})
		for i := range n { // 50 messages of about 1 KB
			p.pub(fmt.Sprint("m", i), "r", strings.Repeat("z", 1000))
		}
	}()
	// Nothing is applied: the reader hands over what fits, crosses the
	// bound with one more message, and waits.
	deadline := time.Now().Add(waitFor)
	for p.in.inflight.Load() <= 8<<10 || !strings.Contains(stacks(), "(*Input).Frames") {
		if time.Now().After(deadline) {
			t.Fatalf("the link's input never passed its bound, or Frames does not wait; %d events queued", len(h.s.in))
		}
		time.Sleep(time.Millisecond) // polling, with a deadline
	}
	// The link's open, its sync and 8 KiB of publishes plus the one that
	// crossed the bound.
	if queued := len(h.s.in); queued > 11 {
		t.Fatalf("%d events queued while the reader waits, want at most 11 (8 KiB of 1 KB publishes)", queued)
	}
	run()
	for i := range n {
		if ack := p.expect(link.OpAck); ack.Seq != uint64(i+1) {
			t.Fatalf("ack %d: %+v", i, ack)
		}
	}
	<-sent
}

// stacks returns every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
