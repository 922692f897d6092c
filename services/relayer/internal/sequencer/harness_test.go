package sequencer

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// The sequencer's tests drive it through in-memory links (client): frames
// go in through Input.Frames as a link's reader would hand them, and come
// out decoded from what the sequencer delivers. No sockets: the transport
// has its own tests (package linkserver).

const waitFor = linktest.WaitFor

type harness struct {
	t    testing.TB
	dir  string
	s    *Sequencer
	reg  *prometheus.Registry
	logs *linktest.Logs
	stop func() error
}

func testConfig() Config {
	return Config{
		HistoryLimit:  100,
		DedupWindow:   1000,
		PresenceGrace: 200 * time.Millisecond,
		QueueBytes:    1 << 20,
		InflightBytes: 2 << 20,
		CompactBytes:  1 << 30,
	}
}

// start runs a sequencer on dir (a new temporary one when empty); it is
// stopped at the end of the test unless stopped before.
func start(t testing.TB, dir string, tweak func(*Config)) *harness {
	t.Helper()
	h, run := startPaused(t, dir, tweak)
	run()
	return h
}

// startPaused is start with the sequencer's Run held until run is called:
// links open and hand over frames, nothing is applied.
func startPaused(t testing.TB, dir string, tweak func(*Config)) (h *harness, run func()) {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := testConfig()
	if tweak != nil {
		tweak(&cfg)
	}
	logs := &linktest.Logs{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	st, err := store.Open(dir, store.Options{Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, st)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var runOnce sync.Once
	run = func() { runOnce.Do(func() { go func() { done <- s.Run(ctx) }() }) }
	h = &harness{t: t, dir: dir, s: s, reg: reg, logs: logs}
	var once sync.Once
	var stopErr error
	h.stop = func() error {
		once.Do(func() {
			run() // so that there is a Run to stop
			cancel()
			stopErr = <-done
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return h, run
}

// client is an instance's link in memory: the sequencer's Link, and the
// test's end of it (linktest.Peer).
type client struct {
	*linktest.Peer
	in *Input

	mu      sync.Mutex
	stalled bool // a peer that stopped reading: output piles up
	owed    int  // bytes delivered while stalled
	ended   bool
	code    CloseCode
	why     Drop
	done    chan struct{} // closed by Close
}

// dial opens a link of instance inst.
func (h *harness) dial(inst string) *client {
	h.t.Helper()
	c := &client{done: make(chan struct{})}
	c.Peer = linktest.NewPeer(h.t, inst, c.write)
	in, ok := h.s.Open(inst, c, h.s.log.With("instance", inst))
	if !ok {
		h.t.Fatalf("open %s: the sequencer has stopped", inst)
	}
	c.in = in
	return c
}

// write hands one link message to the sequencer, decoded anew as the
// link's reader would.
func (c *client) write(msg []byte) {
	c.T.Helper()
	var frames []*link.Frame
	if err := link.Split(msg, func(f *link.Frame) error { frames = append(frames, f); return nil }); err != nil {
		c.T.Fatal(err)
	}
	if err := c.in.Frames(context.Background(), frames, int64(len(msg))); err != nil {
		c.T.Fatalf("%s: frames: %v", c.Inst, err)
	}
}

// Deliver implements Link: it decodes frames as the peer would.
func (c *client) Deliver(frames [][]byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	owed := c.owed
	if c.ended {
		return owed
	}
	for _, b := range frames {
		if c.stalled {
			c.owed += len(b)
			continue
		}
		if err := link.Split(b, func(f *link.Frame) error {
			c.Frames <- f
			return nil
		}); err != nil {
			c.T.Errorf("%s: delivered an undecodable frame: %v", c.Inst, err)
		}
	}
	return owed
}

// Owes implements Link.
func (c *client) Owes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.owed
}

// Close implements Link.
func (c *client) Close(code CloseCode, reason string, flush bool, why Drop) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.ended, c.code, c.why = true, code, why
	close(c.done)
}

// stall makes c a peer that no longer reads.
func (c *client) stall() {
	c.mu.Lock()
	c.stalled = true
	c.mu.Unlock()
}

// drop ends the link from the peer's side: its connection is gone.
func (c *client) drop() { c.in.Closed() }

// closed waits for the sequencer to close the link and returns its code
// and why.
func (c *client) closed() (CloseCode, Drop) {
	c.T.Helper()
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.code, c.why
	case <-time.After(waitFor):
		c.T.Fatalf("%s: link still open after %s", c.Inst, waitFor)
		return 0, ""
	}
}

// recorder is a Link that keeps what it is delivered, for tests and
// benchmarks that call apply by hand.
type recorder struct{ out []byte }

// Deliver takes the frames at once: it never owes any.
func (r *recorder) Deliver(frames [][]byte) int {
	for _, f := range frames {
		r.out = append(r.out, f...)
	}
	return 0
}

func (r *recorder) Owes() int                           { return 0 }
func (r *recorder) Close(CloseCode, string, bool, Drop) {}

// openByHand opens a link on s without Run: the open event is applied at
// once.
func openByHand(tb testing.TB, s *Sequencer, inst string) (*Input, *recorder) {
	rec := &recorder{}
	in := s.newInput(inst, rec, s.log)
	if err := s.apply([]event{{kind: evOpen, in: in}}); err != nil {
		tb.Fatal(err)
	}
	return in, rec
}

func seqs(msgs []protocol.Message) []uint64 {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Seq
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}
