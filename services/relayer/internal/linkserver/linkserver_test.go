package linkserver

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
)

func TestLinkAuth(t *testing.T) {
	h := start(t, nil)
	cases := []struct {
		name, auth, inst string
		status           int
		body             string
	}{
		{"no secret", "", "i1", http.StatusUnauthorized, "RELAY_SECRET"},
		{"wrong secret", "Bearer wrong-secret", "i1", http.StatusUnauthorized, "RELAY_SECRET"},
		{"secret without Bearer", testSecret, "i1", http.StatusUnauthorized, "Bearer"},
		{"no instance", "Bearer " + testSecret, "", http.StatusBadRequest, link.HeaderInstance},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, h.srv.URL+link.Path, nil)
			// A genuine upgrade request: refusal must happen before it.
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.inst != "" {
				req.Header.Set(link.HeaderInstance, tc.inst)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.body) {
				t.Fatalf("got %d %q, want %d mentioning %q", resp.StatusCode, body, tc.status, tc.body)
			}
		})
	}
	// And through a real WebSocket client.
	_, resp, err := websocket.Dial(context.Background(), h.url(), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dial without secret: %v, %v", resp, err)
	}
}

func TestFirstFrameMustBeSync(t *testing.T) {
	h := start(t, nil)
	c := h.dial("i1")
	c.Pub("m1", "r", "hello")
	if got := c.closed(); got != websocket.StatusPolicyViolation {
		t.Fatalf("close status %v, want policy violation", got)
	}
	// Nothing of it was sequenced.
	c2 := h.dial("i2")
	if sub := c2.Sync(link.RoomState{Room: "r", Tail: 10})[0]; sub.Seq != 0 || len(sub.Msgs) != 0 {
		t.Fatalf("subscribed after a refused pub: %+v", sub)
	}
}

// A link whose peer stops reading is closed once its unsent output passes
// the limit; one large answer alone does not condemn a link that reads.
func TestSlowLinkIsClosed(t *testing.T) {
	h := start(t, func(c *config) { c.seq.QueueBytes = 64 << 10 })
	fast := h.dial("fast")
	fast.Sync(link.RoomState{Room: "r"})
	p := h.dial("p")
	p.Sync()
	// One batch far over the limit: delivered, the link stays.
	var frames []*link.Frame
	for i := range 400 {
		frames = append(frames, linktest.PubFrame(fmt.Sprint(i), "r", strings.Repeat("y", 200)))
	}
	p.Send(frames...)
	for range 400 {
		p.Expect(link.OpAck)
	}
	for n := 0; n < 400; {
		if f := fast.Expect(link.OpMsg); f.Msg != nil {
			n++
		}
	}

	// A peer that stops reading: once the socket buffers are full, output
	// piles up in the relayer and the link is closed.
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+testSecret)
	hdr.Set(link.HeaderInstance, "slow")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	slow, _, err := websocket.Dial(ctx, h.url(), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	sync, _ := link.Append(nil, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "r"}}})
	if err := slow.Write(ctx, websocket.MessageText, sync); err != nil {
		t.Fatal(err)
	}
	dropped := func() bool { return testutil.ToFloat64(h.ls.m.drops.WithLabelValues(string(sequencer.DropSlow))) == 1 }
	big := strings.Repeat("z", 4000)
	for batch := 0; batch < 2000 && !dropped(); batch++ { // at most ~80 MB
		frames = frames[:0]
		for i := range 20 {
			frames = append(frames, linktest.PubFrame(fmt.Sprint("b", batch, "-", i), "r", big))
		}
		p.Send(frames...)
		for range 20 {
			p.Expect(link.OpAck) // the publisher is not held back by the slow link
		}
		for range 20 {
			fast.Expect(link.OpMsg)
		}
	}
	if !dropped() {
		t.Fatal("the link that stopped reading was never closed")
	}
}

