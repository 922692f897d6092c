// Package conn owns an instance's client sockets: it upgrades them, reads
// and decodes their frames, paces them (rate limit), queues and batches what
// is written to them, parks idle ones, and bounds them (MAX_CONNS, per
// address, slow consumers, write and frame timeouts). It knows nothing of
// rooms: each connection hands its decoded frames to a Session the Handler
// gave it, and sends what the Session's owner queues through the Conn.
//
// Locks: Server.mu guards the sets of connections and of running writers,
// Server.lazyMu the connections with lazy frames, and a Conn's queue has its
// own; Server.mu may be held while taking a queue's lock, never the other
// way round. A Session's owner may call a Conn's methods while holding its
// own lock; a Conn never calls its Session with a lock of this package
// held.
package conn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/park"
	"github.com/wschat/wschat/services/user/internal/wsconn"
)

// Config sets the limits of the connections a Server holds.
type Config struct {
	MaxFrame int64 // MAX_FRAME_BYTES: read limit of one client frame
	Rules    protocol.Rules
	// SendQueue and SendQueueBytes bound a connection's queue of frames
	// to write (see Conn.SendLive and Conn.Send).
	SendQueue      int
	SendQueueBytes int
	RatePerSec     float64
	RateBurst      int
	// RateLimitCloseAfter: a client whose frames wait for tokens without
	// a break for this long is closed with 1008 (0: never).
	RateLimitCloseAfter time.Duration
	// FrameReadTimeout: once a client's message has started to arrive,
	// all of it must within this long, or the connection is closed with
	// 1008 (0: no bound). Idle time between messages does not count.
	FrameReadTimeout time.Duration
	// WriterLinger is Run's sweep interval (default 250ms): a writer
	// goroutine is retired one to two intervals after the last frame
	// queued for its connection; the next frame starts another.
	WriterLinger time.Duration
	// ReaderLinger is how long a connection's reader waits for a frame on
	// its goroutine (default 250ms); then, where it can (Linux), it parks
	// the socket (package park) and the goroutine ends until the next.
	ReaderLinger time.Duration
	// LazyDelay is how long frames queued with SendLazy may wait for the
	// connection's next frame before they are written anyway (0: at once).
	LazyDelay time.Duration
	// MaxConns bounds the connections held; an upgrade past it is refused
	// with 503 (0: no bound).
	MaxConns int
	// MaxConnsPerAddr bounds the connections held from one client address
	// (an IPv6 /64); an upgrade past it is refused with 429 (0: no bound).
	// Behind a proxy in TrustedProxies, the address is the one it names
	// in X-Real-IP (or X-Forwarded-For).
	MaxConnsPerAddr int
	TrustedProxies  []netip.Prefix
	// Origins are the allowed Origin host patterns; empty means the
	// request's own host only.
	Origins []string
	// WriteTimeout bounds how long a write to a client may make no
	// progress (a peer that stopped reading, its buffers full) before the
	// connection is closed; Run's sweep checks it (0: no bound).
	WriteTimeout time.Duration
	Logger       *slog.Logger
	Metrics      *Metrics
}

// Limits returns the part of what clients are told in welcome that this
// package enforces.
func (c Config) Limits() protocol.Limits {
	return protocol.Limits{
		MaxFrameBytes: int(c.MaxFrame), MaxMessageBytes: c.Rules.MaxMessageBytes,
		RatePerSecond: c.RatePerSec, RateBurst: c.RateBurst,
	}
}

// Handler is told of every connection a Server accepts.
type Handler interface {
	// Open returns the Session that receives c's frames. It is called
	// once, before c's first frame is read, with the upgrade's token query
	// parameter (a credential the handler checks; empty when none): a
	// browser cannot set headers on a WebSocket. Open may close c, with
	// CloseAfter to explain why; it must not set c catching up.
	Open(c *Conn, token string) Session
}

// Session is one connection's owner: what it is told of the connection.
// Its methods are called on the connection's goroutines, without locks of
// this package held.
type Session interface {
	// Frame is called with each valid frame other than ping, in order; first
	// is set for the connection's first.
	Frame(in protocol.Inbound, first bool)
	// Wrote is called after each batch the writer sent while catching
	// up is set (Conn.SetCatchingUp): the queue has room again.
	Wrote()
	// Closed is called once, when the connection has ended; no Frame
	// follows.
	Closed()
}

