package sequencer

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// History beyond the rings: every message the log still holds within the
// retention (RETENTION_BYTES, RETENTION_AGE) can be fetched and caught up
// with, read back from the log by offset.
//
// Each room indexes the offset of every message it has on disk, oldest
// first, 8 bytes per message (diskIndex); a compaction drops the entries
// of the messages it drops. Reads run on one reader goroutine, from its
// own handle on the log (pread), so that the sequencer does not wait for
// the disk: the sequencer collects a batch's reads per link into one job,
// hands it over after the batch's sync (only written records can be
// read), and stages the answers when the job comes back, as an event like
// any other. A compaction waits until no job is out, since it changes
// every offset.

// diskIndex holds the offset of each message of a room in the log: offs[i]
// is the record of seq first+i. A room's seqs are contiguous and its
// records in seq order in the log, so the offsets ascend; a hole (records
// a damaged log lost) restarts the index after it.
type diskIndex struct {
	first uint64
	offs  []int64
}

func (d *diskIndex) add(seq uint64, off int64) {
	if len(d.offs) == 0 || seq != d.first+uint64(len(d.offs)) {
		d.first, d.offs = seq, d.offs[:0]
	}
	d.offs = append(d.offs, off)
}

// from returns the oldest seq whose record is at or after off (one past
// the last indexed seq when none is).
func (d *diskIndex) from(off int64) uint64 {
	return d.first + uint64(sort.Search(len(d.offs), func(i int) bool { return d.offs[i] >= off }))
}

// offsets returns the offsets of seqs lo..hi, which must be indexed.
func (d *diskIndex) offsets(lo, hi uint64) []int64 {
	return slices.Clone(d.offs[lo-d.first : hi-d.first+1])
}

// ageMark says that every record before off has a timestamp of at most
// maxTS (Unix ms): RETENTION_AGE finds with them the offset before which
// everything is older, without a timestamp per message in memory.
type ageMark struct {
	off   int64
	maxTS int64
}

// ageMarkSpan is the resolution of RETENTION_AGE: marks within this span
// of timestamps share one, so that they number at most one per span of
// the retention (a compaction forgets those before its cut but the last):
// 16 bytes per 10 s, 1 MiB for 7 days.
const ageMarkSpan = 10 * 1000 // ms

// markAge notes that every record before end is at most s.maxTS old.
func (s *Sequencer) markAge(end int64) {
	if s.cfg.RetentionAge <= 0 {
		return
	}
	if n := len(s.marks); n > 0 && s.marks[n-1].maxTS/ageMarkSpan == s.maxTS/ageMarkSpan {
		s.marks[n-1] = ageMark{end, s.maxTS}
		return
	}
	s.marks = append(s.marks, ageMark{end, s.maxTS})
}

// indexed records where the record of r's message seq (timestamp ts) is.
func (s *Sequencer) indexed(r *room, seq uint64, off, ts int64) {
	r.disk.add(seq, off)
	s.maxTS = max(s.maxTS, ts)
}

// cutoff is the offset before which messages are beyond the retention:
// older than RETENTION_AGE or further from the log's end than
// RETENTION_BYTES. (The rings' messages are kept whatever their age.)
func (s *Sequencer) cutoff() int64 {
	size := s.st.Size()
	c := size - min(s.cfg.RetentionBytes, size)
	if age := s.cfg.RetentionAge; age > 0 {
		old := s.cfg.Now().Add(-age).UnixMilli()
		if i := sort.Search(len(s.marks), func(i int) bool { return s.marks[i].maxTS >= old }); i > 0 {
			c = max(c, s.marks[i-1].off)
		}
	}
	return c
}

// oldest is the oldest seq of r that can be served (from the ring or the
// log), or last+1 when there is none: "oldest > since+1" always means
// that something after since is gone.
func (s *Sequencer) oldest(r *room, cut int64) uint64 {
	if len(r.disk.offs) == 0 {
		return r.first()
	}
	return min(r.first(), r.disk.from(cut))
}

// readJob is one link's reads of one batch, answered together.
type readJob struct {
	id    uint64
	in    *Input
	items []*readItem
}

// readItem reads seqs lo..hi of a room (their offsets in offs) and makes
// either a fetched answer (fetch set) or a subscribed answer.
type readItem struct {
	room   *room
	lo, hi uint64
	offs   []int64
	back   bool // newest first: over the budget, the oldest are cut
	fetch  *link.Frame
	tail   [][]byte // fetch: the ring's part of the answer
	gap    bool     // subscribed: messages after since were gone already
	prefix [][]byte // subscribed: what earlier reads got, ending at lo-1
	// Written by the reader goroutine.
	got   [][]byte // ascending, from gotLo
	gotLo uint64
	err   error
}

// complete reports whether the item got every seq it asked for.
func (it *readItem) complete() bool {
	return it.err == nil && len(it.got) == int(it.hi-it.lo+1)
}

var errNoReader = errors.New("the log could not be opened for reading after its last compaction")

// diskReader is the state shared with the reader goroutine.
type diskReader struct {
	mu    sync.Mutex
	queue []*readJob
	wake  chan struct{}
	done  chan struct{}
}

// queueRead adds an item to the current batch's job for in.
func (s *Sequencer) queueRead(in *Input, it *readItem) *readJob {
	j := s.batchReads[in]
	if j == nil {
		s.nextJob++
		j = &readJob{id: s.nextJob, in: in}
		s.batchReads[in] = j
		s.readOrder = append(s.readOrder, j)
	}
	j.items = append(j.items, it)
	return j
}

