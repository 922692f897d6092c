package sequencer

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// closeGrace bounds how long a link we close may take to say goodbye
// before its connection is cut.
const closeGrace = 5 * time.Second

// conn is one relay link. The sequencer appends encoded frames to out; the
// writer goroutine sends whatever accumulated as one WebSocket message, so
// a busy link batches by itself.
type conn struct {
	s    *Sequencer
	inst string
	ws   *websocket.Conn
	log  *slog.Logger
	// ctx ends the connection at once: coder/websocket closes the
	// connection when the context of a pending Read or Write ends.
	ctx  context.Context
	kill context.CancelFunc
	wake chan struct{}
	dead chan struct{} // closed when the reader has returned

	inflight atomic.Int64  // bytes read, not yet applied by the sequencer
	drained  chan struct{} // capacity 1: the sequencer applied some

	mu      sync.Mutex
	out     []byte
	closing bool
	flush   bool // send out before the close frame
	code    websocket.StatusCode
	reason  string
	cut     *time.Timer // the closeGrace deadline

	spare []byte // writer-owned: the previous out, reused

	staged      [][]byte // sequencer-owned: frames of the current batch
	stagedBytes int      // sequencer-owned: their size
}

// owes reports how much output the link has that its peer has not taken:
// what the current batch staged and what earlier ones queued unsent.
func (c *conn) owes() int {
	c.mu.Lock()
	n := len(c.out)
	c.mu.Unlock()
	return n + c.stagedBytes
}

// deliver appends the staged frames of a batch; it is the only way output
// reaches a link, and runs only after the batch is on disk.
func (c *conn) deliver(frames [][]byte) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	// A link is too slow when output it already had is still unsent: one
	// batch's answer alone (a large resync) must not condemn it, or its
	// reconnect would meet the same answer forever.
	over := len(c.out) > c.s.cfg.QueueBytes
	for _, f := range frames {
		c.out = append(c.out, f...)
	}
	queued := len(c.out)
	c.mu.Unlock()
	if over {
		c.log.Warn("relay link output buffer over the limit; closing the link (it will reconnect and catch up)",
			"queued_bytes", queued, "limit", c.s.cfg.QueueBytes)
		c.close(websocket.StatusTryAgainLater, "relayer output buffer for this link is full", false, dropSlow)
		return
	}
	c.signal()
}

func (c *conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// close ends the link with a close frame: after the queued output when
// flush is set, else discarding it. It is idempotent; the first reason
// counts.
func (c *conn) close(code websocket.StatusCode, reason string, flush bool, why string) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing, c.flush, c.code, c.reason = true, flush, code, reason
	if !flush {
		c.out = nil
		// A writer stuck on a dead peer never gets to the close frame.
		c.cut = time.AfterFunc(closeGrace, c.kill)
	}
	c.mu.Unlock()
	c.s.m.drops.WithLabelValues(why).Inc()
	c.signal()
}

// keepBuffer bounds the output buffer a link keeps for the next batch: a
// backlog's large one is let go.
const keepBuffer = 1 << 20

