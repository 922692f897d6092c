package hub

// Joins, leaves and history requests: a client's operations on rooms,
// made one at a time for each client (conn runs them aside from its
// reader, which waits).

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// expireJoinsLocked answers the extended clients' joins that waited longer
// than JoinTimeout for their room's subscription with unavailable, and
// undoes them. Seed clients get no answer to a join, so theirs keep waiting
// and take effect when the subscription comes.
func (h *Hub) expireJoinsLocked(now time.Time) {
	var expired []pendingJoin
	for r := range h.unsynced {
		for _, p := range r.waiting {
			if p.c.extended && h.cfg.JoinTimeout > 0 && now.Sub(p.since) > h.cfg.JoinTimeout {
				expired = append(expired, p)
			}
		}
	}
	for _, p := range expired {
		h.unavailableLocked(p.c, p.in,
			"room %q could not be joined within %s: the relay is unreachable or slow; join again later", p.in.Room, h.cfg.JoinTimeout)
	}
}

// unavailableLocked undoes c's join in.Room and answers it unavailable:
// the client joins again later.
func (h *Hub) unavailableLocked(c *client, in protocol.Inbound, format string, args ...any) {
	h.leaveLocked(c, in.Room)
	c.sendErrorLocked(in, protocol.CodeUnavailable, format, args...)
}

func (h *Hub) join(c *client, in protocol.Inbound) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !c.admittedLocked(in) || !h.mayLocked(c, in, false) {
		return
	}
	if _, ok := c.rooms[in.Room]; ok {
		c.sendErrorLocked(in, protocol.CodeAlreadyJoined, "room %q is joined already", in.Room)
		return
	}
	if len(c.rooms) >= h.cfg.MaxRooms {
		c.sendErrorLocked(in, protocol.CodeTooManyRooms, "at most %d rooms per connection; leave one first", h.cfg.MaxRooms)
		return
	}
	c.rooms[in.Room] = struct{}{}
	r := h.rooms[in.Room]
	if r == nil {
		r = &room{name: in.Room, keep: h.keepFor(in.Room), local: map[*client]joinState{}, presence: map[string]protocol.Member{}, fetchReq: map[*client]uint64{}}
		h.rooms[in.Room] = r
		h.roomsChangedLocked()
		r.local[c] = waiting
		var members []protocol.Member
		if !c.observer {
			r.presence[c.member.ID] = c.member
			members = []protocol.Member{c.member}
		}
		h.bus.Subscribe(bus.Interest{Room: in.Room, Tail: r.keep, Members: members})
	} else if !c.observer {
		r.local[c] = waiting
		h.bus.Join(in.Room, c.member)
		if _, ok := r.presence[c.member.ID]; !ok {
			r.presence[c.member.ID] = c.member
			h.presenceLocked(r, protocol.PresenceJoin, c.member)
		}
	} else {
		r.local[c] = waiting
	}
	if !r.synced {
		r.waiting = append(r.waiting, pendingJoin{c, in, time.Now()})
		h.unsynced[r] = struct{}{}
		return
	}
	h.completeJoinLocked(r, c, in)
}

