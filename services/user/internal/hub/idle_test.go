package hub

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/conn"
	"github.com/wschat/wschat/services/user/internal/wstest"
)

// Presence events wait for the member's next frame, and go before it: a
// storm of joins costs each member one write, not one per joiner.
func TestPresenceGoesWithTheNextFrame(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, srv := startHubWith(t, func(c *stackConfig) { c.LazyDelay, c.connConfig.Metrics = time.Hour, conn.NewMetrics(reg) })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr)
	a.Send(t, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	others := map[string]*wstest.RawClient{}
	for _, nick := range []string{"b", "c"} {
		c := wstest.Dial(t, addr)
		c.Send(t, fmt.Sprintf(`{"type":"hello","nick":%q}`, nick), `{"type":"join","room":"r","id":"j"}`)
		c.Expect(t, `"joined"`)
		others[nick] = c
	}
	// Written so far: a welcome and a joined each. Held: a's presence of
	// b and c, b's presence of c (written at once, they would make 9).
	frames := func(n float64) func() bool {
		return func() bool { return wstest.CounterValue(t, reg, "wschat_user_frames_out_total") == n }
	}
	wstest.WaitUntil(t, "the welcomes and joineds, and no presence, written", frames(6))
	a.Send(t, `{"type":"chat","room":"r","message":"now","id":"c1"}`)
	var got []string
	for acked := false; len(got) < 3 || !acked; {
		f := a.Next(t)
		switch {
		case strings.Contains(f, `"presence"`) && strings.Contains(f, `"nick":"b"`):
			got = append(got, "b")
		case strings.Contains(f, `"presence"`) && strings.Contains(f, `"nick":"c"`):
			got = append(got, "c")
		case strings.Contains(f, `"now"`):
			got = append(got, "chat")
		case strings.Contains(f, `"ack"`):
			acked = true
		}
	}
	if strings.Join(got, ",") != "b,c,chat" {
		t.Fatalf("a got %v, want the presence of b and c, then the chat", got)
	}
	if f := others["b"].Expect(t, `"presence"`); !strings.Contains(f, `"nick":"c"`) {
		t.Fatalf("b got %s", f)
	}
	others["b"].Expect(t, `"now"`)
	others["c"].Expect(t, `"now"`)
	// And then the held ones with the chat: a 2 presence, chat, ack; b
	// presence, chat; c chat.
	wstest.WaitUntil(t, "every frame counted", frames(13))
}