func (c *conn) writeChunks(data []byte) error {
	for len(data) > 0 {
		n := link.NextMessage(data)
		if err := c.ws.Write(c.ctx, websocket.MessageText, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (c *conn) writeLoop() {
	var delay *time.Timer
	if d := c.s.cfg.FlushDelay; d > 0 {
		delay = time.NewTimer(d)
		defer delay.Stop()
	}
	for {
		select {
		case <-c.wake:
		case <-c.dead:
			return
		}
		if delay != nil {
			delay.Reset(c.s.cfg.FlushDelay)
			select {
			case <-delay.C:
			case <-c.dead:
				return
			}
			// Output queued during the wait signalled again; it goes out
			// now, and that stale signal must not start the next wait
			// early (the delay counts from the output's arrival).
			select {
			case <-c.wake:
			default:
			}
		}
		c.mu.Lock()
		data := c.out
		c.out = c.spare[:0]
		closing, code, reason := c.closing, c.code, c.reason
		c.mu.Unlock()
		if len(data) > 0 {
			if err := c.writeChunks(data); err != nil {
				c.mu.Lock()
				wasClosing := c.closing
				c.closing = true
				c.mu.Unlock()
				if !wasClosing {
					c.s.m.drops.WithLabelValues(dropWrite).Inc()
					c.log.Warn("relay link write failed; closing it", "err", err)
				}
				c.kill()
				return
			}
		}
		// data's array is free again; a large one is not kept, and then
		// spare must not keep pointing at the array out now uses.
		if cap(data) <= keepBuffer {
			c.spare = data
		} else {
			c.spare = nil
		}
		if closing {
			c.ws.Close(code, reason)
			return
		}
	}
}

func (c *conn) pingLoop() {
	t := time.NewTicker(c.s.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.dead:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, 2*c.s.cfg.PingInterval)
		err := c.ws.Ping(ctx)
		cancel()
		if err != nil {
			c.mu.Lock()
			wasClosing := c.closing
			c.closing = true
			c.mu.Unlock()
			if !wasClosing {
				c.s.m.drops.WithLabelValues(dropKeepalive).Inc()
				c.log.Warn("relay link missed its keepalive; closing it", "err", err)
			}
			c.kill() // no close handshake with a peer that does not answer
			return
		}
	}
}

var errSyncFirst = errors.New("the first frame of a link must be sync")

// readLoop forwards every message's frames to the sequencer until the link
// ends, and says why it ended.
func (c *conn) readLoop() error {
	first := true
	var data []byte
	for {
		_, r, err := c.ws.Reader(c.ctx)
		if err == nil {
			data, err = link.ReadMessage(r, data)
		}
		if err != nil {
			return err
		}
		var frames []*link.Frame
		err = link.Split(data, func(f *link.Frame) error {
			if first && f.T != link.OpSync {
				return fmt.Errorf("%w, got %q", errSyncFirst, f.T)
			}
			first = false
			frames = append(frames, f)
			return nil
		})
		if err != nil {
			reason := "bad link frame"
			if errors.Is(err, errSyncFirst) {
				reason = "the first link frame must be sync"
			}
			c.log.Warn("relay link protocol violation; closing it", "err", err)
			c.close(websocket.StatusPolicyViolation, reason, false, dropProtocol)
			// Keep reading so the close handshake completes; the
			// sequencer ignores this link from now on.
			for {
				if _, _, err := c.ws.Read(c.ctx); err != nil {
					return err
				}
			}
		}
		if len(frames) > 0 {
			// When the relayer is stopping this drops the frames: it
			// closes the link itself, after flushing what it owes.
			c.inflight.Add(int64(len(data)))
			if c.s.send(event{kind: evFrames, conn: c, frames: frames, bytes: int64(len(data))}) {
				if err := c.waitApplied(); err != nil {
					return err
				}
			}
		}
	}
}

// waitApplied holds the reader while more than InflightBytes of what it
// read waits for the sequencer (which, stopped, applies nothing more: the
// reader then goes on reading and dropping, as the close handshake needs).
func (c *conn) waitApplied() error {
	for c.inflight.Load() > c.s.cfg.InflightBytes {
		select {
		case <-c.drained:
		case <-c.ctx.Done():
			return c.ctx.Err()
		case <-c.s.stopped:
			return nil
		}
	}
	return nil
}

// applied is the sequencer's receipt for n bytes of the link's input.
func (c *conn) applied(n int64) {
	c.inflight.Add(-n)
	select {
	case c.drained <- struct{}{}:
	default:
	}
}

// ServeHTTP accepts a relay link.
func (s *Sequencer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	if err := protocol.ValidName(inst, maxFieldBytes); err != nil {
		http.Error(w, "relay link refused: "+link.HeaderInstance+" "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set(link.HeaderEpoch, s.st.Epoch())
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		s.log.Warn("relay link upgrade failed", "remote", r.RemoteAddr, "instance", inst, "err", err)
		return
	}
	ws.SetReadLimit(s.cfg.MaxFrameBytes)
	// Detached from the request: only close and kill end a link, so that
	// shutdown can flush it first.
	ctx, kill := context.WithCancel(context.WithoutCancel(r.Context()))
	c := &conn{
		s: s, inst: inst, ws: ws,
		log:     s.log.With("instance", inst, "remote", r.RemoteAddr),
		ctx:     ctx,
		kill:    kill,
		wake:    make(chan struct{}, 1),
		drained: make(chan struct{}, 1),
		dead:    make(chan struct{}),
	}
	if !s.register(c) {
		kill()
		ws.Close(websocket.StatusServiceRestart, "relayer restarting")
		return
	}
	// Unregistered last: WaitLinks returning means the connection is gone.
	defer s.unregister(c)
	defer kill()
	defer ws.CloseNow()
	if !s.send(event{kind: evOpen, conn: c}) {
		ws.Close(websocket.StatusServiceRestart, "relayer restarting")
		return
	}
	c.log.Info("relay link up")
	var wg sync.WaitGroup
	wg.Go(c.writeLoop)
	wg.Go(c.pingLoop)
	err = c.readLoop()
	close(c.dead)
	s.send(event{kind: evClosed, conn: c})
	c.mu.Lock()
	closedByUs := c.closing
	c.closing = true
	if c.cut != nil {
		c.cut.Stop()
	}
	c.mu.Unlock()
	switch {
	case closedByUs:
	case errors.Is(err, websocket.ErrMessageTooBig):
		c.log.Warn("relay link sent a message over LINK_MAX_FRAME_BYTES; closed it", "limit", s.cfg.MaxFrameBytes)
		s.m.drops.WithLabelValues(dropProtocol).Inc()
	default:
		s.m.drops.WithLabelValues(dropPeer).Inc()
	}
	wg.Wait()
	c.log.Info("relay link down", "err", err, "closed_by_relayer", closedByUs)
}

// authorized compares in constant time; hashing first also hides the
// secret's length.
func (s *Sequencer) authorized(header string) bool {
	got := sha256.Sum256([]byte(header))
	return subtle.ConstantTimeCompare(got[:], s.authHash[:]) == 1
}