// completeJoinLocked answers a join once its room is subscribed.
func (h *Hub) completeJoinLocked(r *room, c *client, in protocol.Inbound) {
	if !c.extended {
		h.setJoinedLocked(r, c)
		if p, ok := c.peer.(keptPeer); ok {
			p.Kept(r.tail(0, r.keep))
		}
		return
	}
	if in.Since == nil {
		h.joinedLocked(r, c, in, r.tail(in.Limit, h.cfg.HistorySize), nil)
		return
	}
	since := *in.Since
	if in.Epoch != "" && r.epoch != "" && in.Epoch != r.epoch {
		// since counts in a numbering that started over after it (a
		// relayer back with a new or salvaged log): every message of the
		// new one is missed, and the answer's epoch tells the client to
		// drop what it holds of the room.
		since = 0
	}
	if since > r.last && (r.behind || !h.bus.Ready()) {
		// The client saw more of the room, elsewhere, than this instance
		// has while it is cut off from the relay or catching up: answering
		// now would say the room went back in time, and a client then
		// drops what it has.
		h.unavailableLocked(c, in,
			"room %q: this instance is cut off from the relay and has not caught up with seq %d yet; join again later", r.name, since)
		return
	}
	// When the bus no longer keeps every message after since, the client
	// gets every one it still keeps (its oldest on) and recovered:false,
	// not just the cache's tail: after a start-over, the tail may not
	// reach back to the new numbering's first messages (the publishes the
	// instances had queued, sequenced right after the kept records, which
	// a salvaged log's hole puts after the bus's oldest).
	complete := true
	if since+1 < r.first {
		since, complete = r.first-1, false
	}
	cacheFirst := r.cacheFirst()
	switch {
	case since >= r.last:
		h.joinedLocked(r, c, in, nil, ptr(complete))
	case since+1 >= cacheFirst:
		h.joinedLocked(r, c, in, r.after(since), ptr(complete))
	default:
		r.local[c] = fetching
		var req uint64
		// Up to the room's end, not the cache's start: a full cache drops
		// its oldest while the fetch is in flight, and under traffic the
		// fetched messages would no longer meet it.
		req = h.fetchLocked(r.name, since, 0, h.cfg.HistoryLimit, func(msgs []protocol.Message, _ uint64, err error) {
			if h.rooms[r.name] != r || r.local[c] != fetching || r.fetchReq[c] != req {
				return // left, or left and joined again, meanwhile
			}
			delete(r.fetchReq, c)
			if err != nil {
				// Nothing is known lost: the link dropped, or the relayer
				// was too busy to answer. recovered:false would tell the
				// client it lost messages; it joins again instead.
				h.log.Warn("recovery fetch failed", "room", r.name, "err", err)
				h.unavailableLocked(c, in, "room %q: the history since seq %d could not be fetched now (%v); join again", r.name, since, err)
				return
			}
			// Only what this instance has delivered: the rest reaches the
			// client live. The fetched messages and the cache must meet
			// without a hole; with more than HistoryLimit after since, what
			// the fetch brought is the newest of them (after 0 pages back),
			// or does not meet the cache (the tail then).
			for len(msgs) > 0 && msgs[len(msgs)-1].Seq > r.last {
				msgs = msgs[:len(msgs)-1]
			}
			if len(msgs) == 0 || msgs[len(msgs)-1].Seq+1 < r.cacheFirst() {
				h.joinedLocked(r, c, in, r.tail(in.Limit, h.cfg.HistorySize), ptr(false))
				return
			}
			all := complete && msgs[0].Seq == since+1
			h.joinedLocked(r, c, in, append(msgs, r.after(msgs[len(msgs)-1].Seq)...), ptr(all))
		})
		r.fetchReq[c] = req
	}
}

// roomsChangedLocked updates the rooms gauge: the rooms with members, the
// control room not counted. h.mu must be held.
func (h *Hub) roomsChangedLocked() {
	n := len(h.rooms)
	if _, ok := h.rooms[ControlRoom]; ok {
		n--
	}
	h.m.Rooms.Set(float64(n))
}

// setJoinedLocked makes c receive the room's messages from now on.
func (h *Hub) setJoinedLocked(r *room, c *client) {
	if !r.local[c].member() && !c.observer {
		h.memberships++
		h.m.Memberships.Set(float64(h.memberships))
	}
	r.local[c] = joined
}

func (h *Hub) joinedLocked(r *room, c *client, in protocol.Inbound, history []protocol.Message, recovered *bool) {
	h.setJoinedLocked(r, c)
	if history == nil {
		history = []protocol.Message{}
	}
	if recovered != nil {
		// A recovery answers up to HISTORY_LIMIT messages in one frame,
		// encoded for this client alone: in a room of large messages,
		// and a reconnect storm, that is memory without bound. Past half
		// the send queue's bytes the oldest go, and recovered says so
		// (the client pages back with history).
		_, queueBytes := c.peer.QueueLimits()
		budget, n := queueBytes/2, 0
		var scratch []byte
		for i := len(history) - 1; i >= 0; i-- {
			scratch = protocol.AppendMessage(scratch[:0], &history[i])
			if n += len(scratch) + 1; n > budget {
				history, recovered = history[i+1:], ptr(false)
				break
			}
		}
	}
	members := slices.SortedFunc(maps.Values(r.presence), func(a, b protocol.Member) int {
		return cmp.Or(cmp.Compare(a.Nick, b.Nick), cmp.Compare(a.ID, b.ID))
	})
	c.peer.Send(protocol.AppendJoined(nil, &protocol.Joined{
		ID: in.ID, Room: r.name, Seq: r.last, Members: members, History: history, Recovered: recovered, Epoch: r.epoch,
	}))
}

