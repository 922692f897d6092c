package conn

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/user/internal/wstest"
)

// startFlood serves a Server whose queues and rate limits let a sender
// flood the other connections with bigChat; the sweep runs every 20 ms.
func startFlood(t *testing.T, writeTimeout time.Duration) (*Server, string) {
	t.Helper()
	s, srv := startServer(t, func(c *Config) {
		c.WriterLinger, c.WriteTimeout = 20*time.Millisecond, writeTimeout
		c.SendQueue, c.SendQueueBytes = 1<<20, 1<<30
		c.RatePerSec, c.RateBurst = 1e6, 1e6
	})
	return s, srv.Listener.Addr().String()
}

// bigChat is a seed chat frame of 4 KB to room r.
var bigChat = fmt.Sprintf(`{"type":"chat","room":"r","message":"%s"}`, strings.Repeat("x", 4000))

// A client that stops reading while frames keep coming is closed once a
// write to it made no progress for WriteTimeout, its queue not yet full.
func TestWriteTimeout(t *testing.T) {
	s, addr := startFlood(t, 200*time.Millisecond)
	mute := wstest.Dial(t, addr, `{"type":"hello","nick":"mute"}`, `{"type":"join","room":"r","id":"j"}`)
	mute.Expect(t, `"to":"join"`) // and never reads again
	sender := wstest.Dial(t, addr)
	deadline := time.Now().Add(30 * time.Second)
	for testutil.ToFloat64(s.m.WriteTimeouts) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no write timeout after 30s of frames to a client that does not read")
		}
		sender.Send(t, bigChat, bigChat, bigChat, bigChat)
	}
	if got := testutil.ToFloat64(s.m.SlowConsumers); got != 0 {
		t.Fatalf("the queue overflowed first (%v): the test does not show the timeout", got)
	}
}

// A client that reads slowly but steadily is not taken for one that
// stopped: WriteTimeout watches a large batch's bytes move, it does not
// bound how long the batch takes.
func TestWriteTimeoutSparesASlowReader(t *testing.T) {
	s, addr := startFlood(t, 1500*time.Millisecond)
	slow := wstest.Dial(t, addr, `{"type":"hello","nick":"slow"}`, `{"type":"join","room":"r","id":"j"}`)
	slow.Expect(t, `"to":"join"`)
	sender := wstest.Dial(t, addr)
	const n = 2000 // 8 MB, far more than the sockets' buffers
	go func() {
		for range n / 4 {
			if _, err := sender.Conn.Write(wstest.Frames(bigChat, bigChat, bigChat, bigChat)); err != nil {
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
		op, f := slow.Frame(t)
		if op == 8 {
			t.Fatalf("closed after %d of %d messages: %q", got, n, f)
		}
		budget -= len(f)
		if strings.Contains(f, `"chat"`) {
			got++
		}
	}
	if got := testutil.ToFloat64(s.m.WriteTimeouts); got != 0 {
		t.Fatalf("write_timeouts_total %v", got)
	}
}

// Frames queued while a connection ends (the ack of a chat its client sent
// just before it went) never leave a writer behind: every writer claimed
// before the close is waited for, none starts after it, and the Server
// ends with no connection and no writer.
func TestSendingWhileClosingLeavesNoWriter(t *testing.T) {
	s, srv := startServer(t, func(c *Config) { c.SendQueue, c.SendQueueBytes = 1<<20, 1<<30 })
	h := s.h.(*roomless)
	addr := srv.Listener.Addr().String()
	for range 200 {
		c := wstest.Dial(t, addr, `{"type":"ping","id":"p"}`)
		c.Expect(t, `"pong"`)
		h.mu.Lock()
		var conns []*Conn
		for sc := range h.conns {
			conns = append(conns, sc)
		}
		h.mu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 200 {
				for _, sc := range conns {
					sc.Send([]byte(`{"type":"ack"}`))
				}
			}
		}()
		c.Conn.Close()
		<-done
	}
	wstest.WaitUntil(t, "no connection and no writer left", func() bool { return s.Len() == 0 && s.Writers() == 0 })
}
