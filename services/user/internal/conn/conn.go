package conn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/wsconn"
)

// Conn is one client WebSocket connection.
//
// Its reader goroutine reads, decodes and paces the client's frames and
// hands them to the Session; its writer goroutine, started by the first
// frame queued and retired by the Server's sweep once idle, writes what is
// queued in batches. Send, SendLazy, SendLive, SendError, SetCatchingUp,
// Drained, Closing, Close and CloseAfter may be called from any goroutine.
type Conn struct {
	s       *Server
	id      string
	ws      *websocket.Conn
	sock    *wsconn.Conn // ws's socket: the writer sends each batch in one write
	addr    netip.Prefix
	session Session

	// Owned by the reader goroutine.
	started bool // a valid frame was received
	bucket  tokenBucket
	// pause is how long the reader waits for a token before it reads the
	// next frame; overSince is when the client's frames began to wait
	// for tokens without a break (zero: they do not).
	pause     time.Duration
	overSince time.Time

	// catchingUp: the writer calls Session.Wrote after each batch.
	catchingUp atomic.Bool

	resume    func() // serve, for a parked reader's next goroutine
	q         queue
	done      chan struct{}
	closeOnce sync.Once
	// inWrite is set while the writer writes. The Server's sweep watches
	// sock.Written move meanwhile: sweepWritten is what it saw last,
	// stalled for how many sweeps in a row it has not moved (a count of
	// sweeps, not a clock: no time.Now per write). Both are guarded by
	// s.mu.
	inWrite      atomic.Bool
	sweepWritten uint64
	stalled      int64
	// Written once, before done is closed; read by the writer after.
	code   websocket.StatusCode
	reason string
	flush  bool
}

func newConn(s *Server, ws *websocket.Conn, cc *wsconn.Conn, addr netip.Prefix) *Conn {
	c := &Conn{
		s: s, id: s.newID(), ws: ws, sock: cc, addr: addr,
		q:      queue{limit: s.cfg.SendQueue, limitBytes: s.cfg.SendQueueBytes, wake: make(chan struct{}, 1)},
		done:   make(chan struct{}),
		bucket: tokenBucket{rate: s.cfg.RatePerSec, burst: float64(s.cfg.RateBurst), tokens: float64(s.cfg.RateBurst)},
	}
	c.resume = c.serve
	return c
}

// ID returns the connection's id, unique to the instance.
func (c *Conn) ID() string { return c.id }

// serve reads the connection until it fails or is closed, then cleans up;
// or, idle, it parks the socket and returns, to run again on a goroutine of
// its own when the socket is readable or the connection closed.
func (c *Conn) serve() {
	parked, err := c.readLoop()
	if parked {
		return
	}
	s := c.s
	defer s.wg.Done()
	c.session.Closed()
	c.close(websocket.StatusNormalClosure, "", false)
	// Its slot is free for the next connection at once, whatever the
	// writer still does.
	s.release(c)
	// Closed, the queue claims no more writers, and counted every one it
	// claimed before: waiting is safe.
	writersDone := make(chan struct{})
	go func() {
		c.q.writers.Wait()
		close(writersDone)
	}()
	t := time.NewTimer(5 * time.Second)
	select {
	case <-writersDone:
	case <-t.C:
		c.ws.CloseNow() // the writer is stuck on a dead peer
		<-writersDone
	}
	t.Stop()
	s.forget(c)
	if websocket.CloseStatus(err) == -1 {
		s.log.Debug("client read ended", "member", c.id, "err", err)
	}
}

// readLoop reads until the connection fails or is closed, or it is parked.
// Read gets no cancellable context: that would arm a callback per frame,
// and closing the connection ends the read anyway.
func (c *Conn) readLoop() (parked bool, err error) {
	s := c.s
	linger := s.cfg.ReaderLinger
	if s.poller == nil {
		linger = 0 // wait here for as long as it takes
	}
	for {
		if c.pause > 0 && !c.waitForToken() {
			return false, errRateLimited
		}
		// A connection's reader waits here, with a shallow stack, rather
		// than inside Read (see wsconn.WaitReadable); after ReaderLinger
		// with nothing to read it hands the socket over to the poller and
		// its goroutine ends. The frame is handled further down, to keep
		// this function's frame small.
		if !c.sock.WaitReadable(linger) {
			parked, err := c.sock.Park(s.poller, c.resume)
			if parked {
				return true, nil
			}
			if err != nil {
				// Out of epoll watches, or the poller stopped: this
				// reader waits on its goroutine from now on.
				level := slog.LevelDebug
				if s.parkFailed.CompareAndSwap(false, true) {
					level = slog.LevelWarn // once per process
				}
				s.log.Log(context.Background(), level, "idle connection cannot be parked; its reader keeps its goroutine",
					"member", c.id, "err", err)
				linger = 0
			}
			continue
		}
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			if errors.Is(err, wsconn.ErrFrameTimeout) {
				c.frameTimedOut()
			}
			return false, err
		}
		c.pause = c.bucket.take(time.Now())
		c.handle(typ, data)
	}
}

