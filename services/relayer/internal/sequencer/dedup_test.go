package sequencer

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// sessPub is a publish of client id cid in session sess under mid.
func sessPub(mid, sess, cid, room, text string) *link.Frame {
	return &link.Frame{T: link.OpPub, MID: mid, Sess: sess, Msg: &protocol.Message{Room: room, ID: cid, Text: text, From: "x", UID: "u-" + mid}}
}

// expectAck reads c's next frame, an ack of mid at seq.
func expectAck(t *testing.T, c *client, mid string, seq uint64, what string) {
	t.Helper()
	if ack := c.Expect(link.OpAck); ack.MID != mid || ack.Seq != seq {
		t.Fatalf("%s: ack %+v, want %s at seq %d", what, ack, mid, seq)
	}
}

// A client's re-send through another instance (another mid, the same
// session and id) and its old instance's re-send (the same mid) are the
// publish already sequenced, in either order: acknowledged with its seq,
// delivered to no one again. Ids of other sessions, or without one, are
// not keys.
func TestDedupBySession(t *testing.T) {
	h := start(t, "", nil)
	a, b, w := h.dial("a"), h.dial("b"), h.dial("watcher")
	a.Sync()
	b.Sync()
	w.Sync(link.RoomState{Room: "r"}, link.RoomState{Room: "q"})

	// Either instance's copy may come first: a's own (then the client's
	// re-send through b), or the client's re-send through b (then a's
	// re-send, its link back). The first one re-sent again is known too.
	for _, tc := range []struct {
		first, then         *client
		firstMid, thenMid   string
		id, room, firstName string
	}{
		{a, b, "m1", "m7", "c1", "r", "a's publish"},
		{b, a, "m8", "m2", "c2", "q", "the client's re-send through b"},
	} {
		tc.first.Send(sessPub(tc.firstMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.first, tc.firstMid, 1, tc.firstName)
		tc.then.Send(sessPub(tc.thenMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.then, tc.thenMid, 1, "the other copy after "+tc.firstName)
		tc.first.Send(sessPub(tc.firstMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.first, tc.firstMid, 1, tc.firstName+", re-sent")
	}

	// The same id in another session, or without one, is another message.
	b.Send(sessPub("m9", "T", "c1", "r", "T's c1"))
	expectAck(t, b, "m9", 2, "another session's c1")
	b.Send(sessPub("m10", "", "c1", "r", "no session"), sessPub("m11", "", "c1", "r", "no session again"))
	expectAck(t, b, "m10", 3, "c1 without a session")
	expectAck(t, b, "m11", 4, "c1 without a session, another mid")

	// The watcher got each message once: r's 1..4 and q's 1.
	var got []string
	for range 5 {
		m := w.Expect(link.OpMsg).Msg
		got = append(got, fmt.Sprint(m.Room, m.Seq))
	}
	if want := "[r1 q1 r2 r3 r4]"; fmt.Sprint(got) != want {
		t.Fatalf("watcher got %v, want %s", got, want)
	}
	if d := testutil.ToFloat64(h.s.m.dedup); d != 4 {
		t.Fatalf("dedup_total = %v, want 4", d)
	}

	// A sess no gateway would send is refused, and hurts nothing.
	b.Send(sessPub("m12", strings.Repeat("s", maxFieldBytes+1), "c9", "r", "x"))
	if n := b.Expect(link.OpNack); n.MID != "m12" || n.Code != protocol.CodeBadRequest {
		t.Fatalf("over-long sess: %+v", n)
	}
	b.Send(sessPub("m13", "S", "c3", "r", "three"))
	expectAck(t, b, "m13", 5, "the next publish")
}

// The session keys outlive the relayer: after a restart from the log as
// written, and after a compaction that dropped the message (its room moved
// on) and a restart, a re-send through another instance is recognised.
func TestSessionDedupSurvivesRestartAndCompaction(t *testing.T) {
	for _, tc := range []struct {
		name    string
		compact int64
	}{{"restart", 1 << 30}, {"compaction and restart", 4096}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = tc.compact }
			h := start(t, dir, tweak)
			a, b := h.dial("a"), h.dial("b")
			a.Sync()
			b.Sync()
			a.Send(sessPub("m1", "S", "c1", "r", "once"))
			expectAck(t, a, "m1", 1, "first publish")
			for i := range 100 {
				b.Pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
				b.Expect(link.OpAck)
			}
			compactions := afterCompactions(h, b)
			if tc.compact < 1<<30 && compactions == 0 {
				t.Fatal("no compaction logged")
			}
			if err := h.stop(); err != nil {
				t.Fatal(err)
			}

			h2 := start(t, dir, tweak)
			a2, b2 := h2.dial("a"), h2.dial("b")
			a2.Sync()
			b2.Sync()
			b2.Send(sessPub("m99", "S", "c1", "r", "once"))
			expectAck(t, b2, "m99", 1, "the client's re-send after "+tc.name)
			a2.Send(sessPub("m1", "S", "c1", "r", "once"))
			expectAck(t, a2, "m1", 1, "a's re-send after "+tc.name)
			b2.Pub("next", "r", "new")
			expectAck(t, b2, "next", 102, "the next publish")
		})
	}
}

