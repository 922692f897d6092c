package hub

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/conn"
)

// The tests here drive a hub through real connections (package conn) on a
// loopback server, as clients would; hub_test.go drives it through fake
// Peers.

type connConfig = conn.Config

// stackConfig is what a test sets: the hub's settings and its
// connections'.
type stackConfig struct {
	Config
	connConfig
}

// startHub serves a hub with a standalone bus on a loopback test server;
// linger is its connections' WriterLinger and ReaderLinger (0: the
// defaults).
func startHub(t *testing.T, linger time.Duration) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubWith(t, func(c *stackConfig) { c.WriterLinger, c.ReaderLinger = linger, linger })
}

// startHubWith is startHub with the test's own settings.
func startHubWith(t *testing.T, set func(*stackConfig)) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubOn(t, set, nil)
}

// startHubOn is startHubWith with the standalone bus seen through wrap
// (nil: as it is).
func startHubOn(t *testing.T, set func(*stackConfig), wrap func(*Hub, bus.Bus) bus.Bus) (*Hub, *httptest.Server) {
	t.Helper()
	return startHubBus(t, set, func(h *Hub) bus.Bus {
		b := bus.NewLocal(h, 100)
		if wrap != nil {
			return wrap(h, b)
		}
		return b
	})
}

// startHubBus is startHubWith on the bus mk makes for the hub. The
// server's handler is the hub's conn.Server (see connsOf).
func startHubBus(t *testing.T, set func(*stackConfig), mk func(*Hub) bus.Bus) (*Hub, *httptest.Server) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := stackConfig{
		Config: Config{Instance: "test", HistorySize: 50, HistoryLimit: 100, MaxRooms: 8, Sweep: 20 * time.Millisecond,
			Logger: log, Metrics: NewMetrics(prometheus.NewRegistry())},
		connConfig: conn.Config{SendQueue: 64, SendQueueBytes: 1 << 20, RatePerSec: 1000, RateBurst: 1000, MaxFrame: 16384,
			Rules:  protocol.Rules{MaxRoomBytes: 64, MaxNickBytes: 32, MaxMessageBytes: 4096},
			Logger: log, Metrics: conn.NewMetrics(prometheus.NewRegistry())},
	}
	if set != nil {
		set(&cfg)
	}
	cfg.Config.Limits = cfg.connConfig.Limits()
	h := New(cfg.Config)
	b := mk(h)
	h.SetBus(b)
	conns := conn.New(cfg.connConfig, h)
	ctx, cancel := context.WithCancel(context.Background())
	runs := []func(context.Context){func(ctx context.Context) { _ = b.Run(ctx) }, h.Run, conns.Run}
	if cfg.Control {
		runs = append(runs, h.RunControl)
	}
	done := make([]chan struct{}, len(runs))
	for i, run := range runs {
		done[i] = make(chan struct{})
		go func() {
			defer close(done[i])
			run(ctx)
		}()
	}
	srv := httptest.NewServer(conns)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		h.Shutdown(sctx)
		conns.Shutdown(sctx)
		srv.Close()
		cancel()
		for _, d := range done {
			<-d
		}
	})
	return h, srv
}

// connsOf returns the connections of a server startHubBus started.
func connsOf(srv *httptest.Server) *conn.Server { return srv.Config.Handler.(*conn.Server) }

// bigChat is a seed chat frame of 4 KB to room r.
var bigChat = fmt.Sprintf(`{"type":"chat","room":"r","message":"%s"}`, strings.Repeat("x", 4000))
