package linkws

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol/link"
)

const waitFor = 5 * time.Second

// pair returns the two ends of a WebSocket connection over loopback: the
// server's, which the tests write with, and the client's.
func pair(t *testing.T) (server, client *websocket.Conn) {
	t.Helper()
	accepted := make(chan *websocket.Conn, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Error(err)
			return
		}
		accepted <- c
		<-release
	}))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	client, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	client.SetReadLimit(-1)
	server = <-accepted
	t.Cleanup(func() {
		client.CloseNow()
		server.CloseNow()
		close(release)
		srv.Close()
	})
	return server, client
}

type wsMessage struct {
	data []byte
	err  error // the read's error: the last message
	at   time.Time
}

// receive reads c's messages onto the returned channel, ending with the
// read's error.
func receive(c *websocket.Conn) <-chan wsMessage {
	ch := make(chan wsMessage, 1<<12)
	go func() {
		for {
			_, data, err := c.Read(context.Background())
			ch <- wsMessage{data, err, time.Now()}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan wsMessage) wsMessage {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(waitFor):
		t.Fatalf("no message within %s", waitFor)
		return wsMessage{}
	}
}

// run starts w.Run and returns its result's channel; the test's end
// cancels it.
func run(t *testing.T, w *Writer) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	done, returned := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(returned)
		done <- w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-returned
	})
	return done
}

func frame(i, size int) []byte {
	b := fmt.Appendf(nil, "%d:", i)
	return append(append(b, bytes.Repeat([]byte{'x'}, max(size-len(b)-1, 0))...), '\n')
}

// Every frame arrives once and in order, in messages of at most link.MaxMessage
// that end at frame boundaries, while frames are appended during writes
// and large backlogs (over link.KeepBytes) come and go: the writer must never
// send from an array it also queues into (found in review, in the
// relayer's copy of this loop, by the race detector).
func TestWriterDeliversEveryFrameInOrder(t *testing.T) {
	server, client := pair(t)
	w := NewWriter(server, 0)
	msgs := receive(client)
	run(t, w)
	var want bytes.Buffer
	var frames [][]byte
	sizes := []int{100, 20000, 20, 500}
	for i := range 3000 {
		f := frame(i, sizes[i%len(sizes)])
		if i%500 == 1 {
			f = frame(i, 2*link.MaxMessage) // one frame alone over link.MaxMessage
		}
		want.Write(f)
		frames = append(frames, f)
	}
	go func() {
		for i, f := range frames {
			if _, ok := w.Append(f); !ok {
				t.Error("append refused before Close")
				return
			}
			if i%10 == 0 || len(f) > link.MaxMessage {
				// Paced: the next frames are queued while Run writes
				// these, into the buffer it swapped in.
				for w.Owed() > 0 {
					runtime.Gosched()
				}
			}
		}
		w.Close(websocket.StatusNormalClosure, "done", true)
	}()
	var got bytes.Buffer
	for {
		m := next(t, msgs)
		if m.err != nil {
			if websocket.CloseStatus(m.err) != websocket.StatusNormalClosure {
				t.Fatalf("link ended with %v, want a normal closure after the frames", m.err)
			}
			break
		}
		if len(m.data) == 0 || m.data[len(m.data)-1] != '\n' {
			t.Fatalf("message of %d bytes does not end at a frame boundary", len(m.data))
		}
		if len(m.data) > link.MaxMessage && bytes.Count(m.data, []byte{'\n'}) > 1 {
			t.Fatalf("message of %d bytes, over link.MaxMessage with more than one frame", len(m.data))
		}
		got.Write(m.data)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("received %d bytes, want %d: frames lost, doubled or garbled", got.Len(), want.Len())
	}
}

// With a flush delay, output waits that long after it appears, and what
// arrives meanwhile goes in the same message; the wait counts from the
// output's arrival, also right after a flush.
func TestWriterFlushDelay(t *testing.T) {
	const delay = 50 * time.Millisecond
	server, client := pair(t)
	w := NewWriter(server, delay)
	msgs := receive(client)
	run(t, w)
	start := time.Now()
	w.Append([]byte("a\n"))
	for len(w.wake) > 0 { // until Run took a's signal and waits
		runtime.Gosched()
	}
	w.Append([]byte("b\n"))
	m := next(t, msgs)
	if string(m.data) != "a\nb\n" {
		t.Fatalf("got %q, want both frames in one message", m.data)
	}
	if waited := m.at.Sub(start); waited < delay {
		t.Fatalf("sent %s after the first frame, want at least %s", waited, delay)
	}
	// b's signal, raised during the wait, must not start the next one:
	// c, queued half a delay later, still waits a whole one. (Sleep makes
	// the gap the rule is about; nothing waits on it.)
	time.Sleep(delay / 2)
	start = time.Now()
	w.Append([]byte("c\n"))
	m = next(t, msgs)
	if string(m.data) != "c\n" {
		t.Fatalf("got %q, want c", m.data)
	}
	if waited := m.at.Sub(start); waited < delay {
		t.Fatalf("sent %s after it was queued, want at least %s: a stale signal started the wait early", waited, delay)
	}
}

