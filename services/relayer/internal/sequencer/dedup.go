package sequencer

// recentPubs remembers the last n publishes by (instance, mid), whatever
// room they went to and however early their room's ring forgot them: an
// instance cut off while its room moved on by more than HISTORY_LIMIT
// messages re-sends publishes whose acknowledgement it never got, and they
// must not be sequenced twice.
type recentPubs struct {
	seqs  map[midKey]roomSeq
	order []midKey // a ring of the keys, oldest at next once full
	next  int
}

type roomSeq struct {
	room string
	seq  uint64
}

func newRecentPubs(n int) *recentPubs {
	return &recentPubs{seqs: make(map[midKey]roomSeq, n), order: make([]midKey, 0, n)}
}

func (d *recentPubs) add(k midKey, room string, seq uint64) {
	if cap(d.order) == 0 {
		return
	}
	if _, ok := d.seqs[k]; ok {
		// One slot per key (an instance reusing a mid in another room):
		// a second slot's eviction would delete the newer entry.
		d.seqs[k] = roomSeq{room, seq}
		return
	}
	if len(d.order) < cap(d.order) {
		d.order = append(d.order, k)
	} else {
		delete(d.seqs, d.order[d.next])
		d.order[d.next] = k
		d.next = (d.next + 1) % len(d.order)
	}
	d.seqs[k] = roomSeq{room, seq}
}

// all yields the remembered publishes, oldest first.
func (d *recentPubs) all(yield func(midKey, roomSeq) bool) {
	n := len(d.order)
	for i := range n {
		k := d.order[(d.next+i)%n]
		if !yield(k, d.seqs[k]) {
			return
		}
	}
}

func (d *recentPubs) get(k midKey, room string) (uint64, bool) {
	rs, ok := d.seqs[k]
	return rs.seq, ok && rs.room == room
}
