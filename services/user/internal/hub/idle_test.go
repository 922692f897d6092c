package hub

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// startHub serves a hub with a standalone bus on a loopback test server;
// linger is its Config.WriterLinger and ReaderLinger (0: the defaults).
func startHub(t *testing.T, linger time.Duration) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubWith(t, func(c *Config) { c.WriterLinger, c.ReaderLinger = linger, linger })
}

// startHubWith is startHub with the test's own settings.
func startHubWith(t *testing.T, set func(*Config)) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubOn(t, set, nil)
}

// startHubOn is startHubWith with the standalone bus seen through wrap
// (nil: as it is).
func startHubOn(t *testing.T, set func(*Config), wrap func(*Hub, bus.Bus) bus.Bus) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubBus(t, set, func(h *Hub) bus.Bus {
		b := bus.NewLocal(h, 100)
		if wrap != nil {
			return wrap(h, b)
		}
		return b
	})
}

// startHubBus is startHubWith on the bus mk makes for the hub.
func startHubBus(t *testing.T, set func(*Config), mk func(*Hub) bus.Bus) (*Hub, *httptest.Server) {
	t.Helper()
	cfg := Config{
		Instance: "test", HistorySize: 50, HistoryLimit: 100, MaxRooms: 8, SendQueue: 64, SendQueueBytes: 1 << 20,
		RatePerSec: 1000, RateBurst: 1000, MaxFrame: 16384,
		Rules:  protocol.Rules{MaxRoomBytes: 64, MaxNickBytes: 32, MaxMessageBytes: 4096},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(prometheus.NewRegistry()),
	}
	set(&cfg)
	h := New(cfg)
	b := mk(h)
	h.SetBus(b)
	ctx, cancel := context.WithCancel(context.Background())
	busDone := make(chan struct{})
	go func() {
		defer close(busDone)
		_ = b.Run(ctx)
	}()
	hubDone := make(chan struct{})
	go func() {
		defer close(hubDone)
		h.Run(ctx)
	}()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.Accept(w, r, nil) }))
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		h.Shutdown(sctx)
		srv.Close()
		cancel()
		<-busDone
		<-hubDone
	})
	return h, srv
}

// rawClient speaks just enough WebSocket over a plain socket to hold a
// connection without a goroutine of its own, so that the test process's
// stacks are the server's.
type rawClient struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRaw opens a WebSocket connection; early is sent with the handshake,
// in the same write.
func dialRaw(t *testing.T, addr string, early ...string) *rawClient {
	t.Helper()
	c, err := dialRawConn(addr, early...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// dialRawConn is dialRaw leaving the connection's closing to the caller.
func dialRawConn(addr string, early ...string) (*rawClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &rawClient{conn: conn, br: bufio.NewReader(conn)}
	hs := "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := conn.Write(append([]byte(hs), frame(early...)...)); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("upgrade: %v %v", resp, err)
	}
	return c, nil
}

// frame encodes texts as masked client text frames (mask key zero).
func frame(texts ...string) []byte {
	var b []byte
	for _, s := range texts {
		if len(s) < 126 {
			b = append(b, 0x81, 0x80|byte(len(s)))
		} else {
			b = append(b, 0x81, 0x80|126, byte(len(s)>>8), byte(len(s)))
		}
		b = append(b, 0, 0, 0, 0)
		b = append(b, s...)
	}
	return b
}

func (c *rawClient) send(t *testing.T, texts ...string) {
	t.Helper()
	if _, err := c.conn.Write(frame(texts...)); err != nil {
		t.Fatal(err)
	}
}

// next returns the payload of the next server frame.
func (c *rawClient) next(t *testing.T) string {
	t.Helper()
	_, p := c.frame(t)
	return p
}

// frame returns the opcode and payload of the next server frame.
func (c *rawClient) frame(t *testing.T) (byte, string) {
	t.Helper()
	op, p, err := c.read()
	if err != nil {
		t.Fatal(err)
	}
	return op, p
}

// read returns the opcode and payload of the next server frame; unlike
// frame, it may be called from any goroutine.
func (c *rawClient) read() (byte, string, error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, "", err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, "", err
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, "", err
		}
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, "", err
	}
	return h[0] & 0x0f, string(p), nil
}

