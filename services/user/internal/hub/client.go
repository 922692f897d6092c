package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/cork"
)

const statusServiceRestart = websocket.StatusServiceRestart

// Client is one WebSocket connection.
type Client struct {
	h      *Hub
	conn   *websocket.Conn
	cork   *cork.Conn // conn's socket: the writer sends each batch in one write
	member protocol.Member
	nick   string
	// session is the client's own (hello's), the key of its chats'
	// de-duplication with their ids; written before any chat, like nick.
	session string
	addr    netip.Prefix // what MaxConnsPerAddr counts it under; zero: not counted

	// Owned by the reader goroutine.
	started  bool // a valid frame was received
	extended bool // written once before any room is joined, then only read
	bucket   tokenBucket
	// pause is how long the reader waits for a token before it reads the
	// next frame; overSince is when the client's frames began to wait
	// for tokens without a break (zero: they do not).
	pause     time.Duration
	overSince time.Time

	rooms map[string]struct{} // guarded by h.mu

	// lagging is set while the client is behind in a room (see
	// Hub.fallBehindLocked): the writer asks for more after each batch.
	lagging atomic.Bool

	resume    func() // serve, for a parked reader's next goroutine
	q         queue
	writers   sync.WaitGroup // the writer, when running
	done      chan struct{}
	closeOnce sync.Once
	// inWrite is set while the writer writes. The hub's sweep (under
	// h.mu) watches cork.Written move meanwhile: sweepWritten is what it
	// saw last, stalled for how many sweeps in a row it has not moved (a
	// count of sweeps, not a clock: no time.Now per write).
	inWrite      atomic.Bool
	sweepWritten uint64
	stalled      int64
	code         websocket.StatusCode
	reason       string
	flush        bool
}

