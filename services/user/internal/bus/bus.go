// Package bus is the seam between a ws-user instance and whatever orders and
// spreads its rooms' messages: the in-process Local bus for a standalone
// instance, package relay for ws-relayer, package natsbus for a NATS
// JetStream cluster, and later other backends. It
// speaks rooms, sequence numbers, messages and members, never a backend's
// wire format; every implementation asserts that it is a Bus at compile
// time and passes the one table of package bustest.
//
// Every method of Bus but Publish only queues work and returns at once, so
// that the hub may call them while holding its lock. It calls Subscribe,
// Unsubscribe, Join, Leave and Fetch under it: the bus sees room changes in
// the order of the hub's state changes. It calls Publish without it: a
// client's chats are ordered by its reader goroutine, which calls Publish
// for each in turn, and Publish may wait a bounded time for room in a full
// queue (a backend's PublishWait, with Waiters), which slows that client
// down.
//
// Results come back through Handler in the order the backend produced
// them, never from inside a Bus method: Local calls it from its one
// goroutine; relay from the link's reader goroutine, from Run between two
// links (Restarted, State, LinkState, the fetches a lost link leaves
// unanswered) and, for a Fetch while the link is down, from a goroutine of
// its own; natsbus from one goroutine per room with publishes (Ack, Nack;
// also, when the cluster stops answering, the Nacks of every room's unsent
// publishes), per subscribed room from its delivery (Subscribed, and
// Message from nats.go's consumer callback) and its presence watch
// (Presence), from Run (Restarted, State, LinkState) and from one
// goroutine per Fetch. A Handler method may call Bus methods.
package bus

import (
	"context"
	"errors"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// ErrUnavailable is returned by Publish when the bounded queue of
// unacknowledged messages is full: the backend is unreachable, or behind
// for longer than a publish may wait.
var ErrUnavailable = errors.New("message queue full: the relay is unreachable or behind; retry later")

// Bus orders and spreads room traffic between instances.
type Bus interface {
	// Subscribe starts (or refreshes) delivery of a room; answered by
	// Handler.Subscribed. Calling it for a subscribed room is harmless.
	Subscribe(in Interest)
	// Unsubscribe stops delivery of room and removes this instance's
	// members from its presence.
	Unsubscribe(room string)
	// Join and Leave change this instance's members of a room.
	Join(room string, m protocol.Member)
	Leave(room string, memberID string)
	// Publish queues m under the instance-unique mid; answered by
	// Handler.Ack or Handler.Nack exactly once, possibly after a reconnect.
	// session is the sending client's (protocol.Inbound.Session), or
	// empty: a publish of the same session, room and m.ID as one the
	// backend still remembers is that one, acknowledged with its seq and
	// delivered to no one again.
	Publish(mid, session string, m protocol.Message) error
	// Fetch asks for up to limit messages of room with after < seq <
	// before (before 0: up to the end): paging back (after 0) the newest
	// of them, else the oldest after after (link.Window); answered by
	// Handler.Fetched with req.
	Fetch(req uint64, room string, after, before uint64, limit int)
	// Ready reports whether messages currently flow to the backend.
	Ready() bool
	// Run drives the bus until ctx ends.
	Run(ctx context.Context) error
}

// Interest is an instance's interest in one room: what Subscribe sends,
// and what Handler.State returns for every room after a reconnect.
type Interest struct {
	Room string
	// Since is the last seq the instance delivered; 0 for a new
	// subscription, unless Resume is set.
	Since uint64
	// Resume says the instance was subscribed and delivered every message
	// up to Since, even when Since is 0 (a room that had none yet): it is
	// owed every message after Since, not a new subscription's tail.
	Resume bool
	// Tail is how many recent messages the instance keeps for the room:
	// the answer brings every message after min(Since, last-Tail) when
	// Since > 0 or Resume is set, else the last Tail (link.CatchUpFrom).
	Tail int
	// Members are the instance's own members of the room.
	Members []protocol.Member
}

// Subscription is the answer to Subscribe: the room as the backend has
// it, and the messages the Interest is owed.
type Subscription struct {
	Room    string
	Seq     uint64
	First   uint64 // the oldest seq the backend keeps: above since+1, messages after since are gone
	Members []protocol.Member
	Msgs    []protocol.Message
	// Epoch names the backend's numbering the answer is in (the relayer's
	// log; a standalone bus's process), for clients (protocol.Joined).
	Epoch string
	// Settle is how long Members may still lack other instances' members
	// (a restarted backend has not heard from them all yet); zero when it
	// is the whole presence.
	Settle time.Duration
}

// Handler receives what the bus delivers.
type Handler interface {
	Subscribed(s Subscription)
	Message(m *protocol.Message)
	Ack(mid, room string, seq uint64)
	Nack(mid string, err *protocol.Error)
	Presence(room, event string, m protocol.Member)
	// Fetched answers Fetch; err is non-nil when the answer will never come
	// (the link dropped, or the relayer refused the fetch), and then msgs
	// is empty.
	Fetched(req uint64, msgs []protocol.Message, first uint64, err error)
	// Restarted says the backend's sequence numbers started over (its log
	// is new): every position the instance holds is void. It is called
	// before State, without bus locks held.
	Restarted()
	// State returns this instance's rooms, for the bus to resynchronise
	// the backend after a reconnect. It is called without bus locks held.
	State() []Interest
	// LinkState reports the backend link going up or down.
	LinkState(up bool)
}
