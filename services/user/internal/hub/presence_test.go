package hub

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/wstest"
)

// A restarted relayer's answers (Settle) lack the members of instances
// that have not re-synced: the hub holds them without an event; a
// presence join confirms one silently, a leave removes it once, and one
// still held when Settle runs out leaves then, once.
func TestSettlingAnswerHoldsRemoteMembers(t *testing.T) {
	h, srv := startHub(t, 0)
	c := wstest.Dial(t, srv.Listener.Addr().String())
	c.Send(t, `{"type":"hello","nick":"watcher"}`, `{"type":"join","room":"r","id":"j"}`)
	c.Expect(t, `"joined"`)
	x := protocol.Member{ID: "x1", Nick: "xena", Instance: "other"}
	y := protocol.Member{ID: "y1", Nick: "yuri", Instance: "other"}
	h.Presence("r", protocol.PresenceJoin, x)
	h.Presence("r", protocol.PresenceJoin, y)
	c.Expect(t, `"x1"`)
	c.Expect(t, `"y1"`)
	// quiet checks that nothing reaches the client before its next pong
	// (a presence event queued before it comes before it).
	pings := 0
	quiet := func(what string) {
		t.Helper()
		pings++
		id := "p" + strconv.Itoa(pings)
		c.Send(t, `{"type":"ping","id":"`+id+`"}`)
		if f := c.Next(t); !strings.Contains(f, `"pong"`) || !strings.Contains(f, id) {
			t.Fatalf("%s: got %s", what, f)
		}
	}

	const settle = 2 * time.Second // long enough for a slow machine to do the steps before it ends
	h.Subscribed(bus.Subscription{Room: "r", Settle: settle})
	quiet("a settling answer without x and y")
	h.Presence("r", protocol.PresenceJoin, x) // x's instance re-synced
	quiet("x confirmed")
	h.Presence("r", protocol.PresenceLeave, y) // y left after all
	if f := c.Next(t); !strings.Contains(f, `"leave"`) || !strings.Contains(f, `"y1"`) {
		t.Fatalf("want y's leave, got %s", f)
	}
	// Past the settle time: nothing more about x or y.
	h.mu.Lock()
	held := len(h.holding)
	h.mu.Unlock()
	if held != 0 {
		t.Fatalf("%d rooms still hold members with none held", held)
	}
	quiet("after x's confirmation and y's leave")

	// Held again, and not confirmed: x leaves once the settle time ends.
	held0 := time.Now()
	h.Subscribed(bus.Subscription{Room: "r", Settle: settle})
	quiet("x held again")
	if f := c.Next(t); !strings.Contains(f, `"leave"`) || !strings.Contains(f, `"x1"`) {
		t.Fatalf("want x's leave, got %s", f)
	}
	if d := time.Since(held0); d < settle {
		t.Fatalf("x left %v after the settling answer, before its %v", d, settle)
	}
	quiet("after x's leave")
	// An answer without Settle is the whole presence: no holding.
	h.Presence("r", protocol.PresenceJoin, y)
	c.Expect(t, `"y1"`)
	h.Subscribed(bus.Subscription{Room: "r"})
	if f := c.Next(t); !strings.Contains(f, `"leave"`) || !strings.Contains(f, `"y1"`) {
		t.Fatalf("want y's leave at once, got %s", f)
	}
}