// Accept upgrades r to a WebSocket client of the hub and serves it until it
// closes. origins are the allowed Origin host patterns; empty means the
// request's own host only.
func (h *Hub) Accept(w http.ResponseWriter, r *http.Request, origins []string) {
	var addr netip.Prefix
	if h.cfg.MaxConnsPerAddr > 0 {
		addr, _ = clientAddr(r, h.cfg.TrustedProxies)
	}
	h.mu.Lock()
	if max := h.cfg.MaxConns; max > 0 && len(h.clients)+h.upgrading >= max {
		h.mu.Unlock()
		h.m.Refused.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("this instance holds its most connections (MAX_CONNS=%d); retry, or connect to another", max),
			http.StatusServiceUnavailable)
		return
	}
	if max := h.cfg.MaxConnsPerAddr; addr.IsValid() && h.perAddr[addr] >= max {
		h.mu.Unlock()
		h.m.RefusedPerAddr.Inc()
		h.log.Debug("connection refused: too many from one address", "addr", addr, "max", max)
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("too many connections from your address (MAX_CONNS_PER_ADDR=%d); close some and retry", max),
			http.StatusTooManyRequests)
		return
	}
	if addr.IsValid() {
		h.perAddr[addr]++
	}
	h.upgrading++
	h.mu.Unlock()
	cw := &cork.ResponseWriter{ResponseWriter: w, Pool: &h.bufs, FrameTimeout: h.cfg.FrameReadTimeout}
	conn, err := websocket.Accept(cw, r, &websocket.AcceptOptions{
		OriginPatterns:  origins,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		h.mu.Lock()
		h.upgrading--
		h.releaseAddrLocked(addr)
		h.mu.Unlock()
		h.log.Debug("websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn.SetReadLimit(h.cfg.MaxFrame)
	c := &Client{
		h: h, conn: conn, cork: cw.Conn, addr: addr,
		rooms:  map[string]struct{}{},
		q:      queue{limit: h.cfg.SendQueue, limitBytes: h.cfg.SendQueueBytes, wake: make(chan struct{}, 1)},
		done:   make(chan struct{}),
		bucket: tokenBucket{rate: h.cfg.RatePerSec, burst: float64(h.cfg.RateBurst), tokens: float64(h.cfg.RateBurst)},
	}
	c.member = protocol.Member{ID: h.newID("u"), Instance: h.cfg.Instance}
	c.resume = c.serve
	h.mu.Lock()
	h.upgrading--
	if h.closing {
		h.releaseAddrLocked(addr)
		h.mu.Unlock()
		conn.Close(statusServiceRestart, "service restart: reconnect to another instance")
		return
	}
	h.clients[c] = struct{}{}
	h.m.Connections.Set(float64(len(h.clients)))
	h.wg.Add(1)
	h.mu.Unlock()

	// The connection is served on a goroutine of its own and the handler
	// returns: net/http's goroutine, its stack and the request are freed,
	// which is a good part of what an idle connection would otherwise cost.
	go c.serve()
}

// releaseAddrLocked uncounts a connection from addr (zero: not counted).
// h.mu must be held.
func (h *Hub) releaseAddrLocked(addr netip.Prefix) {
	if !addr.IsValid() {
		return
	}
	if h.perAddr[addr] <= 1 {
		delete(h.perAddr, addr)
		return
	}
	h.perAddr[addr]--
}

// serve reads the connection until it fails or is closed, then cleans up;
// or, idle, it parks the socket and returns, to run again on a goroutine of
// its own when the socket is readable or the connection closed.
func (c *Client) serve() {
	parked, err := c.readLoop()
	if parked {
		return
	}
	h := c.h
	defer h.wg.Done()
	h.disconnect(c)
	h.mu.Lock()
	c.closeLocked(websocket.StatusNormalClosure, "", false)
	h.mu.Unlock()
	// Closed, the queue starts no more writers: waiting is safe.
	writersDone := make(chan struct{})
	go func() {
		c.writers.Wait()
		close(writersDone)
	}()
	t := time.NewTimer(5 * time.Second)
	select {
	case <-writersDone:
	case <-t.C:
		c.conn.CloseNow() // the writer is stuck on a dead peer
		<-writersDone
	}
	t.Stop()
	h.mu.Lock()
	delete(h.writing, c)
	h.mu.Unlock()
	if websocket.CloseStatus(err) == -1 {
		h.log.Debug("client read ended", "member", c.member.ID, "err", err)
	}
}

// readLoop reads until the connection fails or is closed, or it is parked.
// Read gets no cancellable context: that would arm a callback per frame,
// and closing the connection ends the read anyway.
func (c *Client) readLoop() (parked bool, err error) {
	linger := c.h.cfg.ReaderLinger
	if c.h.poller == nil {
		linger = 0 // wait here for as long as it takes
	}
	for {
		if c.pause > 0 && !c.waitForToken() {
			return false, errRateLimited
		}
		// A connection's reader waits here, with a shallow stack, rather
		// than inside Read (see cork.WaitReadable); after ReaderLinger
		// with nothing to read it hands the socket over to the poller and
		// its goroutine ends. The frame is handled further down, to keep
		// this function's frame small.
		if !c.cork.WaitReadable(linger) {
			parked, err := c.cork.Park(c.h.poller, c.resume)
			if parked {
				return true, nil
			}
			if err != nil {
				// Out of epoll watches, or the poller stopped: this
				// reader waits on its goroutine from now on.
				level := slog.LevelDebug
				if c.h.parkFailed.CompareAndSwap(false, true) {
					level = slog.LevelWarn // once per process
				}
				c.h.log.Log(context.Background(), level, "idle connection cannot be parked; its reader keeps its goroutine",
					"member", c.member.ID, "err", err)
				linger = 0
			}
			continue
		}
		typ, data, err := c.conn.Read(context.Background())
		if err != nil {
			if errors.Is(err, cork.ErrFrameTimeout) {
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
func (c *Client) frameTimedOut() {
	h := c.h
	h.m.FrameTimeouts.Inc()
	h.log.Info("client message not completed in time; closing", "member", c.member.ID, "timeout", h.cfg.FrameReadTimeout)
	h.mu.Lock()
	c.closeLocked(websocket.StatusPolicyViolation,
		fmt.Sprintf("frame read timeout: a message must arrive whole within %s of its first byte", h.cfg.FrameReadTimeout), false)
	h.mu.Unlock()
}

// errRateLimited ends the reader of a client closed by waitForToken.
var errRateLimited = errors.New("client stayed over the rate limit; closed")

// waitForToken holds the client's next frame unread (its bytes stay in the
// socket, and TCP slows the sender down) until the token bucket has a
// token for it, or the connection closes. A client whose frames have
// waited for tokens without a break for RateLimitCloseAfter is closed
// with 1008 instead, and false returned.
func (c *Client) waitForToken() bool {
	h := c.h
	now := time.Now()
	if c.overSince.IsZero() {
		c.overSince = now
	}
	if after := h.cfg.RateLimitCloseAfter; after > 0 && now.Sub(c.overSince) >= after {
		h.m.RateLimitCloses.Inc()
		h.log.Info("client over the rate limit for too long; closing", "member", c.member.ID,
			"rate", h.cfg.RatePerSec, "burst", h.cfg.RateBurst, "after", after)
		h.mu.Lock()
		// Flushed: the client gets the answers to what it sent in time.
		c.closeLocked(websocket.StatusPolicyViolation,
			fmt.Sprintf("rate limit: over %g frames/s for %s; slow down", h.cfg.RatePerSec, after), true)
		h.mu.Unlock()
		return false
	}
	h.m.RateLimitWaits.Inc()
	t := time.NewTimer(c.pause)
	select {
	case <-t.C:
	case <-c.done:
		t.Stop() // closed: the read below fails and the reader cleans up
	}
	c.pause = 0
	// The streak goes on only while the next frame is there already: a
	// client that sends at the rate, or paused, is not over the limit.
	if !c.cork.Pending() {
		c.overSince = time.Time{}
	}
	return true
}

func (c *Client) handle(typ websocket.MessageType, data []byte) {
	c.h.m.FramesIn.Inc()
	if typ != websocket.MessageText {
		c.sendError(protocol.Errorf(protocol.CodeBadRequest, "binary frames are not supported; send JSON text frames"))
		return
	}
	in, perr := protocol.Decode(data, c.h.cfg.Rules)
	if perr != nil {
		c.sendError(perr)
		return
	}
	first := !c.started
	c.started = true
	switch in.Type {
	case protocol.TypeChat:
		c.h.chat(c, in)
	case protocol.TypePing:
		c.send(protocol.AppendPong(nil, in.ID))
	default:
		aside(func() { c.control(in, first) })
	}
}

// aside runs f on a goroutine of its own and waits for it. Answering a
// hello, a join or a history request takes a deep stack (encoding/json for
// the welcome, the link's subscribe and history frames, sorting members);
// grown on the reader, it would stay with an idle connection until later
// GCs halve it, one cycle at a time.
func aside(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// control handles the frames other than chat and ping; first is set for the
// connection's first valid frame.
func (c *Client) control(in protocol.Inbound, first bool) {
	switch in.Type {
	case protocol.TypeHello:
		if !first {
			e := protocol.Errorf(protocol.CodeHelloFirst, "hello must be the first frame of a connection; reconnect to change nickname")
			e.ID = in.ID
			c.sendError(e)
			return
		}
		c.h.mu.Lock()
		c.extended = true
		c.nick = in.Nick
		c.session = in.Session
		c.member.Nick = in.Nick
		c.h.mu.Unlock()
		c.send(protocol.Encode(protocol.Welcome{
			Type: protocol.TypeWelcome, Version: protocol.Version, Instance: c.h.cfg.Instance,
			ID: c.member.ID, Nick: c.nick, Limits: c.h.Limits(),
		}))
	case protocol.TypeJoin, protocol.TypeJoinRoom:
		c.h.join(c, in)
	case protocol.TypeLeave:
		c.h.leave(c, in)
	case protocol.TypeHistory:
		c.h.history(c, in)
	}
}

// writeLoop is the connection's writer, started by the first frame queued
// (see queue.push) and retired by the hub's sweep (Hub.Run) one to two
// Config.WriterLinger intervals after the last: a busy connection keeps
// its writer, an idle one holds no goroutine for it.
func (c *Client) writeLoop() {
	defer c.writers.Done()
	var batch [][]byte
	// writeAll writes what is queued, framed by cork and sent in one
	// system call; false when the connection failed. A writer stuck on a
	// dead peer is freed by closing the connection.
	writeAll := func() bool {
		batch = c.q.take(batch)
		if len(batch) == 0 {
			return true // woken for frames an earlier turn took
		}
		c.inWrite.Store(true)
		defer c.inWrite.Store(false)
		c.cork.Hold()
		for i, b := range batch {
			if err := c.cork.AppendText(b); err != nil {
				c.cork.Release()
				c.conn.CloseNow()
				return false
			}
			batch[i] = nil
		}
		if err := c.cork.Release(); err != nil {
			c.conn.CloseNow()
			return false
		}
		c.h.m.FramesOut.Add(float64(len(batch)))
		c.h.m.Writes.Inc()
		if cap(batch) > 64 {
			batch = nil // an idle connection keeps no burst-sized buffer
		}
		return true
	}
	for {
		select {
		case <-c.q.wake:
			if c.q.retiring() && c.retire() {
				return
			}
			if !writeAll() {
				return
			}
			if c.lagging.Load() {
				c.h.catchUp(c)
			}
		case <-c.done:
			if c.flush && writeAll() {
				c.closeConn(c.code, c.reason)
			}
			return // without flush, closeLocked closes the connection itself
		}
	}
}

// stuck reports whether a write has been under way for more than n sweeps
// without sending a byte; the hub's sweep calls it, once a sweep, under
// h.mu.
func (c *Client) stuck(n int64) bool {
	w := c.cork.Written()
	if !c.inWrite.Load() || w != c.sweepWritten {
		c.sweepWritten, c.stalled = w, 0
		return false
	}
	c.stalled++
	return c.stalled > n
}

// startWriterLocked starts the connection's writer; the queue said none
// runs. h.mu must be held.
func (c *Client) startWriterLocked() {
	c.h.writing[c] = struct{}{}
	c.writers.Add(1)
	go c.writeLoop()
}

// retire ends the writer when the hub's sweep found it idle and nothing
// was queued since; it takes h.mu, like every start of a writer, so that
// the hub's set of writers stays exact.
func (c *Client) retire() bool {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if !c.q.retired() {
		return false
	}
	delete(c.h.writing, c)
	return true
}

// sendLocked queues a frame other than a room's message (an answer, an
// ack, an error); such frames may use the queue's limits twice over, room
// messages only once (see liveLocked). A client whose queue is full even
// so gets more of these than it reads, and is disconnected rather than
// allowed to grow memory. h.mu must be held.
func (c *Client) sendLocked(b []byte) { c.queueLocked(b, false) }

// liveLocked queues a room's message; false when the queue is at its
// limits: the member then falls behind in the room instead (see
// Hub.fallBehindLocked). h.mu must be held.
func (c *Client) liveLocked(b []byte) bool {
	ok, start := c.q.push(b, false, true)
	if start {
		c.startWriterLocked()
	}
	return ok
}

// queueLocked queues b; a lazy frame neither wakes nor starts the writer:
// it goes with the connection's next frame, or when the hub flushes lazy
// frames (Config.PresenceDelay). h.mu must be held.
func (c *Client) queueLocked(b []byte, lazy bool) {
	if ok, start := c.q.push(b, lazy, false); ok {
		if start {
			c.startWriterLocked()
		}
		if lazy {
			c.h.lazyLocked(c)
		}
		return
	}
	select {
	case <-c.done:
		return // closing already
	default:
	}
	c.h.m.SlowConsumers.Inc()
	c.h.log.Info("slow consumer disconnected", "member", c.member.ID, "frames", 2*c.q.limit, "bytes", 2*c.q.limitBytes)
	c.closeLocked(websocket.StatusPolicyViolation,
		fmt.Sprintf("slow consumer: more than %d frames or %d bytes queued; read faster", 2*c.q.limit, 2*c.q.limitBytes), false)
}

// queue is a client's bounded frame queue. Unlike a channel sized for the
// worst burst, it holds no memory while the connection is idle, and it
// knows whether the connection's writer is running.
type queue struct {
	mu         sync.Mutex
	items      [][]byte
	bytes      int
	limit      int // frames
	limitBytes int
	wake       chan struct{} // capacity 1: "there is something to write"
	writing    bool          // a writer is running
	closed     bool          // no writer may start any more
	pushes     uint64        // frames ever queued
	swept      uint64        // pushes at the last sweep
	retire     bool          // the last sweep found the writer idle
}

// push queues b. ok is false when the queue is full: a room's message
// (live) finds it full at the limits, any other frame at twice them, so
// that the acks, answers and presence of a member that fell behind in its
// rooms still go out. start tells the caller to start the writer, none
// running. A lazy push wakes and starts nothing (see kick). One frame
// counts as half the byte limit at most: a frame over it is the server's
// own (a join's history, a fetch's answer), refusing it would disconnect
// the client every time it asked again, and the room's frames around it
// must still find room.
func (q *queue) push(b []byte, lazy, live bool) (ok, start bool) {
	q.mu.Lock()
	n := min(len(b), q.limitBytes/2)
	limit, limitBytes := 2*q.limit, 2*q.limitBytes
	if live {
		limit, limitBytes = q.limit, q.limitBytes
	}
	if len(q.items) >= limit || q.bytes+n > limitBytes {
		q.mu.Unlock()
		return false, false
	}
	q.items = append(q.items, b)
	q.bytes += n
	q.pushes++
	q.retire = false
	// Held frames count toward the limits: past half of them, the
	// writer drains now rather than let a burst of held ones (a storm's
	// presence) overflow a healthy connection's queue.
	if lazy && len(q.items) < q.limit/2 && q.bytes < q.limitBytes/2 {
		q.mu.Unlock()
		return true, false
	}
	start = q.claimLocked()
	q.mu.Unlock()
	q.signal()
	return true, start
}

// drained reports whether the queue is below half its limits, where a
// member that fell behind is given more of its rooms' messages.
func (q *queue) drained() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) < max(1, q.limit/2) && q.bytes < q.limitBytes/2
}

// claimLocked makes the caller the one to start the writer, if none runs
// and the queue is open; q.mu must be held.
func (q *queue) claimLocked() bool {
	start := !q.writing && !q.closed
	q.writing = q.writing || start
	return start
}

// kick wakes the writer for what lazy pushes queued; start tells the
// caller to start it, none running.
func (q *queue) kick() (start bool) {
	q.mu.Lock()
	if len(q.items) == 0 {
		q.mu.Unlock()
		return false
	}
	start = q.claimLocked()
	q.mu.Unlock()
	q.signal()
	return start
}

// signal wakes the writer, unless a wake-up is pending already.
func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// sweep asks the writer to retire when nothing was queued since the last
// sweep.
func (q *queue) sweep() {
	q.mu.Lock()
	idle := q.pushes == q.swept && len(q.items) == 0 && !q.closed
	q.swept = q.pushes
	q.retire = q.retire || idle
	q.mu.Unlock()
	if idle {
		q.signal()
	}
}

// retiring is the writer's cheap look at the sweep's request.
func (q *queue) retiring() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.retire
}

// retired makes the writer stop when the sweep's request still holds:
// nothing queued and not closing. The next push starts a new writer.
func (q *queue) retired() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	ok := q.retire && len(q.items) == 0 && !q.closed
	q.retire = false
	q.writing = q.writing && !ok
	return ok
}

// close makes push start no more writers; start tells the caller to start
// one anyway, none running, to flush the queue before the connection
// closes.
func (q *queue) close(flush bool) (start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	start = flush && q.claimLocked()
	q.closed = true
	return start
}

// take returns everything queued and leaves spare (emptied) in its place.
func (q *queue) take(spare [][]byte) [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = spare[:0]
	q.bytes = 0
	return out
}

func (c *Client) send(b []byte) {
	c.h.mu.Lock()
	c.sendLocked(b)
	c.h.mu.Unlock()
}

func (c *Client) sendError(e *protocol.Error) {
	c.h.m.Errors.WithLabelValues(e.Code).Inc()
	c.send(protocol.Encode(e))
}

func (c *Client) sendErrorLocked(in protocol.Inbound, code, format string, args ...any) {
	e := protocol.Errorf(code, format, args...)
	e.ID, e.Room = in.ID, in.Room
	c.h.m.Errors.WithLabelValues(code).Inc()
	c.sendLocked(protocol.Encode(e))
}

// closeLocked closes the connection with code and reason: at once, or when
// flush is set, by the writer after it wrote what is queued. Only the first
// call counts. h.mu must be held (it orders the fields with the writer).
func (c *Client) closeLocked(code websocket.StatusCode, reason string, flush bool) {
	c.closeOnce.Do(func() {
		c.code, c.reason, c.flush = code, reason, flush
		close(c.done)
		if c.q.close(flush) {
			c.startWriterLocked() // it sees done at once and flushes
		}
		if !flush {
			// Close may wait on a writer blocked by a slow peer; it gives
			// up on the handshake after a few seconds by itself.
			go c.closeConn(code, reason)
		}
	})
}

// closeConn closes the connection with a close handshake, which reads the
// connection besides the reader.
func (c *Client) closeConn(code websocket.StatusCode, reason string) {
	c.cork.EndWaits()
	c.conn.Close(code, reason)
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
