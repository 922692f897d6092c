package conn

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/user/internal/wstest"
)

// Frames that arrive together are all answered: the reader's wait for the
// socket must not miss what the previous read already buffered.
func TestFramesArrivingTogetherAreAllAnswered(t *testing.T) {
	_, srv := startLinger(t, 0)
	c := wstest.Dial(t, srv.Listener.Addr().String())
	c.Send(t, `{"type":"hello","nick":"batch"}`, `{"type":"join","room":"r","id":"j"}`,
		`{"type":"ping","id":"p1"}`, `{"type":"ping","id":"p2"}`)
	want := map[string]bool{`"to":"hello"`: true, `"to":"join"`: true, `"p1"`: true, `"p2"`: true}
	for len(want) > 0 {
		f := c.Next(t)
		for w := range want {
			if strings.Contains(f, w) {
				delete(want, w)
			}
		}
	}
	// And an idle connection still wakes for the next frame.
	c.Send(t, `{"type":"chat","room":"r","message":"late","id":"c1"}`)
	c.Expect(t, `"ack"`)
}

// A connection's reader waits for its socket at the top of its loop, not
// inside coder/websocket's Read: the GC can then shrink its stack. Joins are
// answered on a short-lived goroutine, so encoding their answers does not
// grow it first. (Idle for longer than ReaderLinger, it parks, below.)
func TestIdleReadersWaitShallow(t *testing.T) {
	_, srv := startLinger(t, time.Hour)
	const n = 50
	clients := make([]*wstest.RawClient, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range clients {
		hello := fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i)
		var c *wstest.RawClient
		if i%2 == 0 {
			c = wstest.Dial(t, srv.Listener.Addr().String())
			c.Send(t, hello)
		} else {
			// Sent with the handshake, the hello reaches the server before
			// the connection is a WebSocket connection.
			c = wstest.Dial(t, srv.Listener.Addr().String(), hello)
		}
		c.Expect(t, `"to":"hello"`)
		c.Send(t, fmt.Sprintf(`{"type":"join","room":"room-%d","id":"j"}`, i%10))
		c.Expect(t, `"to":"join"`)
		clients[i] = c
	}
	// Two cycles: the GC halves an oversized stack at most once per cycle.
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d bytes of goroutine stack per idle connection", (after.StackInuse-before.StackInuse)/n)

	wstest.WaitUntil(t, fmt.Sprintf("the %d readers to wait", n), func() bool {
		return wstest.GoroutinesIn("wsconn.(*Conn).WaitReadable(") == n
	})
	// They are alive: they wake for the next frame.
	clients[0].Send(t, `{"type":"chat","room":"room-0","message":"still here","id":"c"}`)
	if f := clients[10].Expect(t, `"still here"`); !strings.Contains(f, `"room-0"`) {
		t.Fatalf("member of room-0 got %s", f)
	}
}

