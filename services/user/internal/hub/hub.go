// Package hub holds an instance's rooms: joins, presence, publishes and
// history. It turns client frames into bus operations and bus deliveries
// into client frames; the connections themselves are package conn's, and
// the hub sees each only as a Peer.
//
// One mutex, Hub.mu, guards the rooms and the members' state. Bus calls
// other than Publish are made under it, so the bus sees state changes in
// the order they happened; every Peer call under it only queues, so the
// lock is never held across I/O.
package hub

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// Config sets the hub's limits.
type Config struct {
	Instance     string
	HistorySize  int // HISTORY_SIZE: messages cached per room; default and cap of a join's history
	HistoryLimit int // HISTORY_LIMIT: most messages one recovery may fetch from the bus
	MaxRooms     int // rooms per connection
	// Limits are the connections' limits announced in welcome (see
	// conn.Config.Limits); the hub adds its own.
	Limits protocol.Limits
	// Sweep is Run's interval (default 250ms): joins past JoinTimeout,
	// held members past their grace and stalled catch-ups are seen to
	// that often.
	Sweep time.Duration
	// JoinTimeout bounds how long an extended client's join waits for its
	// room's subscription (the relay link is down or slow); then it is
	// answered unavailable and undone (default 10s).
	JoinTimeout time.Duration
	Logger      *slog.Logger
	Metrics     *Metrics
}

// Hub is the state of one ws-user instance's rooms.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	m     *Metrics
	bus   bus.Bus
	nonce string
	ids   atomic.Uint64

	mu    sync.Mutex
	rooms map[string]*room
	// unsynced holds the rooms with joins waiting for their subscription.
	unsynced map[*room]struct{}
	pubs     map[string]pubWaiter
	fetches  map[uint64]fetchFunc
	nextReq  uint64
	closing  bool
	// memberships counts (client, room) pairs receiving messages.
	memberships int
	pubsDone    chan struct{} // closed when closing and no publish is in flight

	// lagging holds the clients behind in a room, for Run's sweep to
	// resume a catch-up that waits for the bus.
	lagging map[*client]struct{}
	// holding holds the rooms with held members.
	holding map[*room]struct{}
}

type joinState uint8

const (
	waiting  joinState = iota // until the room is subscribed
	fetching                  // until its recovery is fetched
	joined                    // receives the room's messages
	behind                    // its queue was full: catches up from history (behind.go)
)

// member reports whether a client in this state is a member of the room:
// it gets the room's messages, live or by catching up.
func (s joinState) member() bool { return s >= joined }

type room struct {
	name     string
	synced   bool
	local    map[*client]joinState
	waiting  []pendingJoin
	fetchReq map[*client]uint64 // the fetch each fetching or behind client waits for
	lag      map[*client]uint64 // the last seq queued to each behind client
	cache    []protocol.Message // the last cfg.HistorySize messages, ascending
	last     uint64             // last seq delivered locally
	lastTS   int64              // and its time
	first    uint64             // oldest seq the bus still keeps
	epoch    string             // the bus's numbering (bus.Subscription.Epoch)
	// seen and seenTS: after the relay tier's numbering started over
	// (startOverLocked), the last seq and time delivered in the old one.
	// A message of the new numbering at or below both was sequenced
	// before the restart and kept (a salvaged log): the seed members that
	// stayed have it already.
	seen   uint64
	seenTS int64
	// behind: the link is down, or its resync of the room not answered
	// yet; last may lag what clients saw on other instances.
	behind   bool
	presence map[string]protocol.Member
	// held are members of other instances kept in presence after a
	// restarted relayer's answer lacked them (bus.Subscription.Settle):
	// their instances may not have re-synced yet. A presence join
	// confirms one; those left at heldUntil have left (Run's sweep).
	held      map[string]struct{}
	heldUntil time.Time
}

type pendingJoin struct {
	c     *client
	in    protocol.Inbound
	since time.Time
}

type pubWaiter struct {
	c    *client
	id   string
	room string
	t0   time.Time
}

type fetchFunc func(msgs []protocol.Message, first uint64, err error)