// expect skips frames until one contains want.
func (c *rawClient) expect(t *testing.T, want string) string {
	t.Helper()
	for {
		if f := c.next(t); strings.Contains(f, want) {
			return f
		}
	}
}

// Frames that arrive together are all answered: the reader's wait for the
// socket must not miss what the previous read already buffered.
func TestFramesArrivingTogetherAreAllAnswered(t *testing.T) {
	_, srv := startHub(t, 0)
	c := dialRaw(t, srv.Listener.Addr().String())
	c.send(t, `{"type":"hello","nick":"batch"}`, `{"type":"join","room":"r","id":"j"}`,
		`{"type":"ping","id":"p1"}`, `{"type":"ping","id":"p2"}`)
	// The join is answered once the bus has subscribed the room, so the
	// pongs may come first.
	want := map[string]bool{`"welcome"`: true, `"joined"`: true, `"p1"`: true, `"p2"`: true}
	for len(want) > 0 {
		f := c.next(t)
		for w := range want {
			if strings.Contains(f, w) {
				delete(want, w)
			}
		}
	}
	// And an idle connection still wakes for the next frame.
	c.send(t, `{"type":"chat","room":"r","message":"late","id":"c1"}`)
	c.expect(t, `"late"`)
}

// A connection's reader waits for its socket at the top of its loop, not
// inside coder/websocket's Read: the GC can then shrink its stack. Joins are
// answered on a short-lived goroutine, so encoding their answers does not
// grow it first. (Idle for longer than ReaderLinger, it parks, below.)
func TestIdleReadersWaitShallow(t *testing.T) {
	_, srv := startHub(t, time.Hour)
	const n = 50
	clients := make([]*rawClient, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range clients {
		hello := fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i)
		var c *rawClient
		if i%2 == 0 {
			c = dialRaw(t, srv.Listener.Addr().String())
			c.send(t, hello)
		} else {
			// Sent with the handshake, the hello reaches the server before
			// the connection is a WebSocket connection.
			c = dialRaw(t, srv.Listener.Addr().String(), hello)
		}
		c.expect(t, `"welcome"`)
		c.send(t, fmt.Sprintf(`{"type":"join","room":"room-%d","id":"j"}`, i%10))
		c.expect(t, `"joined"`)
		clients[i] = c
	}
	// Two cycles: the GC halves an oversized stack at most once per cycle.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d bytes of goroutine stack per idle connection", (after.StackInuse-before.StackInuse)/n)

	waitUntil(t, fmt.Sprintf("the %d readers to wait", n), func() bool {
		return goroutinesIn("cork.(*Conn).WaitReadable(") == n
	})
	// They are alive: they wake for the next frame.
	clients[0].send(t, `{"type":"chat","room":"room-0","message":"still here","id":"c"}`)
	if f := clients[10].expect(t, `"still here"`); !strings.Contains(f, `"room-0"`) {
		t.Fatalf("member of room-0 got %s", f)
	}
}

// waitUntil polls cond until it holds or ten seconds pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Logf("%s", stacks())
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutinesIn counts the goroutines whose stack holds fn.
func goroutinesIn(fn string) int { return strings.Count(stacks(), fn) }

// stacks returns every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<22)
	return string(buf[:runtime.Stack(buf, true)])
}