// With no other frame, the hub writes held presence events after
// PresenceDelay.
func TestPresenceIsWrittenAfterTheDelay(t *testing.T) {
	_, srv := startHubWith(t, func(c *stackConfig) { c.LazyDelay = 20 * time.Millisecond })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr)
	a.Send(t, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	b := wstest.Dial(t, addr)
	b.Send(t, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j"}`)
	if f := a.Expect(t, `"presence"`); !strings.Contains(f, `"nick":"b"`) {
		t.Fatalf("a got %s", f)
	}
}

// A frame the server makes larger than the queue's byte limit, here a
// join's history, goes out on its own: the client is not a slow consumer
// for asking (it was disconnected, and met the same frame on every retry).
func TestFrameOverTheByteLimitGoesOutAlone(t *testing.T) {
	_, srv := startHubWith(t, func(c *stackConfig) { c.SendQueueBytes = 1024 })
	a := wstest.Dial(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	for i := range 20 {
		a.Send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"message %02d of twenty, long enough to count","id":"c%d"}`, i, i))
		a.Expect(t, fmt.Sprintf(`"message %02d`, i))
	}
	b := wstest.Dial(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j"}`)
	for {
		op, f := b.Frame(t)
		if op == 8 {
			t.Fatalf("closed instead of joined: %q", f)
		}
		if strings.Contains(f, `"joined"`) {
			if len(f) <= 1024 || strings.Count(f, "of twenty") != 20 {
				t.Fatalf("joined of %d bytes with %d messages, want all 20 in more than 1024 bytes", len(f), strings.Count(f, "of twenty"))
			}
			return
		}
	}
}

// failingFetches is a bus whose history fetches fail, as when the relay
// link drops or the relayer is too busy to answer.
type failingFetches struct {
	bus.Bus
	h *Hub
}

func (f failingFetches) Fetch(req uint64, _ string, _, _ uint64, _ int) {
	go f.h.Fetched(req, nil, 0, errors.New("relayer refused the fetch (unavailable): busy"))
}

// A recovery whose fetch fails loses nothing known: the join is answered
// unavailable and undone (the client joins again), not recovered:false.
func TestRecoveryWhoseFetchFailsIsUnavailable(t *testing.T) {
	_, srv := startHubOn(t, func(c *stackConfig) { c.HistorySize = 10 }, func(h *Hub, b bus.Bus) bus.Bus { return failingFetches{b, h} })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	for i := range 30 {
		a.Send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"m%d","id":"c%d"}`, i, i))
	}
	a.Expect(t, `"m29"`)
	// Seq 5 is older than the 10 cached: its recovery needs a fetch.
	b := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j","since":5}`)
	f := b.Expect(t, `"j"`)
	if !strings.Contains(f, `"error"`) || !strings.Contains(f, `"unavailable"`) {
		t.Fatalf("recovery with a failed fetch: %s", f)
	}
	// Undone: joining again is not "already joined".
	b.Send(t, `{"type":"join","room":"r","id":"j2"}`)
	if f := b.Expect(t, `"j2"`); !strings.Contains(f, `"joined"`) {
		t.Fatalf("join after the failed recovery: %s", f)
	}
}

// From the link's loss until the resync answers a room, the instance may
// be behind what clients saw elsewhere: a join with a since beyond its
// last seq is unavailable then, and answered once the room is resynced.
func TestJoinSinceWhileBehindIsUnavailable(t *testing.T) {
	h, srv := startHub(t, 0)
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	for i := range 3 {
		a.Send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"m%d","id":"c%d"}`, i, i))
	}
	a.Expect(t, `"m2"`)
	h.LinkState(false) // what the relay bus reports when its link drops
	b := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j1","since":5}`)
	if f := b.Expect(t, `"j1"`); !strings.Contains(f, `"unavailable"`) {
		t.Fatalf("join with since 5 while behind at seq 3: %s", f)
	}
	// The resync's answer: the room is at 3 after all.
	h.Subscribed(bus.Subscription{Room: "r", Seq: 3, First: 1})
	b.Send(t, `{"type":"join","room":"r","id":"j2","since":5}`)
	if f := b.Expect(t, `"j2"`); !strings.Contains(f, `"joined"`) || !strings.Contains(f, `"seq":3`) {
		t.Fatalf("join with since 5 once resynced at seq 3: %s", f)
	}
}

// A recovery's history is bounded by half the send queue's bytes: past it
// the oldest messages go and recovered is false (the client pages back).
func TestRecoveryIsBoundedInBytes(t *testing.T) {
	_, srv := startHubWith(t, func(c *stackConfig) { c.HistorySize, c.SendQueueBytes = 50, 8192 })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.Expect(t, `"joined"`)
	text := strings.Repeat("y", 300)
	for i := range 30 {
		a.Send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"%s %02d","id":"c%d"}`, text, i, i))
		a.Expect(t, fmt.Sprintf(`"c%d"`, i))
	}
	b := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j","since":1}`)
	f := b.Expect(t, `"joined"`)
	n := strings.Count(f, text)
	if !strings.Contains(f, `"recovered":false`) || n == 0 || n >= 29 || len(f) > 8192 || !strings.Contains(f, text+` 29`) {
		t.Fatalf("recovery of 29 messages of 300 bytes with 4 KB to spare: %d messages, %d bytes: %.200s", n, len(f), f)
	}
	// Within the budget, a recovery is whole.
	c := wstest.Dial(t, addr, `{"type":"hello","nick":"c"}`, `{"type":"join","room":"r","id":"j","since":27}`)
	if f := c.Expect(t, `"joined"`); !strings.Contains(f, `"recovered":true`) || strings.Count(f, text) != 3 {
		t.Fatalf("recovery of 3 messages: %.300s", f)
	}
}
