package system

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
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

// rawWS speaks WebSocket over a plain socket, so that a test can send
// what no WebSocket library would: half a frame.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRawWS upgrades a connection to addr; header adds request headers.
// It returns nil and the response when the upgrade is refused.
func dialRawWS(t *testing.T, addr string, header map[string]string) (*rawWS, *http.Response) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	for k, v := range header {
		req += k + ": " + v + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, resp
	}
	return &rawWS{conn: conn, br: br}, resp
}

// clientFrame is a masked client frame (mask key zero) of opcode op, FIN
// set.
func clientFrame(op byte, payload string) []byte {
	b := []byte{0x80 | op}
	if len(payload) < 126 {
		b = append(b, 0x80|byte(len(payload)))
	} else {
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(len(payload)))
	}
	return append(append(b, 0, 0, 0, 0), payload...)
}

func (c *rawWS) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// frame returns the next server frame's opcode and payload, or an error
// when none comes within d.
func (c *rawWS) frame(d time.Duration) (byte, []byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(d))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7f)
	if n == 126 {
		var l [2]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, p, nil
}

// A client that sends half a frame and stalls is closed with 1008 once
// FRAME_READ_TIMEOUT has passed since the frame began, and its socket
// released; a connection idle between messages (after a control frame,
// too) stays open however long it waits.
func TestHalfFrameIsClosedWithinTheTimeout(t *testing.T) {
	const timeout = time.Second
	u := startUser(t, "solo", nil, map[string]string{"FRAME_READ_TIMEOUT": timeout.String()})
	idle, _ := dialRawWS(t, u.Addr, nil)
	idle.write(t, clientFrame(0x9, "still there?")) // a WebSocket ping
	if op, p, err := idle.frame(10 * time.Second); err != nil || op != 0xA || string(p) != "still there?" {
		t.Fatalf("pong: opcode %x %q %v", op, p, err)
	}

	stalled, _ := dialRawWS(t, u.Addr, nil)
	start := time.Now()
	f := clientFrame(0x1, `{"type":"hello","nick":"half"}`)
	stalled.write(t, f[:len(f)/2])
	op, p, err := stalled.frame(timeout + 10*time.Second)
	took := time.Since(start)
	if err != nil || op != 0x8 || len(p) < 2 {
		t.Fatalf("stalled client after %s: opcode %x %q %v, want a close frame", took, op, p, err)
	}
	if code := websocket.StatusCode(binary.BigEndian.Uint16(p)); code != websocket.StatusPolicyViolation ||
		!strings.Contains(string(p[2:]), "frame read timeout") {
		t.Fatalf("stalled client closed with %d %q", code, p[2:])
	}
	if took < timeout {
		t.Fatalf("closed after %s, before FRAME_READ_TIMEOUT (%s)", took, timeout)
	}
	// The server does not wait for this peer's close frame: the socket
	// ends at once.
	if _, _, err := stalled.frame(3 * time.Second); err != io.EOF {
		t.Fatalf("after the close frame: %v, want the end of the connection", err)
	}
	if n := metric(u.Addr, "wschat_user_frame_timeouts_total"); n != 1 {
		t.Fatalf("frame timeouts = %v, want 1", n)
	}
	// The idle connection waited longer than the timeout, between
	// messages: it is still served.
	idle.write(t, clientFrame(0x1, `{"type":"hello","nick":"idle"}`))
	if op, p, err := idle.frame(10 * time.Second); err != nil || op != 0x1 || !strings.Contains(string(p), `"welcome"`) {
		t.Fatalf("idle client: opcode %x %q %v", op, p, err)
	}
	t.Logf("stalled client closed after %s", took)
}

// One address holds at most MAX_CONNS_PER_ADDR connections: the next
// upgrade is refused with 429, the others go on, and a closed one frees
// its place. Behind a trusted proxy (loopback is, by default) the address
// is the one it names in X-Real-IP; an untrusted peer's header is ignored.
func TestConnectionsPerAddress(t *testing.T) {
	u := startUser(t, "solo", nil, map[string]string{"MAX_CONNS_PER_ADDR": "3"})
	var held []*rawWS
	for range 3 {
		c, resp := dialRawWS(t, u.Addr, nil)
		if c == nil {
			t.Fatalf("connection %d refused: %s", len(held)+1, resp.Status)
		}
		held = append(held, c)
	}
	refused := func(addr string, header map[string]string) {
		t.Helper()
		c, resp := dialRawWS(t, addr, header)
		if c != nil {
			t.Fatalf("connection past MAX_CONNS_PER_ADDR accepted (header %v)", header)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "MAX_CONNS_PER_ADDR") {
			t.Fatalf("refusal: %s %q", resp.Status, body)
		}
	}
	refused(u.Addr, nil)
	if n := metric(u.Addr, "wschat_user_connections_refused_per_addr_total"); n != 1 {
		t.Fatalf("refused per address = %v, want 1", n)
	}
	// The connections held are fine.
	for i, c := range held {
		c.write(t, clientFrame(0x1, fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i)))
		if op, p, err := c.frame(10 * time.Second); err != nil || op != 0x1 || !strings.Contains(string(p), `"welcome"`) {
			t.Fatalf("connection %d: opcode %x %q %v", i, op, p, err)
		}
	}
	// Another client behind the same (trusted) proxy counts apart.
	if c, resp := dialRawWS(t, u.Addr, map[string]string{"X-Real-IP": "203.0.113.7"}); c == nil {
		t.Fatalf("a client named by a trusted proxy was refused: %s", resp.Status)
	}
	// A closed connection frees its place (once the instance has seen it go).
	held[0].conn.Close()
	waitFor(t, 10*time.Second, "the closed connection to be released", func() bool {
		return metric(u.Addr, "wschat_user_connections") == 3
	})
	if c, resp := dialRawWS(t, u.Addr, nil); c == nil {
		t.Fatalf("a connection after one closed was refused: %s", resp.Status)
	}

	// With no trusted proxy, the peer's own address counts, whatever it
	// claims.
	strict := startUser(t, "strict", nil, map[string]string{"MAX_CONNS_PER_ADDR": "1", "TRUSTED_PROXIES": "none"})
	if c, resp := dialRawWS(t, strict.Addr, map[string]string{"X-Real-IP": "203.0.113.8"}); c == nil {
		t.Fatalf("first connection refused: %s", resp.Status)
	}
	refused(strict.Addr, map[string]string{"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "203.0.113.9"})
}
