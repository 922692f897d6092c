package hub

import (
	"cmp"
	"slices"

	"github.com/wschat/wschat/services/protocol"
)

// A member whose send queue is full when a room's message comes is not
// disconnected: a backlog larger than the queue arrives at once after a
// relay outage (the publishes the instances held, the resync's catch-up),
// and a client that reads normally cannot drain it as fast as the hub
// queues it. The member falls behind in the room instead: live messages
// skip it, and once its writer has drained the queue below half, the room's
// history refills it (the instance's cache, else a fetch from the bus), in
// order, until it has caught up and live delivery resumes. Nothing is
// buffered per member beyond its queue and the seq it is at; a client that
// stops reading is closed by WriteTimeout, not here.

// fallBehindLocked takes c off r's live delivery: at is the last seq
// queued to it.
func (h *Hub) fallBehindLocked(r *room, c *client, at uint64) {
	if c.peer.Closing() {
		return // nothing more goes to it
	}
	if r.lag == nil {
		r.lag = map[*client]uint64{}
	}
	r.local[c], r.lag[c] = behind, at
	h.lagging[c] = struct{}{}
	c.peer.SetCatchingUp(true)
	h.m.FellBehind.Inc()
	h.log.Debug("member fell behind", "member", c.member.ID, "room", r.name, "seq", at)
}

// catchUp refills c's queue from its rooms' history; its writer calls it
// after each batch while c is behind.
func (h *Hub) catchUp(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.catchUpLocked(c)
}

// catchUpLocked refills c's queue, once it has drained below half, with
// the messages of the rooms it is behind in.
func (h *Hub) catchUpLocked(c *client) {
	if c.peer.Closing() {
		return // disconnect forgets it
	}
	if !c.peer.Drained() {
		return // the writer calls again after its next batch
	}
	lagging := false
	for name := range c.rooms {
		if r := h.rooms[name]; r != nil && r.local[c] == behind && !h.catchUpRoomLocked(r, c) {
			lagging = true
		}
	}
	if !lagging {
		delete(h.lagging, c)
		c.peer.SetCatchingUp(false)
	}
}

// catchUpRoomLocked queues to c the messages of r after the last it got,
// as far as its queue takes them; true when it has caught up and is back
// on live delivery.
func (h *Hub) catchUpRoomLocked(r *room, c *client) bool {
	if _, ok := r.fetchReq[c]; ok {
		return false // the fetch's answer goes on
	}
	at := r.lag[c]
	for at < r.last {
		cacheFirst := r.cacheFirst()
		if at+1 >= cacheFirst {
			// The cache holds every message from at+1 to r.last.
			i, _ := slices.BinarySearchFunc(r.cache, at+1, func(m protocol.Message, s uint64) int { return cmp.Compare(m.Seq, s) })
			for ; i < len(r.cache); i++ {
				if !h.catchUpOneLocked(c, &r.cache[i]) {
					r.lag[c] = at
					return false
				}
				at = r.cache[i].Seq
			}
			continue
		}
		r.lag[c] = at
		if !h.bus.Ready() {
			return false // Run's sweep tries again
		}
		// Older than the cache: a fetch of what the queue takes, at most
		// up to the cache (before bounds it: after 0 would page back).
		frames, _ := c.peer.QueueLimits()
		limit := max(1, min(h.cfg.HistoryLimit, frames/2))
		before := min(cacheFirst, at+uint64(limit)+1)
		var req uint64
		req = h.fetchLocked(r.name, at, before, limit, func(msgs []protocol.Message, first uint64, err error) {
			if h.rooms[r.name] != r || r.local[c] != behind || r.fetchReq[c] != req {
				return // left, caught up otherwise, or its numbers restarted
			}
			delete(r.fetchReq, c)
			if err != nil {
				h.log.Debug("catch-up fetch failed; retrying", "member", c.member.ID, "room", r.name, "err", err)
				return // Run's sweep tries again
			}
			h.fetchedLocked(r, c, msgs, first, before)
			h.catchUpLocked(c)
		})
		r.fetchReq[c] = req
		return false
	}
	r.local[c] = joined
	delete(r.lag, c)
	return true
}

// fetchedLocked queues to c a catch-up fetch's answer (after c's seq,
// before before; first the oldest seq the bus keeps), as far as its queue
// takes it. Messages missing from its start are no longer kept: an
// extended member is told (a seed client only ever gets chat frames, and
// sees the numbers jump).
func (h *Hub) fetchedLocked(r *room, c *client, msgs []protocol.Message, first, before uint64) {
	at := r.lag[c]
	next := max(before, first)
	if len(msgs) > 0 {
		next = msgs[0].Seq
	}
	// Not past what this instance has: its live delivery brings the rest.
	if next = min(next, r.last+1); next > at+1 {
		if c.extended {
			c.sendErrorLocked(protocol.Inbound{Room: r.name}, protocol.CodeHistoryGap,
				"messages %d to %d of room %q were lost to this connection: it fell behind, and they are no longer kept", at+1, next-1, r.name)
		}
		at = next - 1
	}
	for i := range msgs {
		if msgs[i].Seq != at+1 || !h.catchUpOneLocked(c, &msgs[i]) {
			break // the rest is fetched again
		}
		at = msgs[i].Seq
	}
	r.lag[c] = at
}

// catchUpOneLocked queues m to c; false when its queue is full.
func (h *Hub) catchUpOneLocked(c *client, m *protocol.Message) bool {
	if !c.peer.SendLive(protocol.AppendChat(make([]byte, 0, 128+len(m.Text)), m)) {
		return false
	}
	h.m.Delivered.Inc()
	return true
}

// restartLagLocked puts r's behind members back on live delivery: r's
// numbering started over, and the seqs they are at mean nothing in it.
func (h *Hub) restartLagLocked(r *room) {
	for c := range r.lag {
		r.local[c] = joined
		delete(r.fetchReq, c)
	}
	clear(r.lag)
}
