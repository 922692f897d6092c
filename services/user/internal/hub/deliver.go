package hub

// Delivery of a room's messages to its local members, and the room's
// cache of the last ones.

import (
	"cmp"
	"slices"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

func (r *room) cacheFirst() uint64 {
	if len(r.cache) == 0 {
		return r.last + 1
	}
	return r.cache[0].Seq
}

// after returns the cached messages with seq > since.
func (r *room) after(since uint64) []protocol.Message {
	i, _ := slices.BinarySearchFunc(r.cache, since+1, func(m protocol.Message, s uint64) int { return cmp.Compare(m.Seq, s) })
	return slices.Clone(r.cache[i:])
}

// tail returns the last n cached messages (n <= 0 or > max means max).
func (r *room) tail(n, max int) []protocol.Message {
	if n <= 0 || n > max {
		n = max
	}
	return slices.Clone(r.cache[len(r.cache)-min(n, len(r.cache)):])
}

func (r *room) remember(m *protocol.Message, keep int) {
	if len(r.cache) >= keep && keep > 0 {
		n := copy(r.cache, r.cache[len(r.cache)-keep+1:])
		r.cache = r.cache[:n]
	}
	if keep > 0 {
		r.cache = append(r.cache, *m)
	}
	r.last, r.lastTS = m.Seq, m.TS
}

// deliverLocked queues m, encoded once, to every joined local member; one
// whose queue is full falls behind instead.
func (h *Hub) deliverLocked(r *room, m *protocol.Message) {
	if m.Seq <= r.last {
		return // already delivered, e.g. re-sent after a reconnect
	}
	if m.Seq != r.last+1 && r.synced {
		h.gapLocked(r, m.Seq)
	}
	if r.seen > 0 {
		if m.Seq <= r.seen && m.TS <= r.seenTS {
			// Kept from before the numbering started over: delivered
			// already, to every member still here (the others were
			// closed, and recover it by joining with since).
			r.remember(m, r.keep)
			return
		}
		r.seen, r.seenTS = 0, 0
	}
	r.remember(m, r.keep)
	var frame []byte
	n := 0
	for c, st := range r.local {
		if st != joined {
			continue
		}
		if frame == nil {
			frame = protocol.AppendChat(make([]byte, 0, 128+len(m.Text)), m)
		}
		if !c.peer.SendLive(frame) {
			h.fallBehindLocked(r, c, m.Seq-1)
			continue
		}
		n++
	}
	h.m.Delivered.Add(float64(n))
	h.m.Fanout.Observe(max(0, time.Since(time.UnixMilli(m.TS)).Seconds()))
}

// gapLocked handles messages that can no longer be delivered (the backend
// kept too few to catch this instance up): the cache must stay contiguous,
// so it starts afresh, and members are told their view has a hole.
func (h *Hub) gapLocked(r *room, next uint64) {
	h.log.Warn("sequence gap", "room", r.name, "last", r.last, "next", next)
	r.cache = r.cache[:0]
	for c, st := range r.local {
		if st == joined && c.extended {
			c.sendErrorLocked(protocol.Inbound{Room: r.name}, protocol.CodeHistoryGap,
				"messages %d to %d of room %q were lost while this instance was cut off", r.last+1, next-1, r.name)
		}
	}
}

// Message implements bus.Handler.
func (h *Hub) Message(m *protocol.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[m.Room]; r != nil && r.synced {
		h.deliverLocked(r, m)
	}
}