// DEDUP_WINDOW bounds what is remembered: a session's publish older than
// the window and than its room's ring is sequenced again.
func TestSessionDedupWindowIsBounded(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 2; c.DedupWindow = 3 })
	a := h.dial("a")
	a.Sync()
	a.Send(sessPub("m1", "S", "c1", "r", "old"))
	expectAck(t, a, "m1", 1, "first publish")
	a.Send(sessPub("m2", "S", "c1", "r", "old"))
	expectAck(t, a, "m2", 1, "re-send within the window")
	for i := range 3 {
		a.Pub(fmt.Sprint("n", i), "r", "later")
		expectAck(t, a, fmt.Sprint("n", i), uint64(2+i), "later publish")
	}
	a.Send(sessPub("m3", "S", "c1", "r", "old"))
	expectAck(t, a, "m3", 5, "re-send beyond the window")
}

func TestDedupByMID(t *testing.T) {
	h := start(t, "", nil)
	a, b := h.dial("a"), h.dial("b")
	a.Sync(link.RoomState{Room: "r"})
	b.Sync()

	b.Pub("m1", "r", "one")
	if ack := b.Expect(link.OpAck); ack.Seq != 1 || ack.MID != "m1" {
		t.Fatalf("ack %+v", ack)
	}
	b.Pub("m1", "r", "one again")
	if ack := b.Expect(link.OpAck); ack.Seq != 1 || ack.MID != "m1" {
		t.Fatalf("re-sent pub: ack %+v, want the original seq", ack)
	}
	// Another instance may use the same mid: it is only unique per instance.
	a.Pub("m1", "r", "a's own m1")
	if m := a.Expect(link.OpMsg); m.Msg.Seq != 1 {
		t.Fatalf("got %+v", m.Msg)
	}
	if m := a.Expect(link.OpMsg); m.Msg.Seq != 2 || m.Msg.Text != "a's own m1" {
		t.Fatalf("the duplicate was re-broadcast, or a's message lost: %+v", m.Msg)
	}
	if ack := a.Expect(link.OpAck); ack.Seq != 2 {
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
	b.Pub("b-last", "r", "next")
	if ack := b.Expect(link.OpAck); ack.Seq != 22 {
		t.Fatalf("the re-sent publish was sequenced again: next seq %d, want 22", ack.Seq)
	}
}

// pubLostAck has c publish "lost-ack" to room r, the first time or again,
// and checks it is (still) seq 1; when says which time, for the failure.
func pubLostAck(t *testing.T, c *client, when string) {
	t.Helper()
	c.Pub("lost-ack", "r", "once")
	if ack := c.Expect(link.OpAck); ack.Seq != 1 || ack.MID != "lost-ack" {
		t.Fatalf("%s: ack %+v, want lost-ack at seq 1", when, ack)
	}
}

// afterCompactions waits for b's batches so far to be applied (and any
// compaction they caused to be logged) and returns how many compactions
// h logged.
func afterCompactions(h *harness, b *client) int {
	b.Send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r"})
	b.Expect(link.OpFetched)
	return strings.Count(h.logs.String(), "log compacted")
}

// pubThenMoveOn has instance a publish "lost-ack" to room r (seq 1), then
// instance b publish n more there.
func pubThenMoveOn(t *testing.T, h *harness, n int) (a, b *client) {
	t.Helper()
	a, b = h.dial("a"), h.dial("b")
	a.Sync()
	b.Sync()
	pubLostAck(t, a, "first pub")
	for i := range n {
		b.Pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
		b.Expect(link.OpAck)
	}
	return a, b
}

// pubToRooms publishes n messages to each of rooms rooms x0, x1, ...
func pubToRooms(c *client, rooms, n int) {
	for room := range rooms {
		for i := range n {
			c.Pub(fmt.Sprint("x", room, "-", i), fmt.Sprint("x", room), "old")
			c.Expect(link.OpAck)
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
	a2.Sync()
	pubLostAck(t, a2, "re-sent pub after compaction and restart")
	a2.Pub("next", "r", "new")
	if ack := a2.Expect(link.OpAck); ack.Seq != 102 {
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
	a.Sync()
	b.Sync()
	pubToRooms(b, 13, 5) // 65 retained messages, older than what follows
	pubLostAck(t, a, "first pub")
	for i := range 100 {
		b.Pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
		b.Expect(link.OpAck)
	}
	if afterCompactions(h, b) == 0 {
		t.Fatal("no compaction logged")
	}
	h.stop()

	h2 := start(t, dir, tweak)
	a2 := h2.dial("a")
	a2.Sync()
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
	a.Sync()
	b.Sync()
	pubToRooms(b, 100, 5) // 500 retained messages, older than lost-ack
	compactions := afterCompactions(h, b)
	pubLostAck(t, a, "first pub")
	// Room y's evicted messages make the log compact; the window (60)
	// still holds lost-ack with room for 5 more, and r's ring too.
	for i := range 45 {
		b.Pub(fmt.Sprint("y", i), "y", strings.Repeat("z", 2000))
		b.Expect(link.OpAck)
	}
	if afterCompactions(h, b) == compactions {
		t.Fatal("no compaction after lost-ack")
	}
	h.stop()

	h2 := start(t, dir, tweak)
	a2, b2 := h2.dial("a"), h2.dial("b")
	a2.Sync()
	b2.Sync()
	for i := range 5 { // r's ring forgets lost-ack
		b2.Pub(fmt.Sprint("later", i), "r", "new")
		b2.Expect(link.OpAck)
	}
	pubLostAck(t, a2, "re-sent pub after compaction, restart and 5 more")
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
