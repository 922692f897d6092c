package conn

import (
	"fmt"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
)

// Send queues a frame other than a room's message (an answer, an ack, an
// error); such frames may use the queue's limits twice over, room messages
// only once (see SendLive). A connection whose queue is full even so gets
// more of these than it reads, and is closed as a slow consumer rather
// than allowed to grow memory.
func (c *Conn) Send(b []byte) { c.queue(b, false) }

// SendLazy queues a frame that may wait (presence): it neither wakes nor
// starts the writer, and goes with the connection's next frame, or
// Config.LazyDelay later.
func (c *Conn) SendLazy(b []byte) { c.queue(b, c.s.cfg.LazyDelay > 0) }

// SendError queues e, counted by its code.
func (c *Conn) SendError(e *protocol.Error) {
	c.s.m.Errors.WithLabelValues(e.Code).Inc()
	c.Send(protocol.Encode(e))
}

// SendLive queues a room's message; false when the queue is at its limits
// (the caller then holds the member back: see SetCatchingUp).
func (c *Conn) SendLive(b []byte) bool {
	ok, start := c.q.push(b, false, true)
	if start {
		c.startWriter()
	}
	return ok
}

// Drained reports whether the queue is below half its limits, where a
// member held back is given more of its rooms' messages.
func (c *Conn) Drained() bool { return c.q.drained() }

// QueueLimits returns the queue's limits for room messages: frames and
// bytes.
func (c *Conn) QueueLimits() (frames, bytes int) { return c.q.limit, c.q.limitBytes }

// SetCatchingUp makes the writer call Session.Wrote after each batch,
// while on is set.
func (c *Conn) SetCatchingUp(on bool) { c.catchingUp.Store(on) }

func (c *Conn) queue(b []byte, lazy bool) {
	if ok, start := c.q.push(b, lazy, false); ok {
		if start {
			c.startWriter()
		}
		if lazy {
			c.s.noteLazy(c)
		}
		return
	}
	if c.Closing() {
		return
	}
	c.s.m.SlowConsumers.Inc()
	c.s.log.Info("slow consumer disconnected", "conn", c.id, "frames", 2*c.q.limit, "bytes", 2*c.q.limitBytes)
	c.close(websocket.StatusPolicyViolation,
		fmt.Sprintf("slow consumer: more than %d frames or %d bytes queued; read faster", 2*c.q.limit, 2*c.q.limitBytes), false)
}

// writeLoop is the connection's writer, started by the first frame queued
// (see queue.push) and retired by the Server's sweep (Server.Run) one to
// two Config.WriterLinger intervals after the last: a busy connection
// keeps its writer, an idle one holds no goroutine for it.
func (c *Conn) writeLoop() {
	defer c.q.writers.Done()
	var batch [][]byte
	// writeAll writes what is queued, framed by wsconn and sent in one
	// system call; false when the connection failed. A writer stuck on a
	// dead peer is freed by closing the connection.
	writeAll := func() bool {
		batch = c.q.take(batch)
		if len(batch) == 0 {
			return true // woken for frames an earlier turn took
		}
		c.inWrite.Store(true)
		defer c.inWrite.Store(false)
		c.sock.Hold()
		for i, b := range batch {
			if err := c.sock.AppendText(b); err != nil {
				c.sock.Release()
				c.ws.CloseNow()
				return false
			}
			batch[i] = nil
		}
		if err := c.sock.Release(); err != nil {
			c.ws.CloseNow()
			return false
		}
		c.s.m.FramesOut.Add(float64(len(batch)))
		c.s.m.Writes.Inc()
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
			if c.catchingUp.Load() {
				c.session.Wrote()
			}
		case <-c.done:
			if c.flush && writeAll() {
				c.closeConn(c.code, c.reason)
			}
			return // without flush, close closes the connection itself
		}
	}
}

// stuck reports whether a write has been under way for more than n sweeps
// without sending a byte; the Server's sweep calls it, once a sweep.
// s.mu must be held.
func (c *Conn) stuck(n int64) bool {
	w := c.sock.Written()
	if !c.inWrite.Load() || w != c.sweepWritten {
		c.sweepWritten, c.stalled = w, 0
		return false
	}
	c.stalled++
	return c.stalled > n
}

// startWriter starts the writer the queue's claim counted. It is in the
// Server's set before it runs, so before the connection's cleanup can
// forget it (serve waits for it first).
func (c *Conn) startWriter() {
	c.s.mu.Lock()
	c.s.writing[c] = struct{}{}
	c.s.mu.Unlock()
	go c.writeLoop()
}

// retire ends the writer when the Server's sweep found it idle and nothing
// was queued since; it takes s.mu, like every start of a writer, so that
// the Server's set of writers stays exact.
func (c *Conn) retire() bool {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	if !c.q.retired() {
		return false
	}
	delete(c.s.writing, c)
	return true
}
