// Package linkws carries link frames over a coder/websocket connection:
// the one writer both ends of a link use (Writer) and the keepalive. Package
// link itself stays free of I/O.
package linkws

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol/link"
)

// Writer sends the link frames of one WebSocket connection, for either end
// of a link. Frames are appended to one buffer, and Run sends whatever
// accumulated as one message, or as several of at most link.MaxMessage cut at
// frame boundaries (NextMessage): a busy link batches by itself, and no
// message exceeds the other end's read limit.
//
// Append, AppendFunc, Owed, Close and Stop may be called from any goroutine,
// concurrently with each other and with Run. Run must be called once, and
// only Run writes data messages to the connection; Keepalive may ping the
// same connection meanwhile (coder/websocket allows a Ping during a Write).
// The Writer never reads: the caller does, and must, for pongs and the
// close handshake to be seen.
type Writer struct {
	conn  *websocket.Conn
	delay time.Duration
	wake  chan struct{} // capacity 1: out has news for Run

	mu      sync.Mutex
	out     []byte // encoded frames not yet taken by Run
	stopped bool   // Close or Stop was called: Append drops
	closing bool   // Close was called: Run sends the close frame
	code    websocket.StatusCode
	reason  string

	spare []byte // Run-owned: the array of the previous out, reused
}

// NewWriter returns a Writer for conn. A positive flushDelay makes Run wait
// that long after output appears before sending it, so that more goes in
// one message: less CPU at moderate rates for that much latency.
func NewWriter(conn *websocket.Conn, flushDelay time.Duration) *Writer {
	return &Writer{conn: conn, delay: flushDelay, wake: make(chan struct{}, 1)}
}

// Append queues frames, each encoded whole with its newline, after what the
// writer owes its peer, and reports how many bytes it owed before them.
// After Close or Stop it drops them and reports ok false.
func (w *Writer) Append(frames ...[]byte) (owed int, ok bool) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return 0, false
	}
	owed = len(w.out)
	for _, f := range frames {
		w.out = append(w.out, f...)
	}
	w.mu.Unlock()
	w.signal()
	return owed, true
}

// AppendFunc queues what enc appends to the buffer it is given (whole
// frames), encoding in place instead of copying. enc runs with the writer's
// lock held and must not call the Writer. After Close or Stop, enc is not
// called and AppendFunc reports false.
func (w *Writer) AppendFunc(enc func(dst []byte) []byte) bool {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return false
	}
	w.out = enc(w.out)
	w.mu.Unlock()
	w.signal()
	return true
}

// Owed reports the bytes queued that Run has not taken yet.
func (w *Writer) Owed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.out)
}

// Close ends the link with a close frame of code and reason: after what is
// queued when flush is set, else dropping it. Append drops from now on. It
// reports whether this call stopped the writer (false: Close or Stop came
// first, and nothing changes).
func (w *Writer) Close(code websocket.StatusCode, reason string, flush bool) bool {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return false
	}
	w.stopped, w.closing, w.code, w.reason = true, true, code, reason
	if !flush {
		w.out = nil
	}
	w.mu.Unlock()
	w.signal()
	return true
}

// Stop makes Append drop from now on, without a close frame: for a
// connection that is being cut or has failed. It reports whether this call
// stopped the writer (false: Close or Stop came first). Run goes on until
// its context ends.
func (w *Writer) Stop() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := !w.stopped
	w.stopped = true
	return first
}

func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run sends queued output until ctx ends, a write fails, or Close's close
// frame is sent. It returns ctx.Err() once ctx has ended, nil after the
// close frame (the handshake's outcome is the reader's to see), else the
// write's error. Ending ctx aborts a write in progress, and coder/websocket
// then closes the connection.
func (w *Writer) Run(ctx context.Context) error {
	var delay *time.Timer
	if w.delay > 0 {
		delay = time.NewTimer(w.delay)
		defer delay.Stop()
	}
	for {
		select {
		case <-w.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		if delay != nil {
			delay.Reset(w.delay)
			select {
			case <-delay.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			// Output queued during the wait signalled again; it goes out
			// now, and that stale signal must not start the next wait
			// early (the delay counts from the output's arrival).
			select {
			case <-w.wake:
			default:
			}
		}
		w.mu.Lock()
		data := w.out
		w.out = w.spare[:0]
		closing, code, reason := w.closing, w.code, w.reason
		w.mu.Unlock()
		if err := w.write(ctx, data); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		// data's array is free again. A backlog's large one is let go,
		// and then spare must not keep pointing at the array out uses now.
		if cap(data) <= link.KeepBytes {
			w.spare = data
		} else {
			w.spare = nil
		}
		if closing {
			w.conn.Close(code, reason)
			return nil
		}
	}
}

// write sends data in messages of at most link.MaxMessage, whole frames each.
func (w *Writer) write(ctx context.Context, data []byte) error {
	for len(data) > 0 {
		n := link.NextMessage(data)
		if err := w.conn.Write(ctx, websocket.MessageText, data[:n]); err != nil {
			return fmt.Errorf("write link message: %w", err)
		}
		data = data[n:]
	}
	return nil
}

// Keepalive pings conn every interval until ctx ends, or a ping goes
// unanswered for twice the interval, and returns why it stopped: ctx.Err()
// or the ping's error. A pong is only seen while something reads conn.
func Keepalive(ctx context.Context, conn *websocket.Conn, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*interval)
		err := conn.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("link keepalive: %w", err)
		}
	}
}