// New returns a hub; SetBus must be called before it serves clients, and
// Run must run for its timeouts to be kept.
func New(cfg Config) *Hub {
	if cfg.Sweep <= 0 {
		cfg.Sweep = 250 * time.Millisecond
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = 10 * time.Second
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return &Hub{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics,
		nonce:    hex.EncodeToString(b),
		rooms:    map[string]*room{},
		unsynced: map[*room]struct{}{},
		lagging:  map[*client]struct{}{},
		holding:  map[*room]struct{}{},
		pubs:     map[string]pubWaiter{},
		fetches:  map[uint64]fetchFunc{},
	}
}

// Run does the hub's housekeeping until ctx ends, every Sweep: it expires
// joins that waited longer than JoinTimeout and held members past their
// grace, and resumes catch-ups that wait for the bus.
func (h *Hub) Run(ctx context.Context) {
	t := time.NewTicker(h.cfg.Sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		h.mu.Lock()
		h.expireJoinsLocked(now)
		for c := range h.lagging {
			h.catchUpLocked(c)
		}
		h.expireHeldLocked(now)
		h.mu.Unlock()
	}
}

// expireJoinsLocked answers the extended clients' joins that waited longer
// than JoinTimeout for their room's subscription with unavailable, and
// undoes them. Seed clients get no answer to a join, so theirs keep waiting
// and take effect when the subscription comes.
func (h *Hub) expireJoinsLocked(now time.Time) {
	var expired []pendingJoin
	for r := range h.unsynced {
		for _, p := range r.waiting {
			if p.c.extended && now.Sub(p.since) > h.cfg.JoinTimeout {
				expired = append(expired, p)
			}
		}
	}
	for _, p := range expired {
		h.unavailableLocked(p.c, p.in,
			"room %q could not be joined within %s: the relay is unreachable or slow; join again later", p.in.Room, h.cfg.JoinTimeout)
	}
}

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

// unavailableLocked undoes c's join in.Room and answers it unavailable:
// the client joins again later.
func (h *Hub) unavailableLocked(c *client, in protocol.Inbound, format string, args ...any) {
	h.leaveLocked(c, in.Room)
	c.sendErrorLocked(in, protocol.CodeUnavailable, format, args...)
}

// SetBus connects the hub to its bus (the bus needs the hub as handler, so
// the two are built in two steps).
func (h *Hub) SetBus(b bus.Bus) { h.bus = b }

func (h *Hub) newID(prefix string) string {
	return prefix + h.nonce + "." + strconv.FormatUint(h.ids.Add(1), 36)
}

// Limits returns what clients are told in welcome.
func (h *Hub) Limits() protocol.Limits {
	l := h.cfg.Limits
	l.MaxRooms, l.History = h.cfg.MaxRooms, h.cfg.HistorySize
	return l
}

// ---- client operations (called from a client's reader goroutine) ----

func (h *Hub) join(c *client, in protocol.Inbound) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
		r = &room{name: in.Room, local: map[*client]joinState{}, presence: map[string]protocol.Member{}, fetchReq: map[*client]uint64{}}
		h.rooms[in.Room] = r
		h.m.Rooms.Set(float64(len(h.rooms)))
		r.local[c] = waiting
		r.presence[c.member.ID] = c.member
		h.bus.Subscribe(link.RoomState{Room: in.Room, Tail: h.cfg.HistorySize, Members: []protocol.Member{c.member}})
	} else {
		r.local[c] = waiting
		h.bus.Join(in.Room, c.member)
		if _, ok := r.presence[c.member.ID]; !ok {
			r.presence[c.member.ID] = c.member
			h.presenceLocked(r, protocol.PresenceJoin, c.member)
		}
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

func ptr[T any](v T) *T { return &v }

// setJoinedLocked makes c receive the room's messages from now on.
func (h *Hub) setJoinedLocked(r *room, c *client) {
	if !r.local[c].member() {
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
	if st, ok := r.local[c]; ok && st.member() {
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
		h.m.Rooms.Set(float64(len(h.rooms)))
		h.bus.Unsubscribe(name)
		return
	}
	h.bus.Leave(name, c.member.ID)
}

func (h *Hub) chat(c *client, in protocol.Inbound) {
	h.mu.Lock()
	if h.closing {
		c.sendErrorLocked(in, protocol.CodeShuttingDown, "this instance is shutting down; reconnect and send again")
		h.mu.Unlock()
		return
	}
	if _, ok := c.rooms[in.Room]; !ok && c.extended {
		c.sendErrorLocked(in, protocol.CodeNotJoined, "join room %q before sending to it", in.Room)
		h.mu.Unlock()
		return
	}
	mid := h.newID("m")
	h.pubs[mid] = pubWaiter{c: c, id: in.ID, room: in.Room, t0: time.Now()}
	h.mu.Unlock()
	h.m.ChatsIn.Inc()
	err := h.bus.Publish(mid, c.session, protocol.Message{Room: in.Room, ID: in.ID, From: c.nick, UID: c.member.ID, Text: in.Message})
	if err != nil {
		h.mu.Lock()
		delete(h.pubs, mid)
		code := protocol.CodeInternal
		if errors.Is(err, bus.ErrUnavailable) {
			code = protocol.CodeUnavailable
		}
		c.sendErrorLocked(in, code, "message not sent: %v", err)
		h.checkPubsDoneLocked()
		h.mu.Unlock()
	}
}

func (h *Hub) history(c *client, in protocol.Inbound) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
	for name := range c.rooms {
		h.leaveLocked(c, name)
	}
	delete(h.lagging, c)
}

// ---- room helpers ----

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
			r.remember(m, h.cfg.HistorySize)
			return
		}
		r.seen, r.seenTS = 0, 0
	}
	r.remember(m, h.cfg.HistorySize)
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

