package conn

import "sync"

// queue is a connection's bounded frame queue. Unlike a channel sized for the
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
	// writers counts the writer: added to when a claim is made, under mu,
	// so that a Wait after close cannot miss a writer claimed before it.
	writers sync.WaitGroup
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
// and the queue is open, and counts it in writers. q.mu must be held.
func (q *queue) claimLocked() bool {
	start := !q.writing && !q.closed
	q.writing = q.writing || start
	if start {
		q.writers.Add(1)
	}
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
