//go:build unix

package wsconn

import (
	"context"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// WaitReadable with an idle time gives up when nothing comes, and leaves
// no deadline behind: the next read waits as long as it takes.
func TestWaitReadableGivesUpWhenIdle(t *testing.T) {
	type result struct {
		ready bool
		msg   string
		err   error
	}
	results := make(chan result, 4)
	srv := serveWS(t, func(_ *http.Request, cw *ResponseWriter, ws *websocket.Conn) {
		defer ws.CloseNow()
		results <- result{ready: cw.Conn.WaitReadable(10 * time.Millisecond)}
		// The deadline WaitReadable gave up at has passed: were it still
		// set, this read would fail at once.
		_, b, err := ws.Read(context.Background())
		results <- result{msg: string(b), err: err}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	next := func() result { t.Helper(); return recv(ctx, t, results, "server stuck") }
	if r := next(); r.ready || r.err != nil {
		t.Fatalf("WaitReadable with nothing sent: %+v, want false", r)
	}
	if err := client.Write(ctx, websocket.MessageText, []byte("late")); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.msg != "late" || r.err != nil {
		t.Fatalf("read after giving up: %+v", r)
	}
}

// BenchmarkSystemCall is the floor under every write BenchmarkBatch
// measures: entering and leaving the kernel for a call that does nothing
// (getppid). On a VM it can be many times what bare metal costs, and each
// batch pays it once.
func BenchmarkSystemCall(b *testing.B) {
	for b.Loop() {
		syscall.Getppid()
	}
}

// Pending tells, without waiting, whether the client's next frame is
// there already; what it read is what the next Read returns.
func TestPendingDoesNotWait(t *testing.T) {
	type result struct {
		pending bool
		msg     string
	}
	results := make(chan result, 4)
	written := make(chan struct{})
	srv := serveWS(t, func(_ *http.Request, cw *ResponseWriter, ws *websocket.Conn) {
		defer ws.CloseNow()
		results <- result{pending: cw.Conn.Pending()}
		<-written
		deadline := time.Now().Add(10 * time.Second)
		for !cw.Conn.Pending() && time.Now().Before(deadline) {
			runtime.Gosched()
		}
		_, b, _ := ws.Read(context.Background())
		results <- result{pending: true, msg: string(b)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := dialWS(ctx, t, srv, "/")
	if r := recv(ctx, t, results, "Pending waited"); r.pending {
		t.Fatal("Pending with nothing sent: true")
	}
	if err := client.Write(ctx, websocket.MessageText, []byte("here")); err != nil {
		t.Fatal(err)
	}
	close(written)
	if r := recv(ctx, t, results, "server stuck"); r.msg != "here" {
		t.Fatalf("after Pending: read %q, want the frame", r.msg)
	}
}
