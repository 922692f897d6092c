package bus

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// Local is the bus of a standalone instance: it sequences every room in
// process and keeps the last limit messages of each in memory. Its
// ordering and answers follow the relay link's contract, so the hub cannot
// tell it from a relayer.
type Local struct {
	h     Handler
	limit int
	now   func() time.Time

	mu    sync.Mutex
	ops   []func()
	wake  chan struct{}
	rooms map[string]*localRoom
	epoch string // this process's numbering: a restart starts rooms at 1

	// Owned by Run: the last window publishes of clients with a session,
	// by session and id, as a relayer remembers them (its DEDUP_WINDOW).
	window int
	sent   map[clientKey]roomSeq
	order  []clientKey // a ring, oldest at next once full
	next   int
}

var _ Bus = (*Local)(nil)

type clientKey struct{ session, id string }

type roomSeq struct {
	room string
	seq  uint64
}

type localRoom struct {
	last uint64
	msgs []protocol.Message // ascending, at most limit
}

// NewLocal returns a standalone bus keeping limit messages per room. It
// de-duplicates no publishes unless given a window (WithDedupWindow).
func NewLocal(h Handler, limit int) *Local {
	return &Local{
		h: h, limit: limit, now: time.Now, wake: make(chan struct{}, 1), rooms: map[string]*localRoom{},
		sent: map[clientKey]roomSeq{}, epoch: strconv.FormatInt(time.Now().UnixNano(), 36),
	}
}

// WithDedupWindow makes l remember the last n publishes of clients with a
// session (see Publish); call it before Run.
func (l *Local) WithDedupWindow(n int) *Local {
	l.window = n
	return l
}

func (l *Local) enqueue(op func()) {
	l.mu.Lock()
	l.ops = append(l.ops, op)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Run applies queued operations in order until ctx ends.
func (l *Local) Run(ctx context.Context) error {
	l.h.LinkState(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.wake:
		}
		l.mu.Lock()
		ops := l.ops
		l.ops = nil
		l.mu.Unlock()
		for _, op := range ops {
			op()
		}
	}
}

// Ready is always true: there is nothing to be cut off from.
func (l *Local) Ready() bool { return true }

func (l *Local) room(name string) *localRoom {
	r := l.rooms[name]
	if r == nil {
		r = &localRoom{}
		l.rooms[name] = r
	}
	return r
}

// peek looks a room up without creating it: asking about a room must not
// cost memory.
func (l *Local) peek(name string) *localRoom {
	if r := l.rooms[name]; r != nil {
		return r
	}
	return &localRoom{}
}

// first is the oldest kept seq, or last+1 when nothing is kept.
func (r *localRoom) first() uint64 {
	if len(r.msgs) == 0 {
		return r.last + 1
	}
	return r.msgs[0].Seq
}

// after returns the kept messages with seq > after, in order.
func (r *localRoom) after(after uint64) []protocol.Message {
	if len(r.msgs) == 0 || after >= r.last {
		return nil
	}
	i := 0
	if f := r.first(); after >= f {
		i = int(after - f + 1)
	}
	return append([]protocol.Message(nil), r.msgs[i:]...)
}

// Subscribe answers with the room's catch-up as a relayer would.
func (l *Local) Subscribe(in Interest) {
	l.enqueue(func() {
		r := l.peek(in.Room)
		from := link.CatchUpFrom(r.last, in.Since, in.Resume, in.Tail, l.limit)
		l.h.Subscribed(Subscription{
			Room:  in.Room,
			Seq:   r.last,
			First: r.first(),
			Msgs:  r.after(from),
			Epoch: l.epoch,
		})
	})
}

// Unsubscribe forgets a room without messages; one with messages keeps its
// history for a later subscriber.
func (l *Local) Unsubscribe(room string) {
	l.enqueue(func() {
		if r := l.rooms[room]; r != nil && r.last == 0 {
			delete(l.rooms, room)
		}
	})
}

// Join needs no bookkeeping: every member is local and the hub knows them.
func (l *Local) Join(string, protocol.Member) {}

// Leave needs no bookkeeping, as Join.
func (l *Local) Leave(string, string) {}

// Publish sequences m, unless it is a client's re-send of a publish still
// in the window: that one is only acknowledged again.
func (l *Local) Publish(mid, session string, m protocol.Message) error {
	l.enqueue(func() {
		k := clientKey{session, m.ID}
		if session != "" && m.ID != "" {
			if rs, ok := l.sent[k]; ok && rs.room == m.Room {
				l.h.Ack(mid, m.Room, rs.seq)
				return
			}
		}
		r := l.room(m.Room)
		r.last++
		m.Seq = r.last
		m.TS = l.now().UnixMilli()
		r.msgs = append(r.msgs, m)
		if len(r.msgs) > l.limit {
			// Copy down rather than reslice so the backing array does not
			// grow without bound.
			n := copy(r.msgs, r.msgs[len(r.msgs)-l.limit:])
			clear(r.msgs[n:])
			r.msgs = r.msgs[:n]
		}
		if session != "" && m.ID != "" {
			l.remember(k, roomSeq{m.Room, m.Seq})
		}
		l.h.Message(&m)
		l.h.Ack(mid, m.Room, m.Seq)
	})
	return nil
}

// remember adds k to the window, forgetting the oldest key once it is
// full. A key sent again to another room only changes its room and seq:
// it is forgotten from its first slot, a little early.
func (l *Local) remember(k clientKey, rs roomSeq) {
	if l.window <= 0 {
		return
	}
	if _, ok := l.sent[k]; ok {
		l.sent[k] = rs
		return
	}
	if len(l.order) < l.window {
		l.order = append(l.order, k)
	} else {
		delete(l.sent, l.order[l.next])
		l.order[l.next] = k
		l.next = (l.next + 1) % len(l.order)
	}
	l.sent[k] = rs
}

// Fetch answers from memory.
func (l *Local) Fetch(req uint64, room string, after, before uint64, limit int) {
	l.enqueue(func() {
		r := l.peek(room)
		l.h.Fetched(req, Window(r.msgs, after, before, limit), r.first(), nil)
	})
}

// Window applies the link.OpFetch rule (link.Window) to msgs (ascending):
// a copy of the messages in the window.
func Window(msgs []protocol.Message, after, before uint64, limit int) []protocol.Message {
	lo, hi := link.Window(len(msgs), func(i int) uint64 { return msgs[i].Seq }, after, before, limit)
	return append([]protocol.Message(nil), msgs[lo:hi]...)
}
