package wsconn

// Tests that pin what this package relies on in github.com/coder/websocket
// (the list is in the package doc). Each runs a real coder/websocket server
// connection, accepted through a ResponseWriter, and is named after the
// coder/websocket behaviour it pins: if one fails after an upgrade, that
// behaviour changed, and the package must change with it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// recordConn is the server's end of a connection as net/http accepted it
// (so the socket under a Conn): once started, it records every Write that
// reaches the socket, before making it. It embeds the *net.TCPConn, so that
// a Conn still gets raw access to the socket through it.
type recordConn struct {
	*net.TCPConn
	mu     sync.Mutex
	on     bool
	writes [][]byte
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.on {
		c.writes = append(c.writes, bytes.Clone(p))
	}
	c.mu.Unlock()
	return c.TCPConn.Write(p)
}

func (c *recordConn) start() {
	c.mu.Lock()
	c.on = true
	c.mu.Unlock()
}

// calls returns the writes recorded so far, one element a Write call.
func (c *recordConn) calls() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

type recordListener struct{ net.Listener }

func (l recordListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordConn{TCPConn: c.(*net.TCPConn)}, nil
}

type recordKey struct{}

// serveRecorded serves each WebSocket connection, accepted by
// websocket.Accept through a ResponseWriter (with frameTimeout), to fn,
// with the connection's socket recording its writes from the end of the
// handshake on. The test waits for fn to return (10 s at most) when it
// ends, after the clients it dialled are closed.
func serveRecorded(t *testing.T, frameTimeout time.Duration, fn func(cw *ResponseWriter, ws *websocket.Conn, rec *recordConn)) *httptest.Server {
	t.Helper()
	var handlers sync.WaitGroup
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers.Add(1)
		defer handlers.Done()
		rec := r.Context().Value(recordKey{}).(*recordConn)
		cw := &ResponseWriter{ResponseWriter: w, Pool: &Pool{}, FrameTimeout: frameTimeout}
		ws, err := websocket.Accept(cw, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer ws.CloseNow()
		if cw.Conn == nil {
			t.Error("websocket.Accept did not hijack through wsconn.ResponseWriter.Hijack (it found another http.Hijacker): coder/websocket writes and reads around the Conn")
			return
		}
		rec.start()
		fn(cw, ws, rec)
	}))
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, recordKey{}, c)
	}
	srv.Listener = recordListener{srv.Listener}
	srv.Start()
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { handlers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("a server handler did not return within 10 s of the test's end")
		}
		srv.Close()
	})
	return srv
}

// rawClient makes the WebSocket handshake over a plain TCP connection to
// srv, sending early right behind the request in the same write, so that a
// test can send frames as it likes (see clientFrame). Reads of the
// returned reader give up after 10 s.
func rawClient(t *testing.T, srv *httptest.Server, early []byte) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	req := "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := nc.Write(append([]byte(req), early...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %s", resp.Status)
	}
	return nc, br
}

// readServerFrame reads one unmasked frame with a payload of at most 125
// bytes: its first byte and its payload.
func readServerFrame(t *testing.T, br *bufio.Reader) (byte, []byte) {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		t.Fatalf("read frame header: %v", err)
	}
	if h[1] > 125 {
		t.Fatalf("frame header %x: not a small unmasked frame", h)
	}
	p := make([]byte, h[1])
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatalf("read frame payload: %v", err)
	}
	return h[0], p
}

// expectWholeFrames fails unless the socket saw exactly the frames want,
// each in a Write of its own.
func expectWholeFrames(t *testing.T, rec *recordConn, what string, want ...[]byte) {
	t.Helper()
	got := rec.calls()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = bytes.Equal(got[i], want[i])
	}
	if !ok {
		t.Fatalf("coder/websocket no longer writes %s whole, alone, in one Write (through the 128-byte bufio.Writer Hijack gave it, flushed after each frame): the socket saw %d writes %q, want %q", what, len(got), got, want)
	}
}

