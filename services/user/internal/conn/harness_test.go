package conn

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
)

// roomless is the Handler of these tests, without rooms: a chat goes to
// every other connection (SendLive) and is acknowledged; any other frame
// is answered {"type":"answer","to":<its type>,"id":<its id>}.
type roomless struct {
	mu    sync.Mutex
	conns map[*Conn]struct{}
}

func (h *roomless) Open(c *Conn, _ string) Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns[c] = struct{}{}
	return &roomlessSession{h, c}
}

type roomlessSession struct {
	h *roomless
	c *Conn
}

func (s *roomlessSession) Frame(in protocol.Inbound, _ bool) {
	if in.Type != protocol.TypeChat {
		s.c.Send(fmt.Appendf(nil, `{"type":"answer","to":%q,"id":%q}`, in.Type, in.ID))
		return
	}
	frame := protocol.AppendChat(nil, &protocol.Message{Room: in.Room, Text: in.Message})
	s.h.mu.Lock()
	for c := range s.h.conns {
		if c != s.c {
			c.SendLive(frame)
		}
	}
	s.h.mu.Unlock()
	s.c.Send(protocol.AppendAck(nil, in.ID, in.Room, 1))
}

func (s *roomlessSession) Wrote() {}

func (s *roomlessSession) Closed() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	delete(s.h.conns, s.c)
}

// startServer serves a Server with the roomless handler on a loopback
// test server; set adjusts the test's defaults.
func startServer(t *testing.T, set func(*Config)) (*Server, *httptest.Server) {
	t.Helper()
	cfg := Config{
		SendQueue: 64, SendQueueBytes: 1 << 20, RatePerSec: 1000, RateBurst: 1000, MaxFrame: 16384,
		Rules:  protocol.Rules{MaxRoomBytes: 64, MaxNickBytes: 32, MaxMessageBytes: 4096},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(prometheus.NewRegistry()),
	}
	if set != nil {
		set(&cfg)
	}
	s := New(cfg, &roomless{conns: map[*Conn]struct{}{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		s.Shutdown(sctx)
		srv.Close()
		cancel()
		<-done
	})
	return s, srv
}

// startLinger is startServer with WriterLinger and ReaderLinger set to
// linger (0: the defaults).
func startLinger(t *testing.T, linger time.Duration) (*Server, *httptest.Server) {
	t.Helper()
	return startServer(t, func(c *Config) { c.WriterLinger, c.ReaderLinger = linger, linger })
}
