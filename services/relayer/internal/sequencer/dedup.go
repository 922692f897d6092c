package sequencer

// recentPubs remembers the last n publishes by their key (pubKey), whatever
// room they went to and however early their room's ring forgot them: an
// instance cut off while its room moved on by more than HISTORY_LIMIT
// messages re-sends publishes whose acknowledgement it never got, and so
// does a client through another instance, and they must not be sequenced
// twice.
type recentPubs struct {
	seqs  map[pubKey]roomSeq
	order []pubKey // a ring of the keys, oldest at next once full
	next  int
}

type roomSeq struct {
	room string
	seq  uint64
	slot int // the key's slot in order; older slots of the key are stale
}

func newRecentPubs(n int) *recentPubs {
	return &recentPubs{seqs: make(map[pubKey]roomSeq, n), order: make([]pubKey, 0, n)}
}

// add remembers k as the newest publish. A key already remembered moves
// to the newest slot (an instance reusing a mid, or a client an id, in another room, or replay
// restoring the window's order after a compaction); its old slot goes
// stale, and evicting a stale slot forgets nothing.
func (d *recentPubs) add(k pubKey, room string, seq uint64) {
	if cap(d.order) == 0 {
		return
	}
	slot := len(d.order)
	if slot < cap(d.order) {
		d.order = append(d.order, k)
	} else {
		slot = d.next
		if old := d.order[slot]; d.seqs[old].slot == slot {
			delete(d.seqs, old)
		}
		d.order[slot] = k
		d.next = (d.next + 1) % len(d.order)
	}
	d.seqs[k] = roomSeq{room, seq, slot}
}

// all yields the remembered publishes, oldest first.
func (d *recentPubs) all(yield func(pubKey, roomSeq) bool) {
	n := len(d.order)
	for i := range n {
		slot := (d.next + i) % n
		k := d.order[slot]
		if rs, ok := d.seqs[k]; ok && rs.slot == slot && !yield(k, rs) {
			return
		}
	}
}

func (d *recentPubs) get(k pubKey, room string) (uint64, bool) {
	rs, ok := d.seqs[k]
	return rs.seq, ok && rs.room == room
}