// A writer exits when it has had nothing to write for a while, the next
// frame starts another, and a client without a writer is still closed
// properly.
func TestIdleWritersExitAndReturn(t *testing.T) {
	s, srv := startLinger(t, 20*time.Millisecond)
	a, b := wstest.Dial(t, srv.Listener.Addr().String()), wstest.Dial(t, srv.Listener.Addr().String())
	for _, c := range []*wstest.RawClient{a, b} {
		c.Send(t, `{"type":"hello","nick":"n"}`, `{"type":"join","room":"r","id":"j"}`)
		c.Expect(t, `"to":"join"`)
	}
	const writer = "conn.(*Conn).writeLoop("
	wstest.WaitUntil(t, "the writers to exit", func() bool { return wstest.GoroutinesIn(writer) == 0 })
	a.Send(t, `{"type":"chat","room":"r","message":"wake up","id":"c1"}`)
	b.Expect(t, `"wake up"`)
	a.Expect(t, `"ack"`)
	wstest.WaitUntil(t, "the writers to exit again", func() bool { return wstest.GoroutinesIn(writer) == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go s.Shutdown(ctx)
	b.ExpectClose(t, 1012)
}

// After ReaderLinger with nothing to read, a connection has no goroutine at
// all: its socket is parked (package park). The next frame resumes it, and
// a parked connection closed by the server (shutdown) is cleaned up.
func TestIdleReadersPark(t *testing.T) {
	s, srv := startLinger(t, 20*time.Millisecond)
	if s.poller == nil {
		t.Skip("no poller on this platform")
	}
	const n = 20
	clients := make([]*wstest.RawClient, n)
	for i := range clients {
		clients[i] = wstest.Dial(t, srv.Listener.Addr().String())
		clients[i].Send(t, fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i), `{"type":"join","room":"r","id":"j"}`)
		clients[i].Expect(t, `"to":"join"`)
	}
	const reader, writer = "conn.(*Conn).serve(", "conn.(*Conn).writeLoop("
	idle := func() bool {
		return s.poller.Parked() == n && wstest.GoroutinesIn(reader) == 0 && wstest.GoroutinesIn(writer) == 0
	}
	wstest.WaitUntil(t, "every connection to park, with no goroutine", idle)

	// A frame resumes its reader; the members' writers deliver it.
	clients[0].Send(t, `{"type":"chat","room":"r","message":"wake up","id":"c1"}`)
	for _, c := range clients[1:] {
		c.Expect(t, `"wake up"`)
	}
	clients[0].Expect(t, `"ack"`)
	wstest.WaitUntil(t, "every connection to park again", idle)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		s.Shutdown(ctx)
		close(done)
	}()
	for _, c := range clients {
		c.ExpectClose(t, 1012)
	}
	// Clients that answer nothing: the close handshake times out, the
	// connections close, and their parked readers clean up.
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("shutdown did not finish: parked readers were not woken")
	}
	if left := s.Len(); left != 0 {
		t.Fatalf("%d clients left after shutdown", left)
	}
}

// Shutdown keeps to its deadline when a peer never answers the close
// handshake (it neither reads nor closes).
func TestShutdownKeepsItsDeadline(t *testing.T) {
	s, srv := startLinger(t, 0)
	c := wstest.Dial(t, srv.Listener.Addr().String(), `{"type":"hello","nick":"mute"}`)
	c.Expect(t, `"to":"hello"`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	s.Shutdown(ctx)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown with a 300ms budget took %v", d)
	}
}

// Past MaxConns an upgrade is refused with 503, and a slot freed is taken
// again.
func TestMaxConns(t *testing.T) {
	s, srv := startServer(t, func(c *Config) { c.MaxConns = 2 })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`)
	a.Expect(t, `"to":"hello"`)
	b := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`)
	b.Expect(t, `"to":"hello"`)
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
	if got := testutil.ToFloat64(s.m.Refused); got != 1 {
		t.Fatalf("connections_refused_total %v", got)
	}
	a.Conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for upgrade() != http.StatusSwitchingProtocols {
		if time.Now().After(deadline) {
			t.Fatal("a freed slot was not taken again")
		}
		runtime.Gosched()
	}
}

// A client closed for flooding is not read any further: the close frame
// goes out and the socket is released at once, instead of the close
// handshake reading (and dropping) all it still sends for up to 5 s —
// at a flood's volume, seconds of CPU that every other client waits for.
func TestRateLimitCloseDoesNotDrainTheFlood(t *testing.T) {
	_, srv := startServer(t, func(c *Config) {
		c.RatePerSec, c.RateBurst, c.RateLimitCloseAfter = 20, 5, 300*time.Millisecond
	})
	c := wstest.Dial(t, srv.Listener.Addr().String())
	// The flood: chats as fast as the socket takes them, until the test
	// ends (the close frame does not stop this writer, as it would not
	// stop a hostile one).
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := wstest.Frames(slices.Repeat([]string{`{"type":"chat","room":"r","message":"flood"}`}, 200)...)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.Conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); c.Conn.Close(); <-done }()
	c.ExpectClose(t, 1008)
	closedAt := time.Now()
	// Then the end of the connection: with the handshake waiting for the
	// client's close frame, it would come after 5 s of reading.
	c.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.Read(); err != nil {
			break
		}
	}
	if took := time.Since(closedAt); took > 2*time.Second {
		t.Fatalf("the socket was released %s after the close frame: the server kept reading the flood", took.Round(time.Millisecond))
	}
}