// dispatchReads hands the batch's jobs to the reader; call it after the
// batch's sync, so that every record they read is written.
func (s *Sequencer) dispatchReads() {
	if len(s.readOrder) == 0 {
		return
	}
	s.rd.mu.Lock()
	s.rd.queue = append(s.rd.queue, s.readOrder...)
	s.rd.mu.Unlock()
	s.reads += len(s.readOrder)
	clear(s.readOrder)
	s.readOrder = s.readOrder[:0]
	clear(s.batchReads)
	select {
	case s.rd.wake <- struct{}{}:
	default:
	}
}

// readLoop is the reader goroutine: it runs jobs until the sequencer
// stops, and hands each back to it as an evRead event.
func (s *Sequencer) readLoop() {
	defer close(s.rd.done)
	for {
		select {
		case <-s.rd.wake:
		case <-s.stopped:
			return
		}
		for {
			s.rd.mu.Lock()
			var j *readJob
			if len(s.rd.queue) > 0 {
				j = s.rd.queue[0]
				s.rd.queue[0] = nil
				s.rd.queue = s.rd.queue[1:]
			}
			r := s.reader // replaced only while no job is out
			s.rd.mu.Unlock()
			if j == nil {
				break
			}
			s.runJob(r, j)
			if !s.send(event{kind: evRead, job: j}) {
				return
			}
		}
	}
}

// runJob reads a job's records, at most QueueBytes of messages in all
// (what its answers already carry counted): an answer for a thousand rooms
// must not take the relayer's memory.
func (s *Sequencer) runJob(r *store.Reader, j *readJob) {
	budget := s.cfg.QueueBytes
	for _, it := range j.items {
		for _, m := range it.prefix {
			budget -= len(m)
		}
	}
	var buf []byte
	for _, it := range j.items {
		if r == nil {
			it.err = errNoReader
			continue
		}
		n := int(it.hi - it.lo + 1)
		got := make([][]byte, n)
		k := 0
		for ; k < n && budget > 0; k++ {
			i := k
			if it.back {
				i = n - 1 - k
			}
			seq := it.lo + uint64(i)
			var err error
			if buf, err = r.ReadRecord(it.offs[i], buf); err != nil {
				it.err = err
				break
			}
			rec, err := store.DecodeRecord(buf)
			if err != nil || rec.Msg.Seq != seq || rec.Msg.Room != it.room.name {
				it.err = fmt.Errorf("the log's record at offset %d is not message %d of room %q (%v)", it.offs[i], seq, it.room.name, err)
				break
			}
			// Encoded as replay and publish do: the bytes the message was
			// delivered with.
			got[i] = protocol.AppendMessage(nil, &rec.Msg)
			budget -= len(got[i])
		}
		if it.back {
			it.got, it.gotLo = got[n-k:], it.hi-uint64(k)+1
		} else {
			it.got, it.gotLo = got[:k], it.lo
		}
	}
}

// read takes a job back from the reader and answers what is still asked.
func (s *Sequencer) read(j *readJob) {
	s.reads--
	inst := s.insts[j.in.inst]
	if inst == nil || inst.link != j.in {
		return // the link is gone; its instance asks again on the next
	}
	for _, it := range j.items {
		if it.err != nil {
			s.log.Error("reading history from the log failed", "room", it.room.name, "err", it.err)
		}
		if it.fetch != nil {
			s.answerFetch(inst, it)
		} else if inst.catching[it.room] == j.id {
			s.answerCatchUp(inst, it)
		} // else unsubscribed, or subscribed anew, meanwhile
	}
}

func (s *Sequencer) answerFetch(inst *instance, it *readItem) {
	ans := *it.fetch
	msgs := it.got
	switch {
	case it.err != nil:
		ans.Code, ans.Error = protocol.CodeUnavailable, "the relayer could not read this history from its log"
		msgs = nil
	case it.complete():
		msgs = append(msgs, it.tail...)
	}
	// Else over the budget: what was read is contiguous (the newest of
	// the page when paging back, the oldest after after); the ring's part
	// would follow a hole.
	s.stageWithMsgs(inst, &ans, msgs)
}

// answerCatchUp completes a subscribed answer: what was read, then the
// ring's messages after it. When the ring moved on past what was read (a
// busy room evicted more during the read), the rest is read first.
func (s *Sequencer) answerCatchUp(inst *instance, it *readItem) {
	r := it.room
	msgs := it.prefix
	last := it.lo - 1
	if it.err == nil && len(it.got) > 0 {
		msgs = append(msgs, it.got...)
		last = it.gotLo + uint64(len(it.got)) - 1
	}
	if ringFirst := r.first(); it.complete() && ringFirst > last+1 && r.disk.first <= last+1 {
		more := &readItem{room: r, gap: it.gap, prefix: msgs, lo: last + 1, hi: ringFirst - 1}
		more.offs = r.disk.offsets(more.lo, more.hi)
		inst.catching[r] = s.queueRead(inst.link, more).id
		return
	}
	delete(inst.catching, r)
	// Anything missing (not read, or gone from the ring meanwhile) is a
	// hole the gateway reports: Gap says so, and so do the seqs.
	gap := it.gap || !it.complete() || r.first() > last+1
	s.stageSubscribed(inst, r, append(msgs, r.msgs(r.index(last), len(r.ring), nil)...), gap)
}
