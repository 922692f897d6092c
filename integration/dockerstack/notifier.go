package dockerstack

import (
	"context"
	"sync"
)

// Notifier wakes everyone waiting for a condition over the state of
// several clients, each time any of them changes.
type Notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewNotifier returns a Notifier nobody waits on yet.
func NewNotifier() *Notifier { return &Notifier{ch: make(chan struct{})} }

// Bump wakes every waiter: something changed.
func (n *Notifier) Bump() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}

// WaitFor blocks until cond holds or ctx ends. cond runs after every
// change (it does its own locking).
func (n *Notifier) WaitFor(ctx context.Context, cond func() bool) error {
	for {
		// Take the channel before checking: a change in between wakes us.
		n.mu.Lock()
		ch := n.ch
		n.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