// Server accepts and holds client connections.
type Server struct {
	cfg  Config
	log  *slog.Logger
	m    *Metrics
	h    Handler
	bufs wsconn.Pool // connections' write batches and read chunks
	// poller holds idle connections' sockets; nil where there is none
	// (their readers then wait on their goroutines).
	poller     *park.Poller
	parkFailed atomic.Bool    // logged once
	wg         sync.WaitGroup // connection goroutines
	nonce      string
	ids        atomic.Uint64

	mu    sync.Mutex
	conns map[*Conn]struct{}
	// closed holds the connections released but not yet forgotten: their
	// writer may still be flushing (Shutdown cuts them at its deadline).
	closed map[*Conn]struct{}
	// upgrading counts upgrades under way, which MaxConns counts too.
	upgrading int
	// perAddr counts connections and upgrades by client address, for
	// MaxConnsPerAddr (only when it is set).
	perAddr map[netip.Prefix]int
	writing map[*Conn]struct{} // connections whose writer runs, for Run's sweep
	closing bool

	// lazy holds the connections with lazy frames queued; lazyTimer
	// flushes them LazyDelay after the first.
	lazyMu    sync.Mutex
	lazy      map[*Conn]struct{}
	lazySpare map[*Conn]struct{} // the map a flush emptied, for the next
	lazyTimer *time.Timer
}

// New returns a Server handing its connections to h. Run must run for idle
// connections' writers to be retired, and Shutdown releases what it holds.
func New(cfg Config, h Handler) *Server {
	if cfg.WriterLinger <= 0 {
		cfg.WriterLinger = 250 * time.Millisecond
	}
	if cfg.ReaderLinger <= 0 {
		cfg.ReaderLinger = 250 * time.Millisecond
	}
	poller, err := park.New()
	if err != nil {
		cfg.Logger.Info("idle connections keep their reader goroutines", "err", err)
		poller = nil
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	s := &Server{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics, h: h,
		poller:  poller,
		nonce:   hex.EncodeToString(b),
		conns:   map[*Conn]struct{}{},
		closed:  map[*Conn]struct{}{},
		perAddr: map[netip.Prefix]int{},
		writing: map[*Conn]struct{}{},
		lazy:    map[*Conn]struct{}{},
	}
	s.lazyTimer = time.AfterFunc(time.Hour, s.flushLazy)
	s.lazyTimer.Stop()
	return s
}

// Len returns the number of connections held.
func (s *Server) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Writers returns the number of connections whose writer runs.
func (s *Server) Writers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.writing)
}