// Close with flush sends what is queued, then the close frame; Append drops
// from then on.
func TestWriterCloseFlushes(t *testing.T) {
	server, client := pair(t)
	w := NewWriter(server, 0)
	msgs := receive(client)
	w.Append([]byte("a\n"), []byte("b\n"))
	if !w.Close(websocket.StatusServiceRestart, "restarting", true) {
		t.Fatal("the first Close reported it was not first")
	}
	if w.Close(websocket.StatusPolicyViolation, "again", false) || w.Stop() {
		t.Fatal("a later Close or Stop reported it was first")
	}
	if _, ok := w.Append([]byte("c\n")); ok || w.AppendFunc(func(b []byte) []byte { return append(b, "d\n"...) }) {
		t.Fatal("append after Close accepted")
	}
	done := run(t, w)
	if m := next(t, msgs); string(m.data) != "a\nb\n" {
		t.Fatalf("got %q (%v), want the queued frames", m.data, m.err)
	}
	m := next(t, msgs)
	var ce websocket.CloseError
	if !errors.As(m.err, &ce) || ce.Code != websocket.StatusServiceRestart || ce.Reason != "restarting" {
		t.Fatalf("link ended with %v, want the first Close's code and reason", m.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after the close frame: %v", err)
	}
}

// Close without flush drops what is queued.
func TestWriterCloseDiscards(t *testing.T) {
	server, client := pair(t)
	w := NewWriter(server, 0)
	msgs := receive(client)
	if owed, ok := w.Append([]byte("a\n")); !ok || owed != 0 {
		t.Fatalf("first append: owed %d, ok %v", owed, ok)
	}
	if owed, _ := w.Append([]byte("b\n")); owed != 2 || w.Owed() != 4 {
		t.Fatalf("second append: owed %d before, %d after; want 2 and 4", owed, w.Owed())
	}
	w.Close(websocket.StatusPolicyViolation, "bad", false)
	if w.Owed() != 0 {
		t.Fatalf("owes %d after a discarding Close", w.Owed())
	}
	run(t, w)
	if m := next(t, msgs); websocket.CloseStatus(m.err) != websocket.StatusPolicyViolation {
		t.Fatalf("got %q, %v; want only the close frame", m.data, m.err)
	}
}

// A failed write ends Run with its error; an ended context with its own.
func TestWriterRunErrors(t *testing.T) {
	server, _ := pair(t)
	w := NewWriter(server, 0)
	done := run(t, w)
	server.CloseNow()
	w.AppendFunc(func(b []byte) []byte { return append(b, "a\n"...) })
	select {
	case err := <-done:
		if err == nil || errors.Is(err, context.Canceled) {
			t.Fatalf("Run on a closed connection: %v, want the write's error", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after a failed write")
	}

	server, _ = pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := NewWriter(server, time.Hour).Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run with an ended context: %v", err)
	}
}

// Keepalive goes on while the peer answers, and fails when it does not.
func TestKeepalive(t *testing.T) {
	const interval = 10 * time.Millisecond
	server, client := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	server.CloseRead(ctx) // pongs are seen by a reader
	receive(client)       // and answered by one
	kctx, kcancel := context.WithTimeout(ctx, 20*interval)
	defer kcancel()
	if err := Keepalive(kctx, server, interval); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("keepalive with an answering peer: %v, want it to run until its context ended", err)
	}

	server, _ = pair(t) // a client that never reads, so never answers
	server.CloseRead(ctx)
	start := time.Now()
	err := Keepalive(ctx, server, interval)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("keepalive with a silent peer: %v", err)
	}
	if took := time.Since(start); took < 3*interval {
		t.Fatalf("failed after %s, before a ping's timeout of twice the interval", took)
	}
}

// AppendFunc encodes in place, between whole frames of Append.
func TestWriterAppendFunc(t *testing.T) {
	server, client := pair(t)
	w := NewWriter(server, 0)
	msgs := receive(client)
	w.Append([]byte("a\n"))
	w.AppendFunc(func(b []byte) []byte { return link.AppendAck(b, "r", "m", 7) })
	w.Close(websocket.StatusNormalClosure, "", true)
	run(t, w)
	var frames []*link.Frame
	if err := link.Split(next(t, msgs).data[2:], func(f *link.Frame) error { frames = append(frames, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(frames) != 1 || frames[0].T != link.OpAck || frames[0].Seq != 7 {
		t.Fatalf("frames %+v", frames)
	}
}