func (h *Hub) leave(c *client, in protocol.Inbound) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !c.admittedLocked(in) {
		return
	}
	if _, ok := c.rooms[in.Room]; !ok {
		c.sendErrorLocked(in, protocol.CodeNotJoined, "room %q is not joined", in.Room)
		return
	}
	h.leaveLocked(c, in.Room)
	c.peer.Send(protocol.Encode(protocol.Left{Type: protocol.TypeLeft, ID: in.ID, Room: in.Room}))
}

func (h *Hub) leaveLocked(c *client, name string) {
	delete(c.rooms, name)
	r := h.rooms[name]
	if r == nil {
		return
	}
	if st, ok := r.local[c]; ok && st.member() && !c.observer {
		h.memberships--
		h.m.Memberships.Set(float64(h.memberships))
	}
	delete(r.local, c)
	delete(r.fetchReq, c)
	delete(r.lag, c)
	r.waiting = slices.DeleteFunc(r.waiting, func(p pendingJoin) bool { return p.c == c })
	if _, ok := r.presence[c.member.ID]; ok {
		delete(r.presence, c.member.ID)
		h.presenceLocked(r, protocol.PresenceLeave, c.member)
	}
	if len(r.local) == 0 {
		delete(h.rooms, name)
		delete(h.unsynced, r)
		delete(h.holding, r)
		h.roomsChangedLocked()
		h.bus.Unsubscribe(name)
		return
	}
	if !c.observer {
		h.bus.Leave(name, c.member.ID)
	}
}

func (h *Hub) history(c *client, in protocol.Inbound) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !c.admittedLocked(in) {
		return
	}
	r := h.rooms[in.Room]
	if _, ok := c.rooms[in.Room]; !ok || r == nil || !r.local[c].member() {
		c.sendErrorLocked(in, protocol.CodeNotJoined, "join room %q before asking for its history", in.Room)
		return
	}
	limit := h.cfg.HistorySize
	if in.Limit > 0 {
		limit = min(in.Limit, h.cfg.HistorySize)
	}
	answer := func(msgs []protocol.Message, first uint64) {
		if msgs == nil {
			msgs = []protocol.Message{}
		}
		c.peer.Send(protocol.Encode(protocol.History{Type: protocol.TypeHistory, ID: in.ID, Room: in.Room, Messages: msgs, First: first}))
	}
	before := in.Before
	if before == 0 {
		before = r.last + 1
	}
	// Served from the cache when it holds the whole page.
	if cf := r.cacheFirst(); before <= r.last+1 && (before-min(before, uint64(limit)) >= cf || cf <= r.first) {
		answer(bus.Window(r.cache, 0, before, limit), r.first)
		return
	}
	h.fetchLocked(in.Room, 0, before, limit, func(msgs []protocol.Message, first uint64, err error) {
		if _, ok := c.rooms[in.Room]; !ok {
			return // left meanwhile (or a refreshed token no longer allows the room)
		}
		if err != nil {
			c.sendErrorLocked(in, protocol.CodeUnavailable, "history is unavailable right now: %v", err)
			return
		}
		answer(msgs, first)
	})
}

// fetchLocked asks the bus for history and returns the request's id.
func (h *Hub) fetchLocked(room string, after, before uint64, limit int, fn fetchFunc) uint64 {
	h.nextReq++
	h.fetches[h.nextReq] = fn
	h.bus.Fetch(h.nextReq, room, after, before, limit)
	return h.nextReq
}

// disconnect removes a closed client from every room.
func (h *Hub) disconnect(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.forgetLocked(c)
	for name := range c.rooms {
		h.leaveLocked(c, name)
	}
	delete(h.lagging, c)
}
