// Package reclaim returns a quiet process's free memory to the system.
//
// A burst of allocation (a reconnect storm: every handshake's request,
// headers and buffers) leaves its garbage in the Go heap until the next
// collection, which a process that then goes quiet may not reach for
// minutes, and the runtime gives freed pages back only above its next heap
// goal, which the burst itself raised. For a gateway holding many idle
// connections that garbage is much of its RSS. Run watches the allocation
// counter: once the process has allocated MinBytes since the last reclaim,
// some of it in a busy interval (a burst, not a trickle), and then stays
// quiet for an interval (allocating less than a sixteenth of MinBytes), it
// collects and returns the free memory, once; a busy process is never
// interrupted for it, and a steady trickle never triggers it.
package reclaim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Config says when to reclaim.
type Config struct {
	// Quiet is the interval the process must be quiet for; zero
	// disables reclaiming.
	Quiet time.Duration
	// MinBytes is what must have been allocated since the last reclaim
	// for another to be worth a collection.
	MinBytes uint64
	// Reclaimed, if set, is told of each reclaim and how long it took.
	Reclaimed func(took time.Duration)
}

// quietShare: an interval is quiet when it allocated less than
// MinBytes/quietShare.
const quietShare = 16

const allocsMetric = "/gc/heap/allocs:bytes"

// Run reclaims as Config says until ctx ends.
func Run(ctx context.Context, cfg Config) {
	if cfg.Quiet <= 0 {
		return
	}
	sample := []metrics.Sample{{Name: allocsMetric}}
	allocated := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	t := time.NewTicker(cfg.Quiet)
	defer t.Stop()
	prev := allocated()
	last := prev // the counter at the last reclaim, or at the start
	burst := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := allocated()
		if due(now-last, now-prev, burst, cfg.MinBytes) {
			start := time.Now()
			debug.FreeOSMemory()
			if cfg.Reclaimed != nil {
				cfg.Reclaimed(time.Since(start))
			}
			now = allocated()
			last, burst = now, false
		} else if now-prev >= cfg.MinBytes/quietShare {
			burst = true
		}
		prev = now
	}
}

// due: enough allocated since the last reclaim, in a burst (a busy interval
// since then), and the last interval quiet.
func due(sinceLast, lastInterval uint64, burst bool, minBytes uint64) bool {
	return burst && sinceLast >= minBytes && lastInterval < minBytes/quietShare
}
