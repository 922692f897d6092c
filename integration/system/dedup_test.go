package system

import (
	"fmt"
	"testing"
	"time"
)

// A client whose chats were neither acknowledged nor refused when its
// connection died re-sends them, with their ids, through another instance,
// while the instance it sent them to still holds them and re-sends them
// once its relay link is back: each is sequenced once, whichever arrives
// first; every re-send is acknowledged with the original seq; the client
// receives each chat exactly once.
func TestResendAfterReconnectIsSequencedOnce(t *testing.T) {
	for _, healFirst := range []bool{false, true} {
		name := "resend then heal"
		if healFirst {
			name = "heal then resend"
		}
		t.Run(name, func(t *testing.T) { resendAfterReconnect(t, healFirst) })
	}
}

func resendAfterReconnect(t *testing.T, healFirst bool) {
	r := startRelayer(t, map[string]string{"LINK_PING_INTERVAL": "200ms"})
	fast := map[string]string{"RATE_PER_SEC": "1000", "RATE_BURST": "1000",
		"RELAY_PING_INTERVAL": "200ms", "RELAY_RECONNECT_MIN": "50ms", "RELAY_RECONNECT_MAX": "300ms"}
	px := startProxy(t, r.Addr)
	a := startUserVia(t, "user-a", px.Addr(), fast)
	b := startUser(t, "user-b", r, fast)
	const session = "9c1f3e0a5b7d2468ace13579bdf02468"
	chat := func(c *client, k int) {
		c.send(map[string]any{"type": "chat", "room": "r", "message": fmt.Sprint("m", k), "id": fmt.Sprint("c", k)})
	}

	x := dial(t, a.Addr, "/ws")
	x.send(map[string]any{"type": "hello", "nick": "x", "session": session})
	x.expect("welcome")
	x.join("r", nil)
	for k := range 5 {
		chat(x, k)
	}
	got := collect(t, x, 5, 5)
	if got.seqOf["c4"] != 5 {
		t.Fatalf("before the cut: acks %v", got.seqOf)
	}

	px.freeze()
	waitFor(t, 10*time.Second, "user-a to see its relay link down", func() bool { return httpStatus(a.Addr, "/readyz") == 503 })
	for k := 5; k < 10; k++ {
		chat(x, k) // queued by user-a, not acknowledged
	}
	x.conn.CloseNow()

	heal := func() {
		px.thaw()
		waitFor(t, 15*time.Second, "user-a's relay link back", func() bool { return httpStatus(a.Addr, "/readyz") == 200 })
	}
	x2 := dial(t, b.Addr, "/ws")
	x2.name = "x again"
	x2.send(map[string]any{"type": "hello", "nick": "x", "session": session})
	x2.expect("welcome")
	j := x2.join("r", map[string]any{"since": 5})
	if j.Seq != 5 || j.Recovered == nil || !*j.Recovered || len(j.History) != 0 {
		t.Fatalf("x's recovery on user-b: %s", j.Raw)
	}
	var live collected
	if healFirst {
		heal()
		// user-a's re-sends are sequenced and reach x on user-b.
		live = collect(t, x2, 0, 5)
	}
	for k := 5; k < 10; k++ {
		chat(x2, k) // docs/protocol.md: re-send every unacknowledged chat, same id
	}
	resent := collect(t, x2, 5, 5-len(live.chats))
	for k := 5; k < 10; k++ {
		if id := fmt.Sprint("c", k); resent.seqOf[id] != uint64(k+1) {
			t.Fatalf("re-send of %s acknowledged with seq %d, want the original %d (acks %v)", id, resent.seqOf[id], k+1, resent.seqOf)
		}
	}
	if !healFirst {
		heal()
	}

	// Whatever user-a re-sent is behind its sync on the link, before a
	// witness's join there: the room's seq shows what was sequenced.
	w, _ := hello(t, a.Addr, "witness")
	if j := w.join("r", nil); j.Seq != 10 {
		t.Fatalf("room r's last seq is %d after the heal, want 10: re-sends were sequenced twice", j.Seq)
	}
	w.send(map[string]any{"type": "chat", "room": "r", "message": "marker", "id": "w1"})
	tail := collect(t, x2, 0, 1)
	chats := append(append(live.chats, resent.chats...), tail.chats...)
	seen := map[string]bool{}
	for i, f := range chats {
		if f.Seq != uint64(6+i) || seen[f.ID] {
			t.Fatalf("x received %d chats after its recovery; number %d is %s (each of c5..c9 once, then the marker, wanted)", len(chats), i, f.Raw)
		}
		seen[f.ID] = true
	}
	if last := chats[len(chats)-1]; last.Message != "marker" || last.Seq != 11 {
		t.Fatalf("x's last chat %s, want the marker at seq 11", last.Raw)
	}
}

// collected is what collect read: the acks' seqs by id, and the chats.
type collected struct {
	seqOf map[string]uint64
	chats []frame
}

// collect reads c's frames until it has acks acks and chats chats,
// skipping presence, failing on anything else.
func collect(t *testing.T, c *client, acks, chats int) collected {
	t.Helper()
	got := collected{seqOf: map[string]uint64{}}
	for len(got.seqOf) < acks || len(got.chats) < chats {
		f := c.next()
		switch f.Type {
		case "ack":
			if _, dup := got.seqOf[f.ID]; dup {
				t.Fatalf("%s: a second ack of %s: %s", c.name, f.ID, f.Raw)
			}
			got.seqOf[f.ID] = f.Seq
		case "chat":
			got.chats = append(got.chats, f)
		case "presence":
		default:
			t.Fatalf("%s: unexpected frame: %s", c.name, f.Raw)
		}
	}
	return got
}
