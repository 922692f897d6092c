// Package linkserver is ws-relayer's transport: it accepts relay links
// (HTTP upgrade, the shared secret), reads their frames into the sequencer
// and writes the sequencer's output back (linkws.Writer), with a keepalive.
// It holds no room state: that is the sequencer's, which knows a link only
// as a sequencer.Link.
package linkserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/protocol/link/linkws"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
)

// Config configures a Server.
type Config struct {
	Secret        string
	MaxFrameBytes int64         // per-link read limit
	PingInterval  time.Duration // keepalive; a ping unanswered for twice this drops the link
	// FlushDelay, when positive, makes a link's writer wait that long
	// after output appears before sending it (linkws.NewWriter).
	FlushDelay time.Duration
	Logger     *slog.Logger
	Registry   prometheus.Registerer
}

// Server serves relay links for one sequencer. ServeHTTP runs a link for
// as long as it lives, on the request's goroutine and two of its own;
// WaitLinks may be called from any goroutine.
type Server struct {
	cfg      Config
	seq      *sequencer.Sequencer
	log      *slog.Logger
	authHash [sha256.Size]byte
	m        *metrics

	mu    sync.Mutex // guards live
	live  map[*conn]struct{}
	links sync.WaitGroup // one per ServeHTTP past the upgrade
}

// New returns a Server that opens links on seq.
func New(cfg Config, seq *sequencer.Sequencer) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("register link metrics: %w", err)
	}
	return &Server{
		cfg: cfg, seq: seq, log: cfg.Logger, m: m,
		authHash: sha256.Sum256([]byte("Bearer " + cfg.Secret)),
		live:     map[*conn]struct{}{},
	}, nil
}

// ServeHTTP accepts a relay link and runs it until it ends.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r.Header.Get("Authorization")) {
		s.log.Warn("relay link refused: bad or missing secret", "remote", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="wschat relay link"`)
		http.Error(w, `relay link refused: send "Authorization: Bearer <RELAY_SECRET>" with the relayer's RELAY_SECRET`, http.StatusUnauthorized)
		return
	}
	inst := r.Header.Get(link.HeaderInstance)
	if inst == "" {
		http.Error(w, "relay link refused: the "+link.HeaderInstance+" header (the ws-user instance id) is required", http.StatusBadRequest)
		return
	}
	if err := sequencer.ValidInstance(inst); err != nil {
		http.Error(w, "relay link refused: "+link.HeaderInstance+" "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set(link.HeaderEpoch, s.seq.Epoch())
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.log.Warn("relay link upgrade failed", "remote", r.RemoteAddr, "instance", inst, "err", err)
		return
	}
	ws.SetReadLimit(s.cfg.MaxFrameBytes)
	// Detached from the request: only Close and kill end a link, so that
	// shutdown can flush it first.
	ctx, kill := context.WithCancel(context.WithoutCancel(r.Context()))
	c := &conn{
		srv: s, ws: ws, w: linkws.NewWriter(ws, s.cfg.FlushDelay),
		log: s.log.With("instance", inst, "remote", r.RemoteAddr),
		ctx: ctx, kill: kill,
	}
	s.register(c)
	// Unregistered last: WaitLinks returning means the connection is gone.
	defer s.unregister(c)
	defer kill()
	defer ws.CloseNow()
	in, ok := s.seq.Open(inst, c, c.log)
	if !ok {
		ws.Close(websocket.StatusServiceRestart, "relayer restarting")
		return
	}
	c.run(in)
}

func (s *Server) register(c *conn) {
	s.mu.Lock()
	s.live[c] = struct{}{}
	s.links.Add(1)
	s.mu.Unlock()
	s.m.links.Inc()
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.live, c)
	s.mu.Unlock()
	s.m.links.Dec()
	s.links.Done()
}

// WaitLinks waits until every link has ended, or ctx ends and then cuts
// the remaining connections. The sequencer's Run closes them when it
// stops; call this after, and after the HTTP server stopped accepting.
func (s *Server) WaitLinks(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.links.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.live)
	for c := range s.live {
		c.kill()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("%d relay links did not close in time and were cut", n)
}

// authorized compares in constant time; hashing first also hides the
// secret's length.
func (s *Server) authorized(header string) bool {
	got := sha256.Sum256([]byte(header))
	return subtle.ConstantTimeCompare(got[:], s.authHash[:]) == 1
}