// A writer exits when it has had nothing to write for a while, the next
// frame starts another, and a client without a writer is still closed
// properly.
func TestIdleWritersExitAndReturn(t *testing.T) {
	h, srv := startHub(t, 20*time.Millisecond)
	a, b := dialRaw(t, srv.Listener.Addr().String()), dialRaw(t, srv.Listener.Addr().String())
	for _, c := range []*rawClient{a, b} {
		c.send(t, `{"type":"hello","nick":"n"}`, `{"type":"join","room":"r","id":"j"}`)
		c.expect(t, `"joined"`)
	}
	const writer = "hub.(*Client).writeLoop("
	waitUntil(t, "the writers to exit", func() bool { return goroutinesIn(writer) == 0 })
	a.send(t, `{"type":"chat","room":"r","message":"wake up","id":"c1"}`)
	b.expect(t, `"wake up"`)
	a.expect(t, `"ack"`)
	waitUntil(t, "the writers to exit again", func() bool { return goroutinesIn(writer) == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go h.Shutdown(ctx)
	b.expectClose(t, 1012)
}

// expectClose reads until a close frame, which must carry code.
func (c *rawClient) expectClose(t *testing.T, code uint16) {
	t.Helper()
	for {
		op, p := c.frame(t)
		if op != 0x8 {
			continue
		}
		if got := binary.BigEndian.Uint16([]byte(p)); got != code {
			t.Fatalf("closed with %d %q, want %d", got, p[2:], code)
		}
		return
	}
}

// After ReaderLinger with nothing to read, a connection has no goroutine at
// all: its socket is parked (package park). The next frame resumes it, and
// a parked connection closed by the server (shutdown) is cleaned up.
func TestIdleReadersPark(t *testing.T) {
	h, srv := startHub(t, 20*time.Millisecond)
	if h.poller == nil {
		t.Skip("no poller on this platform")
	}
	const n = 20
	clients := make([]*rawClient, n)
	for i := range clients {
		clients[i] = dialRaw(t, srv.Listener.Addr().String())
		clients[i].send(t, fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i), `{"type":"join","room":"r","id":"j"}`)
		clients[i].expect(t, `"joined"`)
	}
	const reader, writer = "hub.(*Client).serve(", "hub.(*Client).writeLoop("
	idle := func() bool {
		return h.poller.Parked() == n && goroutinesIn(reader) == 0 && goroutinesIn(writer) == 0
	}
	waitUntil(t, "every connection to park, with no goroutine", idle)

	// A frame resumes its reader; the members' writers deliver it.
	clients[0].send(t, `{"type":"chat","room":"r","message":"wake up","id":"c1"}`)
	for _, c := range clients[1:] {
		c.expect(t, `"wake up"`)
	}
	clients[0].expect(t, `"ack"`)
	waitUntil(t, "every connection to park again", idle)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		h.Shutdown(ctx)
		close(done)
	}()
	for _, c := range clients {
		c.expectClose(t, 1012)
	}
	// Clients that answer nothing: the close handshake times out, the
	// connections close, and their parked readers clean up.
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("shutdown did not finish: parked readers were not woken")
	}
	h.mu.Lock()
	left := len(h.clients)
	h.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d clients left after shutdown", left)
	}
}