// ---- bus.Handler ----

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
		next[c.member.ID] = c.member
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

// Message implements bus.Handler.
func (h *Hub) Message(m *protocol.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[m.Room]; r != nil && r.synced {
		h.deliverLocked(r, m)
	}
}

// Ack implements bus.Handler.
func (h *Hub) Ack(mid, room string, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, ok := h.settlePubLocked(mid)
	if !ok {
		return
	}
	defer h.checkPubsDoneLocked()
	h.m.AckLatency.Observe(time.Since(w.t0).Seconds())
	if w.c.extended {
		w.c.peer.Send(protocol.AppendAck(make([]byte, 0, 48+len(w.id)+len(room)), w.id, room, seq))
	}
}

// Nack implements bus.Handler.
func (h *Hub) Nack(mid string, err *protocol.Error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, ok := h.settlePubLocked(mid)
	if !ok {
		return
	}
	defer h.checkPubsDoneLocked()
	w.c.sendErrorLocked(protocol.Inbound{ID: w.id, Room: w.room}, err.Code, "message refused: %s", err.Message)
}

// settlePubLocked removes the publish mid from those in flight; false when
// it was settled already (a duplicate answer).
func (h *Hub) settlePubLocked(mid string) (pubWaiter, bool) {
	w, ok := h.pubs[mid]
	delete(h.pubs, mid)
	return w, ok
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
func (h *Hub) State() []link.RoomState {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]link.RoomState, 0, len(h.rooms))
	for _, r := range h.rooms {
		r.behind = true // until the resync's answer
		rs := link.RoomState{Room: r.name, Tail: h.cfg.HistorySize, Members: make([]protocol.Member, 0, len(r.local))}
		if r.synced {
			// Only what was missed: the cache is already full. A room
			// still at seq 0 is owed every message too, not a tail.
			rs.Since, rs.Tail, rs.Resume = r.last, 0, true
		}
		for c := range r.local {
			rs.Members = append(rs.Members, c.member)
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

// ---- shutdown ----

func (h *Hub) checkPubsDoneLocked() {
	if h.closing && len(h.pubs) == 0 && h.pubsDone != nil {
		close(h.pubsDone)
		h.pubsDone = nil
	}
}

// Shutdown refuses new messages and waits (until ctx ends, and only while
// the bus can still answer) for the ones in flight to be acknowledged.
// The connections are closed after it (conn.Server.Shutdown), so that the
// acknowledgements reach their clients.
func (h *Hub) Shutdown(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	done := make(chan struct{})
	h.pubsDone = done
	h.checkPubsDoneLocked()
	h.mu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok || !h.bus.Ready() {
		return
	}
	// Half the budget at most, so that closing the connections has its
	// share.
	wctx, cancel := context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
	defer cancel()
	select {
	case <-done:
	case <-wctx.Done():
		h.log.Warn("shutdown: messages still unacknowledged", "err", wctx.Err())
	}
}
