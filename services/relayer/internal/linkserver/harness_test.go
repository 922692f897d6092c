package linkserver

import (
	"bytes"
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

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

const (
	testSecret = "test-secret-123"
	waitFor    = 5 * time.Second
)

// syncBuffer collects logs written from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// The link server's tests run a sequencer behind it, over real loopback
// WebSockets: what they test is the transport, not the rooms.

type harness struct {
	t    testing.TB
	seq  *sequencer.Sequencer
	ls   *Server
	srv  *httptest.Server
	logs *syncBuffer
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
	logs := &syncBuffer{}
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

type client struct {
	t      testing.TB
	inst   string
	ws     *websocket.Conn
	frames chan *link.Frame
	msgs   chan int // WebSocket messages received, by frame count
	done   chan struct{}
	err    error // why the reader stopped; read after done
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
	c := &client{t: h.t, inst: inst, ws: ws, frames: make(chan *link.Frame, 1<<16), msgs: make(chan int, 1<<16), done: make(chan struct{})}
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
				c.frames <- f
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

func (c *client) send(frames ...*link.Frame) {
	c.t.Helper()
	var b []byte
	for _, f := range frames {
		var err error
		if b, err = link.Append(b, f); err != nil {
			c.t.Fatal(err)
		}
	}
	c.sendRaw(b)
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("%s: write: %v", c.inst, err)
	}
}

// next returns the next frame, failing the test after a deadline.
func (c *client) next() *link.Frame {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(waitFor):
		c.t.Fatalf("%s: no frame within %s", c.inst, waitFor)
		return nil
	}
}

// expect returns the next frame and checks its op.
func (c *client) expect(op string) *link.Frame {
	c.t.Helper()
	f := c.next()
	if f.T != op {
		c.t.Fatalf("%s: got %s frame %+v, want %s", c.inst, f.T, f, op)
	}
	return f
}

// closed waits for the link to end and returns its close status.
func (c *client) closed() websocket.StatusCode {
	c.t.Helper()
	select {
	case <-c.done:
		return websocket.CloseStatus(c.err)
	case <-time.After(waitFor):
		c.t.Fatalf("%s: link still open after %s", c.inst, waitFor)
		return 0
	}
}

// sync sends the first frame and consumes the subscribed answers.
func (c *client) sync(rooms ...link.RoomState) []*link.Frame {
	c.t.Helper()
	if rooms == nil {
		rooms = []link.RoomState{}
	}
	c.send(&link.Frame{T: link.OpSync, Rooms: rooms})
	var out []*link.Frame
	for range rooms {
		out = append(out, c.expect(link.OpSubscribed))
	}
	return out
}

func (c *client) pub(mid, room, text string) {
	c.t.Helper()
	c.send(pubFrame(mid, room, text))
}

func pubFrame(mid, room, text string) *link.Frame {
	return &link.Frame{T: link.OpPub, MID: mid, Msg: &protocol.Message{Room: room, Text: text, From: "nick", UID: "u-" + mid}}
}