// Presence events wait for the member's next frame, and go before it: a
// storm of joins costs each member one write, not one per joiner.
func TestPresenceGoesWithTheNextFrame(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, srv := startHubWith(t, func(c *Config) { c.PresenceDelay, c.Metrics = time.Hour, NewMetrics(reg) })
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr)
	a.send(t, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	others := map[string]*rawClient{}
	for _, nick := range []string{"b", "c"} {
		c := dialRaw(t, addr)
		c.send(t, fmt.Sprintf(`{"type":"hello","nick":%q}`, nick), `{"type":"join","room":"r","id":"j"}`)
		c.expect(t, `"joined"`)
		others[nick] = c
	}
	// Written so far: a welcome and a joined each. Held: a's presence of
	// b and c, b's presence of c (written at once, they would make 9).
	frames := func(n float64) func() bool {
		return func() bool { return counterValue(t, reg, "wschat_user_frames_out_total") == n }
	}
	waitUntil(t, "the welcomes and joineds, and no presence, written", frames(6))
	a.send(t, `{"type":"chat","room":"r","message":"now","id":"c1"}`)
	var got []string
	for acked := false; len(got) < 3 || !acked; {
		f := a.next(t)
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
	if f := others["b"].expect(t, `"presence"`); !strings.Contains(f, `"nick":"c"`) {
		t.Fatalf("b got %s", f)
	}
	others["b"].expect(t, `"now"`)
	others["c"].expect(t, `"now"`)
	// And then the held ones with the chat: a 2 presence, chat, ack; b
	// presence, chat; c chat.
	waitUntil(t, "every frame counted", frames(13))
}

// counterValue reads a counter from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// With no other frame, the hub writes held presence events after
// PresenceDelay.
func TestPresenceIsWrittenAfterTheDelay(t *testing.T) {
	_, srv := startHubWith(t, func(c *Config) { c.PresenceDelay = 20 * time.Millisecond })
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr)
	a.send(t, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	b := dialRaw(t, addr)
	b.send(t, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j"}`)
	if f := a.expect(t, `"presence"`); !strings.Contains(f, `"nick":"b"`) {
		t.Fatalf("a got %s", f)
	}
}

// A lazy push neither wakes nor starts the writer; kick does.
func TestQueueLazyPushAndKick(t *testing.T) {
	q := queue{limit: 8, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
	if ok, start := q.push([]byte("p"), true, false); !ok || start {
		t.Fatalf("lazy push: ok %v, start %v; want queued, no writer", ok, start)
	}
	select {
	case <-q.wake:
		t.Fatal("a lazy push woke the writer")
	default:
	}
	if !q.kick() {
		t.Fatal("kick did not start the writer")
	}
	if q.kick() {
		t.Fatal("a second kick started a second writer")
	}
	if got := q.take(nil); len(got) != 1 {
		t.Fatalf("took %d frames, want 1", len(got))
	}
	if q.kick() {
		t.Fatal("kick with nothing queued")
	}
}

// Held frames count toward the queue's limits: past half of them a lazy
// push wakes the writer, so a burst of presence cannot overflow the queue
// of a connection that reads.
func TestQueueLazyPushPastHalfStartsTheWriter(t *testing.T) {
	q := queue{limit: 8, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
	for i := range 3 {
		if _, start := q.push([]byte("p"), true, false); start {
			t.Fatalf("lazy push %d started the writer", i)
		}
	}
	if ok, start := q.push([]byte("p"), true, false); !ok || !start {
		t.Fatalf("fourth lazy push of 8: ok %v, start %v; want the writer started", ok, start)
	}
	q = queue{limit: 100, limitBytes: 100, wake: make(chan struct{}, 1)}
	if _, start := q.push(make([]byte, 40), true, false); start {
		t.Fatal("a lazy push under half the bytes started the writer")
	}
	if _, start := q.push(make([]byte, 20), true, false); !start {
		t.Fatal("a lazy push past half the bytes did not start the writer")
	}
}

// A frame the server makes larger than the queue's byte limit, here a
// join's history, goes out on its own: the client is not a slow consumer
// for asking (it was disconnected, and met the same frame on every retry).
func TestFrameOverTheByteLimitGoesOutAlone(t *testing.T) {
	_, srv := startHubWith(t, func(c *Config) { c.SendQueueBytes = 1024 })
	a := dialRaw(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	for i := range 20 {
		a.send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"message %02d of twenty, long enough to count","id":"c%d"}`, i, i))
		a.expect(t, fmt.Sprintf(`"message %02d`, i))
	}
	b := dialRaw(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j"}`)
	for {
		op, f := b.frame(t)
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

// A frame over the byte limit counts as half of it: it is taken, and the
// room's frames around it queue as usual, up to the limit.
func TestQueueByteLimit(t *testing.T) {
	q := queue{limit: 8, limitBytes: 100, wake: make(chan struct{}, 1)}
	if ok, _ := q.push(make([]byte, 10), false, true); !ok {
		t.Fatal("an empty queue refused a small frame")
	}
	if ok, _ := q.push(make([]byte, 150), false, true); !ok {
		t.Fatal("a frame over the byte limit was refused behind 10 bytes")
	}
	if ok, _ := q.push(make([]byte, 30), false, true); !ok {
		t.Fatal("a frame behind the large one was refused with 60 of 100 bytes counted")
	}
	if ok, _ := q.push(make([]byte, 20), false, true); ok {
		t.Fatal("a queue took 110 bytes with a limit of 100")
	}
	q.take(nil)
	for range 2 {
		if ok, _ := q.push(make([]byte, 40), false, true); !ok {
			t.Fatal("a drained queue refused a frame")
		}
	}
	if ok, _ := q.push(make([]byte, 30), false, true); ok {
		t.Fatal("a queue took 110 bytes with a limit of 100")
	}
}

// Shutdown keeps to its deadline when a peer never answers the close
// handshake (it neither reads nor closes).
func TestShutdownKeepsItsDeadline(t *testing.T) {
	h, srv := startHub(t, 0)
	c := dialRaw(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"mute"}`)
	c.expect(t, `"welcome"`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	h.Shutdown(ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown with a 300ms budget took %v", d)
	}
}

// Past MaxConns an upgrade is refused with 503, and a slot freed is taken
// again.
func TestMaxConns(t *testing.T) {
	h, srv := startHubWith(t, func(c *Config) { c.MaxConns = 2 })
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr, `{"type":"hello","nick":"a"}`)
	a.expect(t, `"welcome"`)
	b := dialRaw(t, addr, `{"type":"hello","nick":"b"}`)
	b.expect(t, `"welcome"`)
	upgrade := func() int {
		t.Helper()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	if code := upgrade(); code != http.StatusServiceUnavailable {
		t.Fatalf("third connection: %d, want 503", code)
	}
	if got := testutil.ToFloat64(h.m.Refused); got != 1 {
		t.Fatalf("connections_refused_total %v", got)
	}
	a.conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for upgrade() != http.StatusSwitchingProtocols {
		if time.Now().After(deadline) {
			t.Fatal("a freed slot was not taken again")
		}
		runtime.Gosched()
	}
}

// startFloodHub serves a hub whose queues and rate limits let a sender
// flood room r with bigChat; the sweep runs every 20 ms.
func startFloodHub(t *testing.T, writeTimeout time.Duration) (*Hub, string) {
	t.Helper()
	h, srv := startHubWith(t, func(c *Config) {
		c.WriterLinger, c.WriteTimeout = 20*time.Millisecond, writeTimeout
		c.SendQueue, c.SendQueueBytes = 1<<20, 1<<30
		c.RatePerSec, c.RateBurst = 1e6, 1e6
	})
	return h, srv.Listener.Addr().String()
}

// bigChat is a seed chat frame of 4 KB to room r.
var bigChat = fmt.Sprintf(`{"type":"chat","room":"r","message":"%s"}`, strings.Repeat("x", 4000))

// A client that stops reading while frames keep coming is closed once a
// write to it made no progress for WriteTimeout, its queue not yet full.
func TestWriteTimeout(t *testing.T) {
	h, addr := startFloodHub(t, 200*time.Millisecond)
	mute := dialRaw(t, addr, `{"type":"hello","nick":"mute"}`, `{"type":"join","room":"r","id":"j"}`)
	mute.expect(t, `"joined"`) // and never reads again
	sender := dialRaw(t, addr) // seed: sends to r without joining it
	deadline := time.Now().Add(30 * time.Second)
	for testutil.ToFloat64(h.m.WriteTimeouts) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no write timeout after 30s of frames to a client that does not read")
		}
		sender.send(t, bigChat, bigChat, bigChat, bigChat)
	}
	if got := testutil.ToFloat64(h.m.SlowConsumers); got != 0 {
		t.Fatalf("the queue overflowed first (%v): the test does not show the timeout", got)
	}
}

// A client that reads slowly but steadily is not taken for one that
// stopped: WriteTimeout watches a large batch's bytes move, it does not
// bound how long the batch takes.
func TestWriteTimeoutSparesASlowReader(t *testing.T) {
	h, addr := startFloodHub(t, 1500*time.Millisecond)
	slow := dialRaw(t, addr, `{"type":"hello","nick":"slow"}`, `{"type":"join","room":"r","id":"j"}`)
	slow.expect(t, `"joined"`)
	sender := dialRaw(t, addr)
	const n = 2000 // 8 MB, far more than the sockets' buffers
	go func() {
		for range n / 4 {
			if _, err := sender.conn.Write(frame(bigChat, bigChat, bigChat, bigChat)); err != nil {
				return
			}
		}
	}()
	// About 2 MB/s: 100 KB every 50 ms, so one batch of several MB takes
	// seconds, past the timeout, while its bytes keep moving (the kernel
	// wakes a writer when a third of its send buffer is free: hundreds of
	// milliseconds apart here).
	pace := time.NewTicker(50 * time.Millisecond)
	defer pace.Stop()
	got, budget := 0, 0
	for got < n {
		if budget <= 0 {
			<-pace.C
			budget = 100 << 10
		}
		op, f := slow.frame(t)
		if op == 8 {
			t.Fatalf("closed after %d of %d messages: %q", got, n, f)
		}
		budget -= len(f)
		if strings.Contains(f, `"chat"`) {
			got++
		}
	}
	if got := testutil.ToFloat64(h.m.WriteTimeouts); got != 0 {
		t.Fatalf("write_timeouts_total %v", got)
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
	_, srv := startHubOn(t, func(c *Config) { c.HistorySize = 10 }, func(h *Hub, b bus.Bus) bus.Bus { return failingFetches{b, h} })
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	for i := range 30 {
		a.send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"m%d","id":"c%d"}`, i, i))
	}
	a.expect(t, `"m29"`)
	// Seq 5 is older than the 10 cached: its recovery needs a fetch.
	b := dialRaw(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j","since":5}`)
	f := b.expect(t, `"j"`)
	if !strings.Contains(f, `"error"`) || !strings.Contains(f, `"unavailable"`) {
		t.Fatalf("recovery with a failed fetch: %s", f)
	}
	// Undone: joining again is not "already joined".
	b.send(t, `{"type":"join","room":"r","id":"j2"}`)
	if f := b.expect(t, `"j2"`); !strings.Contains(f, `"joined"`) {
		t.Fatalf("join after the failed recovery: %s", f)
	}
}

// From the link's loss until the resync answers a room, the instance may
// be behind what clients saw elsewhere: a join with a since beyond its
// last seq is unavailable then, and answered once the room is resynced.
func TestJoinSinceWhileBehindIsUnavailable(t *testing.T) {
	h, srv := startHub(t, 0)
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	for i := range 3 {
		a.send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"m%d","id":"c%d"}`, i, i))
	}
	a.expect(t, `"m2"`)
	h.LinkState(false) // what the relay bus reports when its link drops
	b := dialRaw(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j1","since":5}`)
	if f := b.expect(t, `"j1"`); !strings.Contains(f, `"unavailable"`) {
		t.Fatalf("join with since 5 while behind at seq 3: %s", f)
	}
	// The resync's answer: the room is at 3 after all.
	h.Subscribed(bus.Subscription{Room: "r", Seq: 3, First: 1})
	b.send(t, `{"type":"join","room":"r","id":"j2","since":5}`)
	if f := b.expect(t, `"j2"`); !strings.Contains(f, `"joined"`) || !strings.Contains(f, `"seq":3`) {
		t.Fatalf("join with since 5 once resynced at seq 3: %s", f)
	}
}

// A recovery's history is bounded by half the send queue's bytes: past it
// the oldest messages go and recovered is false (the client pages back).
func TestRecoveryIsBoundedInBytes(t *testing.T) {
	_, srv := startHubWith(t, func(c *Config) { c.HistorySize, c.SendQueueBytes = 50, 8192 })
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j"}`)
	a.expect(t, `"joined"`)
	text := strings.Repeat("y", 300)
	for i := range 30 {
		a.send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"%s %02d","id":"c%d"}`, text, i, i))
		a.expect(t, fmt.Sprintf(`"c%d"`, i))
	}
	b := dialRaw(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j","since":1}`)
	f := b.expect(t, `"joined"`)
	n := strings.Count(f, text)
	if !strings.Contains(f, `"recovered":false`) || n == 0 || n >= 29 || len(f) > 8192 || !strings.Contains(f, text+` 29`) {
		t.Fatalf("recovery of 29 messages of 300 bytes with 4 KB to spare: %d messages, %d bytes: %.200s", n, len(f), f)
	}
	// Within the budget, a recovery is whole.
	c := dialRaw(t, addr, `{"type":"hello","nick":"c"}`, `{"type":"join","room":"r","id":"j","since":27}`)
	if f := c.expect(t, `"joined"`); !strings.Contains(f, `"recovered":true`) || strings.Count(f, text) != 3 {
		t.Fatalf("recovery of 3 messages: %.300s", f)
	}
}
