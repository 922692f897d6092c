package linkserver

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

const (
	testSecret = "test-secret-123"
	waitFor    = linktest.WaitFor
)

// The link server's tests run a sequencer behind it, over real loopback
// WebSockets: what they test is the transport, not the rooms.

type harness struct {
	t    testing.TB
	seq  *sequencer.Sequencer
	ls   *Server
	srv  *httptest.Server
	logs *linktest.Logs
	stop func() error
}

// config is the link server's and the sequencer's configuration, one
// tweak for both.
type config struct {
	Config
	seq sequencer.Config
}

// start runs a sequencer on a new temporary directory behind a Server and
// an httptest server; it is stopped at the end of the test unless stopped
// before.
func start(t testing.TB, tweak func(*config)) *harness {
	t.Helper()
	cfg := config{
		Config: Config{Secret: testSecret, MaxFrameBytes: 1 << 20, PingInterval: time.Second},
		seq:    sequencer.Config{HistoryLimit: 100, DedupWindow: 1000, PresenceGrace: 200 * time.Millisecond, QueueBytes: 1 << 20, CompactBytes: 1 << 30},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	logs := &linktest.Logs{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.seq.Logger = cfg.Logger
	cfg.Registry = prometheus.NewRegistry()
	cfg.seq.Registry = cfg.Registry
	st, err := store.Open(t.TempDir(), store.Options{Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	seq, err := sequencer.New(cfg.seq, st)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ls, err := New(cfg.Config, seq)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- seq.Run(ctx) }()
	srv := httptest.NewServer(ls)
	h := &harness{t: t, seq: seq, ls: ls, srv: srv, logs: logs}
	var once sync.Once
	var stopErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
			wctx, wcancel := context.WithTimeout(context.Background(), waitFor)
			defer wcancel()
			if err := ls.WaitLinks(wctx); err != nil {
				stopErr = errors.Join(stopErr, err)
			}
			srv.Close()
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return h
}

func (h *harness) url() string { return "ws" + strings.TrimPrefix(h.srv.URL, "http") + link.Path }

// client is an instance's end of a link over a WebSocket.
type client struct {
	*linktest.Peer
	ws   *websocket.Conn
	msgs chan int      // WebSocket messages received, by frame count
	done chan struct{} // closed when the reader stopped
	err  error         // why the reader stopped; read after done
}

func (h *harness) dial(inst string) *client {
	h.t.Helper()
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+testSecret)
	hdr.Set(link.HeaderInstance, inst)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, h.url(), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		h.t.Fatalf("dial %s: %v", inst, err)
	}
	ws.SetReadLimit(-1)
	c := &client{ws: ws, msgs: make(chan int, 1<<16), done: make(chan struct{})}
	c.Peer = linktest.NewPeer(h.t, inst, c.write)
	go func() {
		defer close(c.done)
		for {
			_, data, err := ws.Read(context.Background())
			if err != nil {
				c.err = err
				return
			}
			n := 0
			if err := link.Split(data, func(f *link.Frame) error {
				n++
				c.Frames <- f
				return nil
			}); err != nil {
				c.err = err
				return
			}
			select {
			case c.msgs <- n:
			default:
			}
		}
	}()
	h.t.Cleanup(func() { ws.CloseNow() })
	return c
}

// write sends one link message.
func (c *client) write(msg []byte) {
	c.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, msg); err != nil {
		c.T.Fatalf("%s: write: %v", c.Inst, err)
	}
}

// closed waits for the link to end and returns its close status.
func (c *client) closed() websocket.StatusCode {
	c.T.Helper()
	select {
	case <-c.done:
		return websocket.CloseStatus(c.err)
	case <-time.After(waitFor):
		c.T.Fatalf("%s: link still open after %s", c.Inst, waitFor)
		return 0
	}
}
