package hub

// The hub's side of the bus's subscriptions: answers, resyncs after a
// lost link, and the numbering starting over.

import (
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

var _ bus.Handler = (*Hub)(nil)

// Subscribed implements bus.Handler.
func (h *Hub) Subscribed(s bus.Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[s.Room]
	if r == nil {
		return // unsubscribed meanwhile; the unsubscribe follows on the bus
	}
	startOver := r.synced && s.Seq < r.last
	if startOver {
		// The relayer lost messages this instance delivered, under the
		// same epoch (a data directory restored from an older copy, say):
		// the numbers above s.Seq will be handed out again, to other
		// messages. As for a new epoch: members who hold them start over.
		h.log.Warn("room sequence went backwards: the relayer lost messages members saw; they start the room over",
			"room", r.name, "had", r.last, "now", s.Seq)
		h.startOverLocked(r)
	}
	for i := range s.Msgs {
		h.deliverLocked(r, &s.Msgs[i])
	}
	if s.Seq > r.last {
		if r.synced && !startOver {
			h.gapLocked(r, s.Seq+1)
		}
		r.last = s.Seq
	}
	r.first, r.behind, r.epoch = s.First, false, s.Epoch
	// Presence: the backend's view for other instances, our own for ours.
	next := map[string]protocol.Member{}
	for _, m := range s.Members {
		if m.Instance != h.cfg.Instance {
			next[m.ID] = m
		}
	}
	for c := range r.local {
		if !c.observer {
			next[c.member.ID] = c.member
		}
	}
	h.unholdLocked(r)
	if r.synced {
		for id, m := range r.presence {
			if _, ok := next[id]; ok {
				continue
			}
			if s.Settle > 0 && m.Instance != h.cfg.Instance {
				// A restarted relayer may not have heard from m's
				// instance yet: no leave unless it stays away.
				if r.held == nil {
					r.held = map[string]struct{}{}
				}
				r.held[id] = struct{}{}
				next[id] = m
				continue
			}
			h.presenceLocked(r, protocol.PresenceLeave, m)
		}
		if r.held != nil {
			r.heldUntil = time.Now().Add(s.Settle)
			h.holding[r] = struct{}{}
		}
		for id, m := range next {
			if _, ok := r.presence[id]; !ok {
				h.presenceLocked(r, protocol.PresenceJoin, m)
			}
		}
	}
	r.presence = next
	r.synced = true
	delete(h.unsynced, r)
	pend := r.waiting
	r.waiting = nil
	for _, p := range pend {
		if r.local[p.c] == waiting {
			h.completeJoinLocked(r, p.c, p.in)
		}
	}
}

// Fetched implements bus.Handler.
func (h *Hub) Fetched(req uint64, msgs []protocol.Message, first uint64, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn, ok := h.fetches[req]
	if !ok {
		return
	}
	delete(h.fetches, req)
	fn(msgs, first, err)
}

// State implements bus.Handler.
func (h *Hub) State() []bus.Interest {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]bus.Interest, 0, len(h.rooms))
	for _, r := range h.rooms {
		r.behind = true // until the resync's answer
		rs := bus.Interest{Room: r.name, Tail: r.keep, Members: make([]protocol.Member, 0, len(r.local))}
		if r.synced {
			// Only what was missed: the cache is already full. A room
			// still at seq 0 is owed every message too, not a tail.
			rs.Since, rs.Tail, rs.Resume = r.last, 0, true
		}
		for c := range r.local {
			if !c.observer {
				rs.Members = append(rs.Members, c.member)
			}
		}
		out = append(out, rs)
	}
	return out
}

// Restarted implements bus.Handler: the relayer's numbering started over
// (a new, lost or salvaged log). Seed clients go on with the new numbers,
// and get no message the new log kept from the old twice (room.seen). Extended
// members of a room that had messages hold positions in the old ones (a
// join's since), so they are closed with 1012 to reconnect and join again,
// and that join answers with the room's new, lower seq: a client takes it
// for a server that lost its history (docs/protocol.md, recovery) instead
// of ignoring every message whose number it saw before.
func (h *Hub) Restarted() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.rooms {
		h.startOverLocked(r)
	}
}

// startOverLocked forgets r's position, whose numbers the relay tier will
// hand out again, and closes its extended members that may hold them.
func (h *Hub) startOverLocked(r *room) {
	if r.last > 0 {
		for c := range r.local {
			if c.extended {
				// Without flush: what is queued, and what the resync
				// brings, is in numbers the client must not mix.
				c.peer.Close(closeRestart, "the relay tier's message numbers started over: reconnect and join again")
			}
		}
	}
	if r.last > r.seen {
		r.seen, r.seenTS = r.last, r.lastTS
	}
	r.last, r.lastTS, r.first, r.cache = 0, 0, 0, nil
	h.restartLagLocked(r)
}

// LinkState implements bus.Handler.
func (h *Hub) LinkState(up bool) {
	if up {
		h.m.LinkUp.Set(1)
		return
	}
	h.m.LinkUp.Set(0)
	h.mu.Lock()
	for _, r := range h.rooms {
		r.behind = true
	}
	h.mu.Unlock()
}
