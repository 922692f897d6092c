package system

import (
	"fmt"
	"testing"
	"time"
)

// An instance cut off from the relayer while far more messages than the
// relayer's HISTORY_LIMIT go by gets every one of them after it reconnects
// (the relayer reads them back from its log), and a client recovering with
// since on another instance gets them all too: no history_gap within
// RETENTION_BYTES.
func TestCatchUpBeyondHistoryLimitFromTheLog(t *testing.T) {
	const n = 120 // six times the relayer's ring
	r := startRelayer(t, map[string]string{"HISTORY_LIMIT": "20", "LINK_PING_INTERVAL": "200ms"})
	a := startUser(t, "user-a", r, map[string]string{"RATE_PER_SEC": "1000", "RATE_BURST": "1000"})
	px := startProxy(t, r.Addr)
	b := startUserVia(t, "user-b", px.Addr(), map[string]string{"RELAY_PING_INTERVAL": "200ms"})

	alice, _ := hello(t, a.Addr, "alice")
	alice.join("hall", nil)
	bob, _ := hello(t, b.Addr, "bob")
	bob.join("hall", nil)
	alice.send(map[string]any{"type": "chat", "room": "hall", "message": "before", "id": "0"})
	if f := bob.chats("hall", 1)[0]; f.Message != "before" || f.Seq != 1 {
		t.Fatalf("bob got %s", f.Raw)
	}

	px.freeze()
	// The link must be down (user-b resyncs after it), not just slow.
	waitFor(t, 10*time.Second, "user-b to see its link down", func() bool { return httpStatus(b.Addr, "/readyz") == 503 })
	for k := 1; k <= n; k++ {
		alice.send(map[string]any{"type": "chat", "room": "hall", "message": fmt.Sprint("during ", k), "id": fmt.Sprint(k)})
	}
	alice.chats("hall", n)

	px.thaw()
	// chats fails on any other frame, a history_gap error included.
	for k, f := range bob.chats("hall", n) {
		if f.Message != fmt.Sprint("during ", k+1) || f.Seq != uint64(k+2) {
			t.Fatalf("bob's catch-up message %d: %s", k, f.Raw)
		}
	}

	// A client that last saw seq 1 recovers on user-a, whose cache holds
	// the last HISTORY_SIZE (50): the rest comes from the relayer's log.
	carol, _ := hello(t, a.Addr, "carol")
	j := carol.join("hall", map[string]any{"since": 1})
	if j.Recovered == nil || !*j.Recovered || j.Seq != n+1 || len(j.History) != n {
		t.Fatalf("carol's recovery since 1: seq %d recovered %v, %d messages: %s", j.Seq, j.Recovered, len(j.History), j.Raw)
	}
	for k, m := range j.History {
		if m.Seq != uint64(k+2) || m.Text != fmt.Sprint("during ", k+1) {
			t.Fatalf("carol's recovered message %d: %+v", k, m)
		}
	}
}
