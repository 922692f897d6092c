package wsconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/user/internal/park"
)

// countConn records every write that reaches the "socket".
type countConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *countConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *countConn) calls() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

func TestHeldFramesGoOutInOneCall(t *testing.T) {
	under := &countConn{}
	c := NewConn(under, &Pool{})

	mustAppend(t, c, "a")
	if got := len(under.calls()); got != 1 {
		t.Fatalf("a frame while not held made %d calls, want 1", got)
	}
	c.Hold()
	mustAppend(t, c, "b")
	mustAppend(t, c, "c")
	mustAppend(t, c, "d")
	if got := len(under.calls()); got != 1 {
		t.Fatalf("frames while held reached the socket: %d calls", got)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	calls := under.calls()
	if len(calls) != 2 || string(calls[1]) != "\x81\x01b\x81\x01c\x81\x01d" {
		t.Fatalf("after Release the socket saw %q, want the three frames in one call", calls)
	}
	if err := c.Release(); err != nil || len(under.calls()) != 2 {
		t.Fatalf("an empty Release wrote: err %v, calls %d", err, len(under.calls()))
	}
	mustAppend(t, c, "e")
	if calls := under.calls(); len(calls) != 3 || string(calls[2]) != "\x81\x01e" {
		t.Fatalf("a frame after Release was not sent at once: %q", calls)
	}
}

// coder/websocket's own writes (a pong, or the close frame after which it
// may close the socket at once) are never held: they go out when Write
// returns, behind what was gathered before them.
func TestOwnFramesAreNotHeld(t *testing.T) {
	under := &countConn{}
	c := NewConn(under, &Pool{})
	c.Hold()
	mustAppend(t, c, "b")
	if n, err := c.Write([]byte{finClose, 0}); err != nil || n != 2 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	calls := under.calls()
	if len(calls) != 1 || string(calls[0]) != "\x81\x01b\x88\x00" {
		t.Fatalf("a close frame while held: the socket saw %q, want the gathered frame and the close frame at once", calls)
	}
	if err := c.AppendText([]byte("late")); !errors.Is(err, ErrCloseSent) {
		t.Fatalf("AppendText after a close frame: %v", err)
	}
	if err := c.Release(); err != nil || len(under.calls()) != 1 {
		t.Fatalf("Release after the close frame wrote again: %v, %q", err, under.calls())
	}
}

func mustAppend(t *testing.T, c *Conn, s string) {
	t.Helper()
	if err := c.AppendText([]byte(s)); err != nil {
		t.Fatalf("AppendText(%q): %v", s, err)
	}
}

// A write error is reported by Release and nothing is kept for later.
func TestReleaseReportsWriteError(t *testing.T) {
	a, b := net.Pipe()
	b.Close()
	c := NewConn(a, &Pool{})
	c.Hold()
	mustAppend(t, c, "lost")
	if err := c.Release(); err == nil {
		t.Fatal("Release to a closed peer succeeded")
	}
}

// Bytes the client sent right behind its request, already read by net/http
// when the handler hijacks, must come out of the hijacked reader first.
func TestHijackKeepsEarlyBytes(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}}
		nc, brw, err := cw.Hijack()
		if err != nil {
			got <- "hijack: " + err.Error()
			return
		}
		defer nc.Close()
		if cw.Conn == nil || nc != net.Conn(cw.Conn) {
			got <- "Hijack did not record its Conn"
			return
		}
		if brw.Reader.Size() != readerBuffer || brw.Writer.Size() != writeBuffer {
			got <- "unexpected buffer sizes"
			return
		}
		// coder/websocket re-seats the reader on the connection, keeping
		// only what is in its buffer: the early bytes must be behind it,
		// in the Conn.
		if len(cw.Conn.pend) == 0 {
			got <- "the Conn does not hold the early bytes"
			return
		}
		b, _ := brw.Reader.Peek(brw.Reader.Buffered())
		brw.Reader.Reset(io.MultiReader(bytes.NewReader(b), nc))
		line, err := brw.ReadString('\n')
		if err != nil {
			got <- "read: " + err.Error()
			return
		}
		got <- line
	}))
	defer srv.Close()

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Request and the first "frame" in one write, so net/http reads both.
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\nearly then late"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, " bytes\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-got:
		if line != "early then late bytes\n" {
			t.Fatalf("hijacked reader returned %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not finish")
	}
}

