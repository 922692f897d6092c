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
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
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
	// answered unavailable and undone (0: no bound).
	JoinTimeout time.Duration
	// Auth verifies connection tokens (nil: none is accepted); with
	// RequireAuth, a connection without one is refused (auth.go).
	Auth        *auth.Verifier
	RequireAuth bool
	// AuthTimeout bounds how long a connection may go without its token
	// when one is required; ExpiryNotice is how long before its token
	// expires an extended client is told; RevokeFor how long a user's
	// tokens issued before a disconnect stay refused (0: not at all).
	AuthTimeout  time.Duration
	ExpiryNotice time.Duration
	RevokeFor    time.Duration
	// Control: RunControl runs (the server API's disconnects). Until it
	// has carried out the control room's kept commands, no token is
	// admitted: whether it was revoked is not known yet (1012: the client
	// reconnects, perhaps to another instance).
	Control bool
	Logger  *slog.Logger
	Metrics *Metrics
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
	// memberships counts (client, room) pairs receiving messages, the
	// server API's and the control room's in-process clients not counted.
	memberships int
	pubsDone    chan struct{} // closed when closing and no publish is in flight

	// lagging holds the clients behind in a room, for Run's sweep to
	// resume a catch-up that waits for the bus.
	lagging map[*client]struct{}
	// holding holds the rooms with held members.
	holding map[*room]struct{}
	// users holds the authenticated clients by user, revoked the users
	// disconnected through the server API (auth.go).
	users   map[string]map[*client]struct{}
	revoked map[string]revocation

	// controlReady: the control room's kept commands were carried out
	// (RunControl).
	controlReady atomic.Bool
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

// keepFor is how many messages a room's cache keeps: HistorySize, but for
// the control room HistoryLimit (its kept commands are what an instance
// started later carries out, and its messages are few).
func (h *Hub) keepFor(name string) int {
	if name == ControlRoom {
		return max(h.cfg.HistorySize, h.cfg.HistoryLimit)
	}
	return h.cfg.HistorySize
}

type room struct {
	name     string
	synced   bool
	local    map[*client]joinState
	waiting  []pendingJoin
	fetchReq map[*client]uint64 // the fetch each fetching or behind client waits for
	lag      map[*client]uint64 // the last seq queued to each behind client
	cache    []protocol.Message // the last keep messages, ascending
	keep     int                // HistorySize; the control room's, HistoryLimit (keepFor)
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
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = 10 * time.Second
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
		users:    map[string]map[*client]struct{}{},
		revoked:  map[string]revocation{},
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
		h.sweepRevokedLocked(now)
		h.mu.Unlock()
	}
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

func ptr[T any](v T) *T { return &v }