func TestUnresponsiveLinkFailsKeepalive(t *testing.T) {
	h := start(t, func(c *config) { c.PingInterval = 50 * time.Millisecond; c.seq.PresenceGrace = 0 })
	b := h.dial("B")
	b.Sync(link.RoomState{Room: "r"})

	// A raw client that never reads, so it never answers a ping.
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+testSecret)
	hdr.Set(link.HeaderInstance, "A")
	ws, _, err := websocket.Dial(context.Background(), h.url(), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	sync, _ := link.Append(nil, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "r", Members: []protocol.Member{{ID: "a1", Nick: "ann"}}}}})
	if err := ws.Write(context.Background(), websocket.MessageText, sync); err != nil {
		t.Fatal(err)
	}
	if f := b.Expect(link.OpPresence); f.Event != protocol.PresenceJoin || f.Member.ID != "a1" {
		t.Fatalf("presence %+v, want a1's join", f)
	}
	// Dropped for the missed pong, then its members leave.
	if f := b.Expect(link.OpPresence); f.Event != protocol.PresenceLeave || f.Member.ID != "a1" {
		t.Fatalf("presence %+v, want a1's leave", f)
	}
	if got := testutil.ToFloat64(h.ls.m.drops.WithLabelValues(string(dropKeepalive))); got != 1 {
		t.Fatalf("link_drops_total{reason=keepalive} = %v", got)
	}
}

func TestOversizedLinkMessage(t *testing.T) {
	h := start(t, func(c *config) { c.MaxFrameBytes = 1024 })
	c := h.dial("A")
	c.Sync()
	c.Pub("big", "r", strings.Repeat("x", 2000))
	if got := c.closed(); got != websocket.StatusMessageTooBig {
		t.Fatalf("close status %v, want 1009", got)
	}
}

// Garbage closes only that link, and the sequencer applied none of it.
func TestBadFrameClosesOnlyThatLink(t *testing.T) {
	h := start(t, nil)
	c := h.dial("A")
	c.Sync(link.RoomState{Room: "r"})
	c.Pub("ok", "r", "fine")
	c.Expect(link.OpMsg)
	c.Expect(link.OpAck)
	c.Write([]byte("{not json\n"))
	if got := c.closed(); got != websocket.StatusPolicyViolation {
		t.Fatalf("close status %v", got)
	}
	d := h.dial("D")
	if sub := d.Sync(link.RoomState{Room: "r", Tail: 5})[0]; sub.Seq != 1 {
		t.Fatalf("relayer state after garbage: %+v", sub)
	}
	if !strings.Contains(h.logs.String(), "protocol violation") {
		t.Fatal("the protocol violation was not logged")
	}
}

// The sequencer's close codes go on the wire as they are: they are the
// WebSocket statuses of the same names.
func TestCloseCodes(t *testing.T) {
	for code, want := range map[sequencer.CloseCode]websocket.StatusCode{
		sequencer.ClosePolicyViolation: websocket.StatusPolicyViolation,
		sequencer.CloseInternalError:   websocket.StatusInternalError,
		sequencer.CloseServiceRestart:  websocket.StatusServiceRestart,
		sequencer.CloseTryAgainLater:   websocket.StatusTryAgainLater,
	} {
		if websocket.StatusCode(code) != want {
			t.Errorf("close code %d, want %v", code, want)
		}
	}
}

// A stopping relayer closes its links with 1012, after what it owes them,
// and a newer link of an instance replaces the older with 1008.
func TestLinksClosedBySequencer(t *testing.T) {
	h := start(t, nil)
	old := h.dial("A")
	old.Sync(link.RoomState{Room: "r"})
	sub := h.dial("A")
	if got := old.closed(); got != websocket.StatusPolicyViolation {
		t.Fatalf("replaced link closed with %v", got)
	}
	sub.Sync(link.RoomState{Room: "r"})
	p := h.dial("p")
	p.Sync()
	p.Send(linktest.Pubs("m", "r", 200)...)
	p.Expect(link.OpAck) // the batch is applied and on disk
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if got := sub.closed(); got != websocket.StatusServiceRestart {
		t.Fatalf("close status %v", got)
	}
	if n := sub.Received(link.OpMsg); n != 200 {
		t.Fatalf("subscriber got %d of 200 sequenced messages before the close", n)
	}
}