// frameTimedOut closes a connection whose message stalled half-way (see
// Config.FrameReadTimeout) with 1008. The close handshake does not wait
// for such a peer: its read deadline has passed for good.
func (c *Conn) frameTimedOut() {
	s := c.s
	s.m.FrameTimeouts.Inc()
	s.log.Info("client message not completed in time; closing", "member", c.id, "timeout", s.cfg.FrameReadTimeout)
	c.close(websocket.StatusPolicyViolation,
		fmt.Sprintf("frame read timeout: a message must arrive whole within %s of its first byte", s.cfg.FrameReadTimeout), false)
}

// errRateLimited ends the reader of a client closed by waitForToken.
var errRateLimited = errors.New("client stayed over the rate limit; closed")

// waitForToken holds the client's next frame unread (its bytes stay in the
// socket, and TCP slows the sender down) until the token bucket has a
// token for it, or the connection closes. A client whose frames have
// waited for tokens without a break for RateLimitCloseAfter is closed
// with 1008 instead, and false returned.
func (c *Conn) waitForToken() bool {
	s := c.s
	now := time.Now()
	if c.overSince.IsZero() {
		c.overSince = now
	}
	if after := s.cfg.RateLimitCloseAfter; after > 0 && now.Sub(c.overSince) >= after {
		s.m.RateLimitCloses.Inc()
		s.log.Info("client over the rate limit for too long; closing", "member", c.id,
			"rate", s.cfg.RatePerSec, "burst", s.cfg.RateBurst, "after", after)
		// Flushed: the client gets the answers to what it sent in time.
		c.close(websocket.StatusPolicyViolation,
			fmt.Sprintf("rate limit: over %g frames/s for %s; slow down", s.cfg.RatePerSec, after), true)
		return false
	}
	s.m.RateLimitWaits.Inc()
	t := time.NewTimer(c.pause)
	select {
	case <-t.C:
	case <-c.done:
		t.Stop() // closed: the read below fails and the reader cleans up
	}
	c.pause = 0
	// The streak goes on only while the next frame is there already: a
	// client that sends at the rate, or paused, is not over the limit.
	if !c.sock.Pending() {
		c.overSince = time.Time{}
	}
	return true
}

func (c *Conn) handle(typ websocket.MessageType, data []byte) {
	c.s.m.FramesIn.Inc()
	if typ != websocket.MessageText {
		c.SendError(protocol.Errorf(protocol.CodeBadRequest, "binary frames are not supported; send JSON text frames"))
		return
	}
	in, perr := protocol.Decode(data, c.s.cfg.Rules)
	if perr != nil {
		c.SendError(perr)
		return
	}
	first := !c.started
	c.started = true
	switch in.Type {
	case protocol.TypeChat:
		c.session.Frame(in, first)
	case protocol.TypePing:
		c.Send(protocol.AppendPong(nil, in.ID))
	default:
		aside(func() { c.session.Frame(in, first) })
	}
}

// aside runs f on a goroutine of its own and waits for it. Answering a
// hello, a join or a history request takes a deep stack (encoding/json for
// the welcome, the bus's frames, sorting members); grown on the reader, it
// would stay with an idle connection until later GCs halve it, one cycle
// at a time.
func aside(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// Closing reports whether the connection is closing or closed: nothing
// more reaches its client.
func (c *Conn) Closing() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Close closes the connection with code (RFC 6455 §7.4) and reason, at
// once: what is queued is dropped. Only the first close counts.
func (c *Conn) Close(code int, reason string) {
	c.close(websocket.StatusCode(code), reason, false)
}

// CloseAfter closes the connection with code and reason once what is
// queued is written, such as the error frame that says why. Only the first
// close counts.
func (c *Conn) CloseAfter(code int, reason string) {
	c.close(websocket.StatusCode(code), reason, true)
}

// close closes the connection with code and reason: at once, or when
// flush is set, by the writer after it wrote what is queued. Only the first
// call counts.
func (c *Conn) close(code websocket.StatusCode, reason string, flush bool) {
	c.closeOnce.Do(func() {
		c.code, c.reason, c.flush = code, reason, flush
		close(c.done)
		if c.q.close(flush) {
			c.startWriter() // it sees done at once and flushes
		}
		if !flush {
			// Close may wait on a writer blocked by a slow peer; it gives
			// up on the handshake after a few seconds by itself.
			go c.closeConn(code, reason)
		}
	})
}

// closeConn closes the connection with a close handshake, which reads the
// connection besides the reader. A client closed for what it sent (a
// policy violation: over the rate limit, a refused token) may go on
// sending: its close frame is not waited for, nor what it sends read.
func (c *Conn) closeConn(code websocket.StatusCode, reason string) {
	c.sock.EndWaits()
	if code == websocket.StatusPolicyViolation || code >= 4000 {
		c.sock.StopReading()
	}
	c.ws.Close(code, reason)
}

// tokenBucket paces a client's frames: each frame read takes a token, and
// with none left the reader waits for the next before it reads on.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take spends a token on a frame read at now and returns how long the
// reader must wait before it reads the next one: 0 while tokens are left.
func (b *tokenBucket) take(now time.Time) time.Duration {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	b.tokens--
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}
