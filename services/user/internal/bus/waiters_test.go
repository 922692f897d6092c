package bus_test

import (
	"sync"
	"testing"
	"time"

	"github.com/wschat/wschat/services/user/internal/bus"
)

// Await lets a publisher in once Wake finds room, refuses it when Wake
// finds it refused, and answers by the state it finds when the wait runs
// out; it does not wait at all with no time to wait or when refused.
func TestWaitersAwait(t *testing.T) {
	for _, c := range []struct {
		name     string
		wait     time.Duration
		refused0 bool
		// then changes the state under mu while Await waits; nil: nothing.
		then func(full, refused *bool)
		want bool
	}{
		{"no time to wait", 0, false, nil, false},
		{"refused from the start", time.Minute, true, nil, false},
		{"room made", time.Minute, false, func(full, _ *bool) { *full = false }, true},
		{"refused while waiting", time.Minute, false, func(_, refused *bool) { *refused = true }, false},
		{"the wait runs out", 20 * time.Millisecond, false, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var (
				mu            sync.Mutex
				w             bus.Waiters
				full, refused = true, c.refused0
			)
			got := make(chan bool, 1)
			mu.Lock()
			go func() {
				defer mu.Unlock()
				got <- w.Await(&mu, c.wait, func() bool { return full }, func() bool { return refused })
			}()
			if c.then != nil {
				// Await releases mu only once it waits.
				mu.Lock()
				if !w.Waiting() {
					t.Error("Await released its lock without waiting")
				}
				c.then(&full, &refused)
				w.Wake()
				mu.Unlock()
			}
			if g := <-got; g != c.want {
				t.Fatalf("Await = %v, want %v", g, c.want)
			}
		})
	}
}
