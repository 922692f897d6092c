package sequencer

import (
	"cmp"
	"slices"
	"sort"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// pubKey identifies a publish for de-duplication: by the sending client's
// session and its own message id when the client gave both, else by the
// publishing instance and its mid (a mid is only unique per instance, so
// two gateways may well use the same one). A client that re-sends through
// another instance after a reconnect sends another mid but the same
// session and id; its old instance re-sends the same mid, session and id:
// with the client's key, all of them are one publish.
type pubKey struct {
	a, b   string // instance and mid; or session and client id
	client bool
}

func keyOf(inst, mid, sess, id string) pubKey {
	if sess != "" && id != "" {
		return pubKey{sess, id, true}
	}
	return pubKey{inst, mid, false}
}

// appendKeyRecord appends the key-only log record of k.
func (k pubKey) appendKeyRecord(dst []byte, room string, seq uint64) []byte {
	if k.client {
		return store.AppendSessionKeyRecord(dst, k.a, k.b, room, seq)
	}
	return store.AppendKeyRecord(dst, k.b, k.a, room, seq)
}

// entry is one retained message.
type entry struct {
	seq  uint64
	key  pubKey
	js   []byte // the protocol.Message JSON, encoded once
	size int64  // bytes of its log record, for the compaction trigger
	off  int64  // where its log record is
}

// room is everything the sequencer knows about one room.
type room struct {
	name   string
	last   uint64
	lastTS int64
	// ring holds the last HISTORY_LIMIT messages in seq order starting at
	// start; it grows to the limit and then overwrites the oldest.
	ring     []entry
	start    int
	disk     diskIndex // the offsets of its messages in the log
	mids     map[pubKey]uint64
	subs     map[*instance]struct{}
	presence map[*instance]map[string]protocol.Member
}

func newRoom(name string) *room {
	return &room{
		name:     name,
		mids:     map[pubKey]uint64{},
		subs:     map[*instance]struct{}{},
		presence: map[*instance]map[string]protocol.Member{},
	}
}

func (r *room) at(i int) *entry { return &r.ring[(r.start+i)%len(r.ring)] }

// push retains e, evicting the oldest message when the ring is full.
func (r *room) push(e entry, limit int) (evicted entry, ok bool) {
	if len(r.ring) < limit {
		r.ring = append(r.ring, e)
	} else {
		evicted, ok = r.ring[r.start], true
		r.ring[r.start] = e
		r.start = (r.start + 1) % len(r.ring)
		if r.mids[evicted.key] == evicted.seq {
			delete(r.mids, evicted.key)
		}
	}
	r.mids[e.key] = e.seq
	return evicted, ok
}

// first is the oldest retained seq, or last+1 when nothing is retained,
// so "first > since+1" always means "something after since is gone".
func (r *room) first() uint64 {
	if len(r.ring) == 0 {
		return r.last + 1
	}
	return r.at(0).seq
}

// index returns the position of the first retained message with seq > s.
// Searching instead of computing keeps it right even if a replayed log had
// holes.
func (r *room) index(s uint64) int {
	return sort.Search(len(r.ring), func(i int) bool { return r.at(i).seq > s })
}

func (r *room) msgs(lo, hi int, dst [][]byte) [][]byte {
	for i := lo; i < hi; i++ {
		dst = append(dst, r.at(i).js)
	}
	return dst
}

// window applies the link.OpFetch rule (link.Window) to the ring.
func (r *room) window(after, before uint64, limit int, dst [][]byte) [][]byte {
	lo, hi := link.Window(len(r.ring), func(i int) uint64 { return r.at(i).seq }, after, before, limit)
	return r.msgs(lo, hi, dst)
}

// members returns every member of the room on every instance, ordered so
// that answers are deterministic.
func (r *room) members() []protocol.Member {
	n := 0
	for _, ms := range r.presence {
		n += len(ms)
	}
	if n == 0 {
		return nil
	}
	out := make([]protocol.Member, 0, n)
	for _, ms := range r.presence {
		for _, m := range ms {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b protocol.Member) int {
		return cmp.Or(cmp.Compare(a.Instance, b.Instance), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// idle reports whether the room holds nothing worth keeping in memory.
func (r *room) idle() bool {
	return r.last == 0 && len(r.subs) == 0 && len(r.presence) == 0
}