// A client's message reaches the server only through the ResponseWriter's
// Hijack: coder/websocket's Accept uses the http.Hijacker it is given and
// reads and writes the net.Conn that Hijack returned.
func TestCoderWebsocketAcceptHijacksThroughResponseWriter(t *testing.T) {
	got := make(chan string, 1)
	srv := serveRecorded(t, 0, func(_ *ResponseWriter, ws *websocket.Conn, _ *recordConn) {
		_, b, err := ws.Read(context.Background())
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	if err := client.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if s := recv(ctx, t, got, "server stuck"); s != "hello" {
		t.Fatalf("server read %q", s)
	}
}

// Write recognises a control frame by its first byte, so each must reach
// it whole and alone: coder/websocket writes a frame's header and payload
// into the bufio.Writer Hijack gave it (128 bytes: the largest control
// frame is 127) and flushes it at once. The pong to the largest ping there
// is (125 bytes of payload) pins that.
func TestCoderWebsocketWritesEachPongWholeInOneWrite(t *testing.T) {
	recs := make(chan *recordConn, 1)
	srv := serveRecorded(t, 0, func(_ *ResponseWriter, ws *websocket.Conn, rec *recordConn) {
		recs <- rec
		ws.Read(context.Background()) // answers pings; ends when the client leaves
	})
	ping := bytes.Repeat([]byte("p"), 125)
	nc, br := rawClient(t, srv, nil)
	if _, err := nc.Write(clientFrame(0x89, ping)); err != nil {
		t.Fatal(err)
	}
	first, p := readServerFrame(t, br)
	if first != 0x8a || !bytes.Equal(p, ping) {
		t.Fatalf("answer to a ping: first byte %#x, payload %q; want a pong (0x8a) with the ping's payload", first, p)
	}
	rec := <-recs
	expectWholeFrames(t, rec, "a pong", append([]byte{0x8a, 125}, ping...))
}

// A close frame written by coder/websocket, whether its own (Close) or the
// echo of the client's, reaches Write whole and alone, its first byte
// 0x88, so Write recognises it: AppendText fails with ErrCloseSent from
// then on, and nothing follows the close frame on the wire.
func TestCoderWebsocketWritesEachCloseFrameWholeInOneWrite(t *testing.T) {
	// The longest reason there is: a 127-byte frame.
	reason := strings.Repeat("r", 123)
	closeFrame := func(code websocket.StatusCode) []byte {
		return append(binary.BigEndian.AppendUint16([]byte{0x88, 125}, uint16(code)), reason...)
	}
	type result struct {
		rec *recordConn
		err error // AppendText's after the close frame
	}

	t.Run("server's Close", func(t *testing.T) {
		results := make(chan result, 1)
		srv := serveRecorded(t, 0, func(cw *ResponseWriter, ws *websocket.Conn, rec *recordConn) {
			ws.Close(websocket.StatusGoingAway, reason) // the client's Read answers
			results <- result{rec, cw.Conn.AppendText([]byte("late"))}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client := dialWS(ctx, t, srv, "/")
		_, _, err := client.Read(ctx)
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || ce.Reason != reason {
			t.Fatalf("client read %v, want the server's close frame", err)
		}
		r := recv(ctx, t, results, "server's Close stuck")
		if !errors.Is(r.err, ErrCloseSent) {
			t.Fatalf("AppendText after coder/websocket's Close: %v, want ErrCloseSent (Write did not recognise coder/websocket's close frame by its first byte, 0x88)", r.err)
		}
		expectWholeFrames(t, r.rec, "its close frame", closeFrame(websocket.StatusGoingAway))
	})

	t.Run("echo of the client's close", func(t *testing.T) {
		results := make(chan result, 1)
		srv := serveRecorded(t, 0, func(cw *ResponseWriter, ws *websocket.Conn, rec *recordConn) {
			ws.Read(context.Background()) // reads the client's close frame and echoes it
			results <- result{rec, cw.Conn.AppendText([]byte("late"))}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		client := dialWS(ctx, t, srv, "/")
		if err := client.Close(websocket.StatusNormalClosure, reason); err != nil {
			t.Fatalf("client's close handshake: %v", err)
		}
		r := recv(ctx, t, results, "server's Read stuck")
		if !errors.Is(r.err, ErrCloseSent) {
			t.Fatalf("AppendText after coder/websocket echoed a close: %v, want ErrCloseSent (Write did not recognise coder/websocket's close frame by its first byte, 0x88)", r.err)
		}
		expectWholeFrames(t, r.rec, "the echo of a client's close frame", closeFrame(websocket.StatusNormalClosure))
	})
}

// coder/websocket's writes go through the bufio.Writer Hijack returned,
// of writeBuffer bytes, and not through a buffer of its own: a 304-byte
// data frame written by coder/websocket reaches the socket as a first
// Write of exactly writeBuffer bytes. (Only a data message larger than the
// buffer shows its size; wsconn's own messages never take this path.)
func TestCoderWebsocketWritesThroughHijackedWriteBuffer(t *testing.T) {
	msg := bytes.Repeat([]byte("w"), 300)
	recs := make(chan *recordConn, 1)
	srv := serveRecorded(t, 0, func(_ *ResponseWriter, ws *websocket.Conn, rec *recordConn) {
		if err := ws.Write(context.Background(), websocket.MessageText, msg); err != nil {
			t.Errorf("server write: %v", err)
		}
		recs <- rec
		ws.Read(context.Background()) // until the client leaves
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	if _, got, err := client.Read(ctx); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("client read %d bytes, %v", len(got), err)
	}
	calls := recv(ctx, t, recs, "server stuck").calls()
	if len(calls) == 0 || len(calls[0]) != writeBuffer {
		sizes := make([]int, len(calls))
		for i, c := range calls {
			sizes[i] = len(c)
		}
		t.Fatalf("coder/websocket no longer writes through the %d-byte bufio.Writer Hijack returned: a 304-byte frame reached the socket in writes of %v bytes", writeBuffer, sizes)
	}
}

// coder/websocket reads through the bufio.Reader Hijack returned, and no
// reader of its own: WaitReadable, Pending and Park look at that reader's
// buffer to tell whether the next read would wait. Two frames sent in one
// write are read by the server in one read; after the first message,
// WaitReadable must see the second buffered and say so at once, where,
// were it buffered elsewhere, WaitReadable would wait for the socket and
// give up.
func TestCoderWebsocketReadsThroughHijackedReader(t *testing.T) {
	type result struct {
		msgs  []string
		ready bool
		err   error
	}
	results := make(chan result, 1)
	srv := serveRecorded(t, 0, func(cw *ResponseWriter, ws *websocket.Conn, _ *recordConn) {
		var r result
		_, b, err := ws.Read(context.Background())
		r.msgs = append(r.msgs, string(b))
		if err == nil {
			r.ready = cw.Conn.WaitReadable(5 * time.Second)
			_, b, err = ws.Read(context.Background())
			r.msgs = append(r.msgs, string(b))
		}
		r.err = err
		results <- r
	})
	frames := append(clientFrame(0x81, []byte("a")), clientFrame(0x81, []byte("b"))...)
	rawClient(t, srv, frames)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r := recv(ctx, t, results, "server stuck")
	if r.err != nil || strings.Join(r.msgs, ",") != "a,b" {
		t.Fatalf("server read %q, %v; want a, b", r.msgs, r.err)
	}
	if !r.ready {
		t.Fatal("coder/websocket no longer reads through the bufio.Reader Hijack returned: WaitReadable did not see the buffered second frame")
	}
}

// Frames written with AppendText while the Conn is held are read by a
// coder/websocket client as the messages they carry, in order with the
// pong coder/websocket writes meanwhile: the pong's Write sends the
// frames gathered before it, in the same write.
func TestCoderWebsocketClientReadsHeldTextFramesInOrderWithPongs(t *testing.T) {
	held, pinged := make(chan struct{}), make(chan struct{})
	recs := make(chan *recordConn, 1)
	srv := serveRecorded(t, 0, func(cw *ResponseWriter, ws *websocket.Conn, rec *recordConn) {
		recs <- rec
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			ws.Read(context.Background()) // answers pings until the client leaves
		}()
		cw.Conn.Hold()
		if err := cw.Conn.AppendText([]byte("one")); err != nil {
			t.Errorf("AppendText: %v", err)
		}
		close(held)
		select {
		case <-pinged:
		case <-time.After(10 * time.Second):
			t.Error("the client's ping did not come back")
		}
		if err := cw.Conn.AppendText([]byte("two")); err != nil {
			t.Errorf("AppendText: %v", err)
		}
		if err := cw.Conn.Release(); err != nil {
			t.Errorf("Release: %v", err)
		}
		<-readerDone
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	msgs := make(chan string, 4)
	go func() {
		for {
			typ, b, err := client.Read(ctx)
			if err != nil {
				return
			}
			if typ != websocket.MessageText {
				b = append([]byte("not text: "), b...)
			}
			msgs <- string(b)
		}
	}()
	recv(ctx, t, held, "server stuck before holding")
	if err := client.Ping(ctx); err != nil {
		t.Fatalf("ping while the server held a frame: %v", err)
	}
	// The client's reader read the pong, so it had read what came before.
	select {
	case m := <-msgs:
		if m != "one" {
			t.Fatalf("first message %q, want one", m)
		}
	default:
		t.Fatal("the pong overtook the text frame gathered before it")
	}
	close(pinged)
	if m := recv(ctx, t, msgs, "the frame gathered after the pong never came"); m != "two" {
		t.Fatalf("second message %q, want two", m)
	}
	calls := recv(ctx, t, recs, "server stuck").calls()
	if len(calls) != 2 || !bytes.HasPrefix(calls[0], []byte("\x81\x03one\x8a")) || string(calls[1]) != "\x81\x03two" {
		t.Fatalf("the socket saw %q; want the gathered frame and the pong in one write, then the second frame", calls)
	}
}

// A client's message that stops halfway fails coder/websocket's Read with
// an error that still wraps ErrFrameTimeout (package conn tells a frame timeout
// from other read errors by errors.Is), whether it stops in the header or
// in the payload.
func TestCoderWebsocketReadWrapsFrameTimeout(t *testing.T) {
	frame := clientFrame(0x81, []byte("0123456789"))
	for _, tc := range []struct {
		name string
		sent []byte
	}{
		{"header", frame[:1]},
		{"payload", frame[:9]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := make(chan error, 1)
			srv := serveRecorded(t, 50*time.Millisecond, func(_ *ResponseWriter, ws *websocket.Conn, _ *recordConn) {
				_, _, err := ws.Read(context.Background())
				errs <- err
			})
			nc, _ := rawClient(t, srv, nil)
			if _, err := nc.Write(tc.sent); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := recv(ctx, t, errs, "the server's Read did not time out")
			if !errors.Is(err, ErrFrameTimeout) {
				t.Fatalf("coder/websocket's Read no longer returns the Conn's read error wrapped: %v, want one that wraps ErrFrameTimeout", err)
			}
		})
	}
}

// coder/websocket's CloseNow closes the net.Conn Hijack returned, so that
// Conn.Close wakes a parked reader (see TestParkedReaderResumes).
func TestCoderWebsocketCloseNowClosesHijackedConn(t *testing.T) {
	closed := make(chan bool, 1)
	srv := serveRecorded(t, 0, func(cw *ResponseWriter, ws *websocket.Conn, _ *recordConn) {
		ws.CloseNow()
		cw.Conn.rmu.Lock()
		closed <- cw.Conn.rdone
		cw.Conn.rmu.Unlock()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialWS(ctx, t, srv, "/")
	if !recv(ctx, t, closed, "server stuck") {
		t.Fatal("coder/websocket's CloseNow did not close the net.Conn Hijack returned: a parked reader would not be woken")
	}
}

// coder/websocket reads the connection only inside Read (and Close's
// handshake): between messages nothing reads it but the Conn's reader,
// which is what lets WaitReadable and Park wait for the socket there. A
// ping sent while the server is not in Read gets no pong (the client gives
// up after 200 ms); once the server reads, pings are answered again.
func TestCoderWebsocketReadsOnlyInsideRead(t *testing.T) {
	reading := make(chan struct{})
	srv := serveRecorded(t, 0, func(_ *ResponseWriter, ws *websocket.Conn, _ *recordConn) {
		select {
		case <-reading:
		case <-time.After(10 * time.Second):
			t.Error("the client did not ask the server to read")
		}
		ws.Read(context.Background()) // answers pings until the client leaves
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	go client.Read(ctx) // reads the pongs for Ping
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	err := client.Ping(short)
	cancelShort()
	if err == nil {
		t.Fatal("coder/websocket read the connection outside Read: a ping was answered while the server was not reading")
	}
	close(reading)
	if err := client.Ping(ctx); err != nil {
		t.Fatalf("ping once the server reads: %v", err)
	}
}
