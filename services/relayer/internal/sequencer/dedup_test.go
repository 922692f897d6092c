package sequencer

import (
	"fmt"
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
	if ack := c.expect(link.OpAck); ack.MID != mid || ack.Seq != seq {
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
	a.sync()
	b.sync()
	w.sync(link.RoomState{Room: "r"}, link.RoomState{Room: "q"})

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
		tc.first.send(sessPub(tc.firstMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.first, tc.firstMid, 1, tc.firstName)
		tc.then.send(sessPub(tc.thenMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.then, tc.thenMid, 1, "the other copy after "+tc.firstName)
		tc.first.send(sessPub(tc.firstMid, "S", tc.id, tc.room, "text"))
		expectAck(t, tc.first, tc.firstMid, 1, tc.firstName+", re-sent")
	}

	// The same id in another session, or without one, is another message.
	b.send(sessPub("m9", "T", "c1", "r", "T's c1"))
	expectAck(t, b, "m9", 2, "another session's c1")
	b.send(sessPub("m10", "", "c1", "r", "no session"), sessPub("m11", "", "c1", "r", "no session again"))
	expectAck(t, b, "m10", 3, "c1 without a session")
	expectAck(t, b, "m11", 4, "c1 without a session, another mid")

	// The watcher got each message once: r's 1..4 and q's 1.
	var got []string
	for range 5 {
		m := w.expect(link.OpMsg).Msg
		got = append(got, fmt.Sprint(m.Room, m.Seq))
	}
	if want := "[r1 q1 r2 r3 r4]"; fmt.Sprint(got) != want {
		t.Fatalf("watcher got %v, want %s", got, want)
	}
	if d := testutil.ToFloat64(h.s.m.dedup); d != 4 {
		t.Fatalf("dedup_total = %v, want 4", d)
	}

	// A sess no gateway would send is refused, and hurts nothing.
	b.send(sessPub("m12", strings.Repeat("s", maxFieldBytes+1), "c9", "r", "x"))
	if n := b.expect(link.OpNack); n.MID != "m12" || n.Code != protocol.CodeBadRequest {
		t.Fatalf("over-long sess: %+v", n)
	}
	b.send(sessPub("m13", "S", "c3", "r", "three"))
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
			a.sync()
			b.sync()
			a.send(sessPub("m1", "S", "c1", "r", "once"))
			expectAck(t, a, "m1", 1, "first publish")
			for i := range 100 {
				b.pub(fmt.Sprint("b", i), "r", strings.Repeat("z", 50))
				b.expect(link.OpAck)
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
			a2.sync()
			b2.sync()
			b2.send(sessPub("m99", "S", "c1", "r", "once"))
			expectAck(t, b2, "m99", 1, "the client's re-send after "+tc.name)
			a2.send(sessPub("m1", "S", "c1", "r", "once"))
			expectAck(t, a2, "m1", 1, "a's re-send after "+tc.name)
			b2.pub("next", "r", "new")
			expectAck(t, b2, "next", 102, "the next publish")
		})
	}
}

// DEDUP_WINDOW bounds what is remembered: a session's publish older than
// the window and than its room's ring is sequenced again.
func TestSessionDedupWindowIsBounded(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 2; c.DedupWindow = 3 })
	a := h.dial("a")
	a.sync()
	a.send(sessPub("m1", "S", "c1", "r", "old"))
	expectAck(t, a, "m1", 1, "first publish")
	a.send(sessPub("m2", "S", "c1", "r", "old"))
	expectAck(t, a, "m2", 1, "re-send within the window")
	for i := range 3 {
		a.pub(fmt.Sprint("n", i), "r", "later")
		expectAck(t, a, fmt.Sprint("n", i), uint64(2+i), "later publish")
	}
	a.send(sessPub("m3", "S", "c1", "r", "old"))
	expectAck(t, a, "m3", 5, "re-send beyond the window")
}
