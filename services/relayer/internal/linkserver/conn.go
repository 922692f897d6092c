package linkserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/protocol/link/linkws"
	"github.com/wschat/wschat/services/relayer/internal/sequencer"
)

// closeGrace bounds how long a link we close may take to say goodbye
// before its connection is cut.
const closeGrace = 5 * time.Second

// conn is one relay link: the sequencer's Link, and the goroutines that
// move its bytes (run's reader, the writer, the keepalive). Its Link
// methods may be called from any goroutine: the Writer takes the output.
type conn struct {
	srv *Server
	ws  *websocket.Conn
	w   *linkws.Writer
	log *slog.Logger
	// ctx ends the connection at once: coder/websocket closes the
	// connection when the context of a pending Read or Write ends.
	ctx  context.Context
	kill context.CancelFunc

	mu   sync.Mutex  // guards cut and done
	cut  *time.Timer // the closeGrace deadline of a discarding Close
	done bool        // run is returning: no deadline is needed any more
}

// Deliver implements sequencer.Link.
func (c *conn) Deliver(frames [][]byte) int {
	owed, _ := c.w.Append(frames...)
	return owed
}

// Owes implements sequencer.Link.
func (c *conn) Owes() int { return c.w.Owed() }

// Close implements sequencer.Link.
func (c *conn) Close(code sequencer.CloseCode, reason string, flush bool, why sequencer.Drop) {
	if !c.w.Close(websocket.StatusCode(code), reason, flush) {
		return
	}
	if !flush {
		// A writer stuck on a dead peer never gets to the close frame.
		c.mu.Lock()
		if !c.done {
			c.cut = time.AfterFunc(closeGrace, c.kill)
		}
		c.mu.Unlock()
	}
	c.srv.m.drop(why)
}

// run serves the link until its reader ends, and says why it ended.
func (c *conn) run(in *sequencer.Input) {
	c.log.Info("relay link up")
	wctx, stop := context.WithCancel(c.ctx)
	var wg sync.WaitGroup
	wg.Go(func() { c.write(wctx) })
	wg.Go(func() { c.keepalive(wctx) })
	err := c.read(in)
	stop()
	in.Closed()
	closedByUs := !c.w.Stop()
	c.mu.Lock()
	c.done = true
	if c.cut != nil {
		c.cut.Stop()
	}
	c.mu.Unlock()
	switch {
	case closedByUs:
	case errors.Is(err, websocket.ErrMessageTooBig):
		c.log.Warn("relay link sent a message over LINK_MAX_FRAME_BYTES; closed it", "limit", c.srv.cfg.MaxFrameBytes)
		c.srv.m.drop(sequencer.DropProtocol)
	default:
		c.srv.m.drop(dropPeer)
	}
	wg.Wait()
	c.log.Info("relay link down", "err", err, "closed_by_relayer", closedByUs)
}

// write runs the link's writer until ctx ends or a write fails.
func (c *conn) write(ctx context.Context) {
	err := c.w.Run(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	if c.w.Stop() {
		c.srv.m.drop(dropWrite)
		c.log.Warn("relay link write failed; closing it", "err", err)
	}
	c.kill()
}

// keepalive pings the peer until ctx ends or a ping goes unanswered.
func (c *conn) keepalive(ctx context.Context) {
	err := linkws.Keepalive(ctx, c.ws, c.srv.cfg.PingInterval)
	if ctx.Err() != nil {
		return
	}
	if c.w.Stop() {
		c.srv.m.drop(dropKeepalive)
		c.log.Warn("relay link missed its keepalive; closing it", "err", err)
	}
	c.kill() // no close handshake with a peer that does not answer
}

var errSyncFirst = errors.New("the first frame of a link must be sync")

// read forwards every message's frames to the sequencer until the link
// ends, and says why it ended.
func (c *conn) read(in *sequencer.Input) error {
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
			c.Close(sequencer.ClosePolicyViolation, reason, false, sequencer.DropProtocol)
			// Keep reading so the close handshake completes; the
			// sequencer ignores this link from now on.
			for {
				if _, _, err := c.ws.Read(c.ctx); err != nil {
					return err
				}
			}
		}
		if len(frames) > 0 {
			if err := in.Frames(c.ctx, frames, int64(len(data))); err != nil {
				return err
			}
		}
	}
}