// ServeHTTP upgrades r to a WebSocket connection and serves it until it
// closes, on a goroutine of its own: the handler returns at once.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var addr netip.Prefix
	if s.cfg.MaxConnsPerAddr > 0 {
		addr, _ = clientAddr(r, s.cfg.TrustedProxies)
	}
	s.mu.Lock()
	if max := s.cfg.MaxConns; max > 0 && len(s.conns)+s.upgrading >= max {
		s.mu.Unlock()
		s.m.Refused.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("this instance holds its most connections (MAX_CONNS=%d); retry, or connect to another", max),
			http.StatusServiceUnavailable)
		return
	}
	if max := s.cfg.MaxConnsPerAddr; addr.IsValid() && s.perAddr[addr] >= max {
		s.mu.Unlock()
		s.m.RefusedPerAddr.Inc()
		s.log.Debug("connection refused: too many from one address", "addr", addr, "max", max)
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("too many connections from your address (MAX_CONNS_PER_ADDR=%d); close some and retry", max),
			http.StatusTooManyRequests)
		return
	}
	if addr.IsValid() {
		s.perAddr[addr]++
	}
	s.upgrading++
	s.mu.Unlock()
	cw := &wsconn.ResponseWriter{ResponseWriter: w, Pool: &s.bufs, FrameTimeout: s.cfg.FrameReadTimeout}
	ws, err := websocket.Accept(cw, r, &websocket.AcceptOptions{
		OriginPatterns:  s.cfg.Origins,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		s.mu.Lock()
		s.upgrading--
		s.releaseAddrLocked(addr)
		s.mu.Unlock()
		s.log.Debug("websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(s.cfg.MaxFrame)
	c := newConn(s, ws, cw.Conn, addr)
	// Before the connection is anyone's to close: a close flushes through
	// a writer, which may ask the session for more.
	c.session = s.h.Open(c, r.URL.Query().Get("token"))
	s.mu.Lock()
	s.upgrading--
	if s.closing {
		s.releaseAddrLocked(addr)
		s.mu.Unlock()
		c.session.Closed() // opened: its owner forgets it (a token's timer, say)
		ws.Close(websocket.StatusServiceRestart, "service restart: reconnect to another instance")
		return
	}
	s.conns[c] = struct{}{}
	s.m.Connections.Set(float64(len(s.conns)))
	s.wg.Add(1)
	s.mu.Unlock()

	// net/http's goroutine, its stack and the request are freed, which
	// is a good part of what an idle connection would otherwise cost.
	go c.serve()
}

// releaseAddrLocked uncounts a connection from addr (zero: not counted).
// s.mu must be held.
func (s *Server) releaseAddrLocked(addr netip.Prefix) {
	if !addr.IsValid() {
		return
	}
	if s.perAddr[addr] <= 1 {
		delete(s.perAddr, addr)
		return
	}
	s.perAddr[addr]--
}

// release uncounts an ended connection from MAX_CONNS and
// MAX_CONNS_PER_ADDR; its goroutines may still be finishing.
func (s *Server) release(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	s.closed[c] = struct{}{}
	s.releaseAddrLocked(c.addr)
	s.m.Connections.Set(float64(len(s.conns)))
}

// forget removes an ended connection whose writer has finished.
func (s *Server) forget(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.closed, c)
	delete(s.writing, c)
}

// noteLazy notes that c has lazy frames queued.
func (s *Server) noteLazy(c *Conn) {
	s.lazyMu.Lock()
	if len(s.lazy) == 0 {
		s.lazyTimer.Reset(s.cfg.LazyDelay)
	}
	if s.lazy == nil {
		s.lazy = map[*Conn]struct{}{}
	}
	s.lazy[c] = struct{}{}
	s.lazyMu.Unlock()
}

// flushLazy makes the writers of every connection with lazy frames write
// them.
func (s *Server) flushLazy() {
	s.lazyMu.Lock()
	lazy := s.lazy
	s.lazy, s.lazySpare = s.lazySpare, nil
	s.lazyMu.Unlock()
	for c := range lazy {
		if c.q.kick() {
			c.startWriter()
		}
	}
	if len(lazy) > 1024 {
		return // a storm's worth is not kept
	}
	clear(lazy)
	s.lazyMu.Lock()
	if s.lazySpare == nil {
		s.lazySpare = lazy
	}
	s.lazyMu.Unlock()
}

// Run does the connections' housekeeping until ctx ends, every
// WriterLinger: it asks the writers whose connection had no frame queued
// since the previous sweep to exit (an idle connection then holds no
// writer goroutine, and a busy writer is never woken for it), and closes
// connections whose write made no progress for WriteTimeout.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.WriterLinger)
	defer t.Stop()
	// A write is stuck once it sent nothing for this many sweeps.
	var stuck int64
	if s.cfg.WriteTimeout > 0 {
		stuck = max(1, int64((s.cfg.WriteTimeout+s.cfg.WriterLinger-1)/s.cfg.WriterLinger))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		for c := range s.writing {
			c.q.sweep()
			if stuck > 0 && c.stuck(stuck) {
				s.m.WriteTimeouts.Inc()
				s.log.Info("client write made no progress; closing", "member", c.id, "timeout", s.cfg.WriteTimeout)
				// The socket itself: the writer is blocked in it.
				c.sock.Close()
			}
		}
		s.mu.Unlock()
	}
}

// Refuse makes the Server refuse new connections (1012) from now on, and
// keeps those it has: the first step of a shutdown, while the hub waits for
// its publishes' acknowledgements.
func (s *Server) Refuse() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
}

// Shutdown refuses new connections, closes every connection with 1012
// after flushing its queue, and waits for their goroutines; those still
// there when ctx ends are cut. Then it releases the poller.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(websocket.StatusServiceRestart, "service restart: reconnect to another instance", true)
	}
	wait := make(chan struct{})
	go func() { s.wg.Wait(); close(wait) }()
	select {
	case <-wait:
	case <-ctx.Done():
		// The sockets themselves: CloseNow on a connection whose close
		// handshake is under way waits for it, seconds with a peer that
		// does not answer.
		s.mu.Lock()
		for c := range s.conns {
			c.sock.Close()
		}
		for c := range s.closed {
			c.sock.Close()
		}
		s.mu.Unlock()
	}
	if s.poller != nil {
		// Every connection is closed: any reader still parked is woken
		// by its close, and the poller's own resources go.
		s.poller.Close()
	}
}

// newID returns a connection id unique to the process and, with the
// random nonce, across its restarts.
func (s *Server) newID() string {
	return "u" + s.nonce + "." + strconv.FormatUint(s.ids.Add(1), 36)
}
