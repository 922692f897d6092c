package natsbus

import (
	"context"
	"encoding/json"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// putPresenceLocked notes that r's presence key must be written (deleted
// when r has no members left). b.mu must be held.
func (b *Bus) putPresenceLocked(r *room) {
	if b.dirty == nil {
		b.dirty = map[string][]protocol.Member{}
	}
	ms := make([]protocol.Member, 0, len(r.members))
	for _, m := range r.members {
		ms = append(ms, m)
	}
	b.dirty[r.name] = ms
	select {
	case b.presenceWake <- struct{}{}:
	default:
	}
}

// writePresence writes the presence keys that changed, and every one of
// this instance's every third of PresenceTTL, so that they outlive the TTL
// while the instance does, until ctx ends; then it writes what changed
// last (the deletes of a shutdown), so that the members do not linger for
// the TTL.
func (b *Bus) writePresence(ctx context.Context) {
	beat := time.NewTicker(max(b.cfg.PresenceTTL/3, 100*time.Millisecond))
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
			b.flushPresence(final)
			cancel()
			return
		case <-b.presenceWake:
		case <-beat.C:
			b.mu.Lock()
			for _, r := range b.rooms {
				if len(r.members) > 0 {
					b.putPresenceLocked(r)
				}
			}
			b.mu.Unlock()
		}
		if b.ready.Load() {
			b.flushPresence(ctx) // else kept for after the next sync
		}
	}
}

// flushPresence writes the keys that changed, keeping those it could not
// for the next time.
func (b *Bus) flushPresence(ctx context.Context) {
	b.mu.Lock()
	kv := b.kv
	dirty := b.dirty
	b.dirty = nil
	b.mu.Unlock()
	if kv == nil {
		return
	}
	for name, ms := range dirty {
		key := token(name) + "." + token(b.cfg.Instance)
		wctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
		var err error
		if len(ms) == 0 {
			err = kv.Delete(wctx, key)
		} else {
			var v []byte
			if v, err = json.Marshal(ms); err == nil {
				_, err = kv.Put(wctx, key, v)
			}
		}
		cancel()
		if err != nil {
			// Kept for the next flush: the final one of a shutdown too,
			// when it is this one that ctx's end cut short.
			if ctx.Err() == nil {
				b.log.Warn("nats: presence not written; retrying", "room", name, "err", err)
			}
			b.mu.Lock()
			if _, newer := b.dirty[name]; !newer {
				if b.dirty == nil {
					b.dirty = map[string][]protocol.Member{}
				}
				b.dirty[name] = ms
			}
			b.mu.Unlock()
		}
	}
}