func TestHijackUnsupported(t *testing.T) {
	rec := httptest.NewRecorder()
	cw := &ResponseWriter{ResponseWriter: rec, Pool: &Pool{}}
	if _, _, err := cw.Hijack(); err == nil || !strings.Contains(err.Error(), "hijack") {
		t.Fatalf("Hijack of a recorder: err %v", err)
	}
	if cw.Conn != nil {
		t.Fatal("a failed Hijack recorded a Conn")
	}
}

// Frames written by AppendText, held or not, are read by a real WebSocket
// client as the messages they carry, in order with coder/websocket's own
// close frame, and nothing can be appended after that close frame.
func TestAppendTextSpeaksWebSocket(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 1000, 0xffff, 0x10000, 200_000}
	payload := func(i, n int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, n) }
	afterClose := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}}
		ws, err := websocket.Accept(cw, r, nil)
		if err != nil {
			afterClose <- err
			return
		}
		for i, n := range sizes {
			held := i%2 == 0
			if held {
				cw.Conn.Hold()
			}
			if err := cw.Conn.AppendText(payload(i, n)); err != nil {
				afterClose <- err
				return
			}
			if held {
				if err := cw.Conn.Release(); err != nil {
					afterClose <- err
					return
				}
			}
		}
		ws.Close(websocket.StatusNormalClosure, "done")
		afterClose <- cw.Conn.AppendText([]byte("too late"))
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	client.SetReadLimit(1 << 20)
	for i, n := range sizes {
		typ, got, err := client.Read(ctx)
		if err != nil {
			t.Fatalf("message %d (%d bytes): %v", i, n, err)
		}
		if typ != websocket.MessageText || !bytes.Equal(got, payload(i, n)) {
			t.Fatalf("message %d: got type %v, %d bytes, want text of %d bytes", i, typ, len(got), n)
		}
	}
	if _, _, err := client.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
		t.Fatalf("after the messages: %v, want the server's normal close", err)
	}
	if err := <-afterClose; !errors.Is(err, ErrCloseSent) {
		t.Fatalf("AppendText after close: %v, want ErrCloseSent", err)
	}
}

