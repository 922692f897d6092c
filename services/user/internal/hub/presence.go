package hub

// Presence: who is in a room, on every instance.

import (
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// unholdLocked forgets r's held members (see room.held).
func (h *Hub) unholdLocked(r *room) {
	r.held = nil
	delete(h.holding, r)
}

// expireHeldLocked ends the held members' grace: those no presence join
// confirmed by then have left (their instance did not re-sync in time, or
// they left while the relayer was down).
func (h *Hub) expireHeldLocked(now time.Time) {
	for r := range h.holding {
		if now.Before(r.heldUntil) {
			continue
		}
		for id := range r.held {
			if m, ok := r.presence[id]; ok {
				delete(r.presence, id)
				h.presenceLocked(r, protocol.PresenceLeave, m)
			}
		}
		h.unholdLocked(r)
	}
}

// presenceLocked tells the room's other local extended members about m.
func (h *Hub) presenceLocked(r *room, event string, m protocol.Member) {
	var frame []byte
	for c, st := range r.local {
		if !st.member() || !c.extended || c.member.ID == m.ID {
			continue
		}
		if frame == nil {
			frame = protocol.AppendPresence(nil, r.name, event, &m)
		}
		c.peer.SendLazy(frame)
	}
}

// Presence implements bus.Handler.
func (h *Hub) Presence(room, event string, m protocol.Member) {
	if m.Instance == h.cfg.Instance {
		return // this instance's own members are known first-hand
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[room]
	if r == nil || !r.synced {
		return
	}
	_, present := r.presence[m.ID]
	if _, ok := r.held[m.ID]; ok {
		// Its instance re-synced (join: it never left) or it left.
		delete(r.held, m.ID)
		if len(r.held) == 0 {
			h.unholdLocked(r)
		}
	}
	switch {
	case event == protocol.PresenceJoin && !present:
		r.presence[m.ID] = m
	case event == protocol.PresenceLeave && present:
		delete(r.presence, m.ID)
	default:
		return
	}
	h.presenceLocked(r, event, m)
}
