package system

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A seed client (it ignores error frames) that bursts 200 messages gets
// every one through, in order: past RATE_BURST the instance reads its
// frames at RATE_PER_SEC (TCP holds the rest back) instead of refusing
// them with rate_limited, which such a client would never see.
func TestBurstIsPacedNotRefused(t *testing.T) {
	u := startUser(t, "solo", nil, nil) // RATE_PER_SEC 20, RATE_BURST 40
	reader := dial(t, u.Addr, "/")
	reader.send(map[string]any{"type": "join-room", "room": "burst"})
	waitFor(t, 10*time.Second, "the reader's join", func() bool { return metric(u.Addr, "wschat_user_memberships") == 1 })

	sender := dial(t, u.Addr, "/")
	start := time.Now()
	const n = 200
	for k := range n {
		sender.send(map[string]any{"type": "chat", "room": "burst", "message": fmt.Sprintf("m%03d", k)})
	}
	var last uint64
	for k := range n {
		f := reader.next() // fails the test when nothing comes for 10 s
		if f.Type != "chat" || f.Message != fmt.Sprintf("m%03d", k) || f.Seq != last+1 {
			t.Fatalf("frame %d: %s (last seq %d)", k, f.Raw, last)
		}
		last = f.Seq
	}
	took := time.Since(start)
	// 40 at once, then 160 at 20/s: 8 s less one interval. A refusing
	// instance would have been quicker, but not complete.
	if took < 7*time.Second {
		t.Fatalf("200 messages took %s; paced at 20/s past a burst of 40 they take about 8s", took)
	}
	if f, err := sender.read(200 * time.Millisecond); err == nil {
		t.Fatalf("the sender got a frame: %s", f.Raw)
	}
	if w := metric(u.Addr, "wschat_user_rate_limit_waits_total"); w < n-40-1 {
		t.Fatalf("rate limit waits = %v, want at least %d", w, n-40-1)
	}
	t.Logf("200 messages delivered in %s", took)
}

// A client that stays over the rate (its frames wait for tokens without a
// break) is closed with 1008 after RATE_LIMIT_CLOSE_AFTER, not before; a
// client that only bursts is not.
func TestFloodingClientIsClosed(t *testing.T) {
	const closeAfter = 2 * time.Second
	u := startUser(t, "solo", nil, map[string]string{
		"RATE_PER_SEC": "50", "RATE_BURST": "10", "RATE_LIMIT_CLOSE_AFTER": closeAfter.String(),
	})
	// A burst that drains well within the limit: 20 frames, 10 of them
	// paced, 0.2 s of waiting.
	calm, _ := hello(t, u.Addr, "calm")
	for k := range 20 {
		calm.send(map[string]any{"type": "ping", "id": fmt.Sprint(k)})
	}
	for k := range 20 {
		if f := calm.next(); f.Type != "pong" || f.ID != fmt.Sprint(k) {
			t.Fatalf("calm client: %s", f.Raw)
		}
	}

	flood, _ := hello(t, u.Addr, "flood")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	go func() {
		// Bounded: the instance closes the connection long before.
		for k := range 1_000_000 {
			b := fmt.Appendf(nil, `{"type":"ping","id":"f%d"}`, k)
			if flood.conn.Write(ctx, websocket.MessageText, b) != nil {
				return
			}
		}
	}()
	code, reason := flood.closeStatus(30 * time.Second) // reads its pongs meanwhile
	took := time.Since(start)
	if code != websocket.StatusPolicyViolation || !strings.Contains(reason, "rate limit") {
		t.Fatalf("flooding client closed with %d %q", code, reason)
	}
	if took < closeAfter {
		t.Fatalf("flooding client closed after %s, before RATE_LIMIT_CLOSE_AFTER (%s)", took, closeAfter)
	}
	if n := metric(u.Addr, "wschat_user_rate_limit_closes_total"); n != 1 {
		t.Fatalf("rate limit closes = %v, want 1", n)
	}
	// The calm client is still served.
	calm.send(map[string]any{"type": "ping", "id": "after"})
	if f := calm.next(); f.Type != "pong" || f.ID != "after" {
		t.Fatalf("calm client after the flood: %s", f.Raw)
	}
	t.Logf("flooding client closed after %s: %q", took, reason)
}