// BenchmarkBatch writes 150-byte text frames to a loopback TCP socket,
// `frames` per Hold/Release: what one system call per frame costs against
// one per batch. A goroutine reads and discards on the other end.
func BenchmarkBatch(b *testing.B) {
	for _, frames := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("frames=%d", frames), func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
			}()
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			c := NewConn(nc, &Pool{})
			payload := bytes.Repeat([]byte("x"), 150)
			b.ReportAllocs()
			b.SetBytes(int64(len(payload) * frames))
			for b.Loop() {
				c.Hold()
				for range frames {
					if err := c.AppendText(payload); err != nil {
						b.Fatal(err)
					}
				}
				if err := c.Release(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
		})
	}
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// The write path allocates nothing per frame or per batch once warm.
func TestBatchAllocatesNothing(t *testing.T) {
	c := NewConn(discardConn{}, &Pool{})
	payload := bytes.Repeat([]byte("x"), 150)
	allocs := testing.AllocsPerRun(1000, func() {
		c.Hold()
		for range 8 {
			if err := c.AppendText(payload); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Release(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per batch of 8 frames, want 0", allocs)
	}
}

// WaitReadable returns once there is something to read (a frame, the end
// of the connection) and at once after EndWaits; Read then gets what woke
// it. A Conn holds a read chunk only while it has unread bytes, not while
// it waits.
func TestWaitReadable(t *testing.T) {
	type step struct {
		name string
		msg  string
		err  error
	}
	steps := make(chan step, 8)
	srv := serveWS(t, func(r *http.Request, cw *ResponseWriter, ws *websocket.Conn) {
		defer ws.CloseNow()
		if r.URL.Path == "/idle" {
			cw.Conn.WaitReadable(0) // until the client leaves
			_, _, err := ws.Read(context.Background())
			steps <- step{name: "idle", err: err}
			return
		}
		read := func(name string) {
			cw.Conn.WaitReadable(0)
			_, b, err := ws.Read(context.Background())
			if err == nil && cw.Conn.chunk != nil {
				err = errors.New("the Conn keeps a read chunk with nothing left to read")
			}
			steps <- step{name: name, msg: string(b), err: err}
		}
		read("first")
		read("second") // waits for the client's second message
		cw.Conn.EndWaits()
		cw.Conn.WaitReadable(0) // at once, though the client sends nothing
		steps <- step{name: "after EndWaits"}
		read("end") // the client is gone: Read fails
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	next := func() step { t.Helper(); return recv(ctx, t, steps, "server stuck") }
	if err := client.Write(ctx, websocket.MessageText, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if s := next(); s.name != "first" || s.msg != "one" || s.err != nil {
		t.Fatalf("%+v", s)
	}
	select {
	case s := <-steps:
		t.Fatalf("the server did not wait for the second message: %+v", s)
	default:
	}
	if err := client.Write(ctx, websocket.MessageText, []byte("two")); err != nil {
		t.Fatal(err)
	}
	if s := next(); s.name != "second" || s.msg != "two" || s.err != nil {
		t.Fatalf("%+v", s)
	}
	if s := next(); s.name != "after EndWaits" || s.err != nil {
		t.Fatalf("%+v", s)
	}
	client.CloseNow()
	if s := next(); s.name != "end" || s.err == nil {
		t.Fatalf("after the client left: %+v", s)
	}

	// A peer that leaves ends the wait.
	idle := dialWS(ctx, t, srv, "/idle")
	select {
	case s := <-steps:
		t.Fatalf("the server did not wait: %+v", s)
	default:
	}
	idle.CloseNow()
	if s := next(); s.name != "idle" || s.err == nil {
		t.Fatalf("after the idle client left: %+v", s)
	}
}

// serveWS serves each WebSocket connection, accepted through a
// ResponseWriter, to fn.
func serveWS(t *testing.T, fn func(r *http.Request, cw *ResponseWriter, ws *websocket.Conn)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}}
		ws, err := websocket.Accept(cw, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		fn(r, cw, ws)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// recv returns the next value from ch, failing the test with stuck if ctx
// ends first.
func recv[T any](ctx context.Context, t *testing.T, ch <-chan T, stuck string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		t.Fatal(stuck)
		var zero T
		return zero
	}
}

// dialWS opens a WebSocket client connection to path on srv, closed when
// the test ends.
func dialWS(ctx context.Context, t *testing.T, srv *httptest.Server, path string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// A reader waiting inside coder/websocket's Read (after answering a ping,
// or for the rest of a frame) holds no read chunk either.
func TestReaderWaitingHoldsNoChunk(t *testing.T) {
	conns := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}}
		ws, err := websocket.Accept(cw, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		conns <- cw.Conn
		ws.Read(context.Background()) // answers pings; ends when the client leaves
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	go client.Read(ctx) // reads the pongs for Ping
	if err := client.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	conn := <-conns
	// Wait for the server's reader to park on the socket again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Contains(stacks, "wsconn.(*Conn).fill(") && strings.Contains(stacks, "(*FD).RawRead(") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server's reader did not wait for the socket")
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn.rmu.Lock()
	held := conn.chunk != nil
	conn.rmu.Unlock()
	if held {
		t.Fatal("a reader waiting for the socket holds a read chunk")
	}
}

// A parked reader is resumed by the next frame, and by a local Close.
func TestParkedReaderResumes(t *testing.T) {
	p, err := park.New()
	if errors.Is(err, park.ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	type result struct {
		msg string
		err error
	}
	results := make(chan result, 4)
	conns := make(chan *Conn, 1)
	srv := serveWS(t, func(_ *http.Request, cw *ResponseWriter, ws *websocket.Conn) {
		// The reader: parks whenever idle, its goroutine ending each
		// time; each resume reads one message.
		var resume func()
		read := func() {
			for !cw.Conn.WaitReadable(time.Millisecond) {
				parked, err := cw.Conn.Park(p, resume)
				if err != nil {
					t.Errorf("park: %v", err)
					return
				}
				if parked {
					return
				}
			}
			_, b, err := ws.Read(context.Background())
			results <- result{msg: string(b), err: err}
			if err == nil {
				go resume()
			}
		}
		resume = read
		conns <- cw.Conn
		read()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	var conn *Conn
	select {
	case conn = <-conns:
	case <-ctx.Done():
		t.Fatal("no connection")
	}
	waitParked := func() {
		t.Helper()
		for p.Parked() != 1 {
			if ctx.Err() != nil {
				t.Fatal("the reader did not park")
			}
			time.Sleep(time.Millisecond) // polling, with ctx's deadline
		}
	}
	next := func() result { t.Helper(); return recv(ctx, t, results, "reader not resumed") }
	for _, msg := range []string{"one", "two"} {
		waitParked()
		if err := client.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		if r := next(); r.msg != msg || r.err != nil {
			t.Fatalf("%+v, want %q", r, msg)
		}
	}
	waitParked()
	conn.Close()
	if r := next(); r.err == nil {
		t.Fatalf("after a local close: %+v, want an error", r)
	}
	if p.Parked() != 0 {
		t.Fatalf("%d readers still parked", p.Parked())
	}
}
