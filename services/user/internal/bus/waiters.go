package bus

import (
	"sync"
	"time"
)

// Waiters are the publishers of a backend waiting for room in its bounded
// queue of unacknowledged publishes: a backend that falls behind slows its
// publishers down (their readers wait, and TCP slows the clients) before
// their chats are refused.
//
// The zero value is ready. Every method is called with the backend's lock
// held, the one given to Await.
type Waiters struct {
	// ch, when not nil, is closed by Wake: the waiters look again.
	ch chan struct{}
}

// LowWater reports whether used, of a bound, is at the low-water mark
// (nine tenths) at which a backend wakes its waiters: they are let in
// together, not one per acknowledgement.
func LowWater(used, bound int) bool { return used <= bound/10*9 }

// Waiting reports whether a publisher waits. Lock should be held.
func (w *Waiters) Waiting() bool { return w.ch != nil }

// Wake lets every waiting publisher look again. A backend calls it when its
// queue is back at the low-water mark (LowWater), and when it stops
// accepting publishes (they then refuse). Lock should be held.
func (w *Waiters) Wake() {
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}

// Await waits, at most d, while full reports true and refused false. It
// reports false when refused (at the start, or when woken), or when d ran
// out with full still true; else true: the publish fits, although refused
// may have become true after the wake that found room (a caller that must
// refuse then checks it again). mu should be held; it is released while
// waiting.
func (w *Waiters) Await(mu *sync.Mutex, d time.Duration, full, refused func() bool) bool {
	if d <= 0 || refused() {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for full() {
		if refused() {
			return false
		}
		if w.ch == nil {
			w.ch = make(chan struct{})
		}
		woken := w.ch
		mu.Unlock()
		select {
		case <-woken:
			mu.Lock()
		case <-t.C:
			mu.Lock()
			return !full()
		}
	}
	return true
}
