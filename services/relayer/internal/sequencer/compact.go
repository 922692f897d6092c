package sequencer

import (
	"iter"
	"slices"
	"time"

	"github.com/wschat/wschat/services/relayer/internal/store"
)

// maybeCompact rewrites the log to what it must keep (see kept) once it is
// past COMPACT_BYTES and at least half of it would go, so a kept set
// larger than the threshold does not cause a compaction after every batch.
// It copies the kept records from the log while the sequencer waits: its
// cost grows with the retention (RETENTION_BYTES), not with the traffic.
func (s *Sequencer) maybeCompact() {
	size := s.st.Size()
	if size < s.nextCheck || s.reads > 0 {
		// With reads out, the next batch tries again: a compaction
		// moves every record the reader may be reading.
		return
	}
	cut := s.cutoff()
	if size <= 2*(size-cut+s.liveBytes) {
		s.nextCheck = size + s.cfg.CompactBytes/2
		return
	}
	if s.reader == nil {
		if s.reopen(); s.reader == nil {
			s.nextCheck = size + s.cfg.CompactBytes
			return
		}
	}
	start := time.Now()
	kept := s.kept(cut)
	moved := make([]int64, len(kept))
	var readErr error
	err := s.st.CompactChecked(s.retained(kept, moved, &readErr), func() error { return readErr })
	if err != nil {
		// Either the old log is intact, and compaction is tried again
		// after more growth, or the directory could not be synced after
		// the rename, and the log has failed: the next Sync stops the
		// relayer, before anything more is acknowledged.
		s.log.Error("log compaction failed", "err", err)
		s.nextCheck = size + s.cfg.CompactBytes
		return
	}
	s.moved(cut, kept, moved)
	// What a compaction keeps (retained messages, the window's keys) must
	// not make the next batch compact again: the log grows first.
	s.nextCheck = max(s.cfg.CompactBytes, s.st.Size()+s.cfg.CompactBytes/2)
	s.m.logBytes.Set(float64(s.st.Size()))
	s.log.Info("log compacted", "before_bytes", size, "after_bytes", s.st.Size(), "messages", len(kept),
		"took", time.Since(start).Round(time.Millisecond))
}

// retained yields what a compacted log holds: the records at the offsets
// kept (ascending, so in the order they were written: the order of
// publishing), read back from the log, then a key-only record for every
// publish in the de-duplication window, oldest first, whether or not a
// room retains its message. Replay adds the messages to the window in the
// log's order, which is not the order they were published in once the log
// of an older relayer compacted it room by room, and the key-only records
// then move the window's keys to its newest end in their true order: it
// forgets the same publishes the live window would have (those a room
// still retains are recognised by the room's ring too, but only until the
// room moves on). moved receives each kept record's new offset; a read
// that fails ends the records and is left in readErr.
func (s *Sequencer) retained(kept, moved []int64, readErr *error) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		var buf []byte
		var off int64
		sc := s.reader.Scanner()
		for i, o := range kept {
			p, err := sc.Record(o)
			if err != nil {
				*readErr = err
				return
			}
			moved[i] = off
			off += store.RecordSize(p)
			if !yield(p) {
				return
			}
		}
		for k, rs := range s.recent.all {
			buf = k.appendKeyRecord(buf[:0], rs.room, rs.seq)
			if !yield(buf) {
				return
			}
		}
	}
}

// kept returns the offsets, ascending, of the messages a compaction keeps:
// every room's ring, and what it has on disk from cut on.
func (s *Sequencer) kept(cut int64) []int64 {
	var kept []int64
	for _, r := range s.rooms {
		for i := range r.ring {
			kept = append(kept, r.at(i).off)
		}
		d := &r.disk
		for seq := d.from(cut); seq < r.first() && seq < d.first+uint64(len(d.offs)); seq++ {
			kept = append(kept, d.offs[seq-d.first])
		}
	}
	slices.Sort(kept)
	return kept
}

// moved points the rings, the disk indexes and the age marks at the
// compacted log, where the record at kept[i] went to moved[i]. What it
// did not keep leaves the indexes.
func (s *Sequencer) moved(cut int64, kept, moved []int64) {
	to := func(old int64) int64 {
		i, _ := slices.BinarySearch(kept, old)
		return moved[i]
	}
	for _, r := range s.rooms {
		for i := range r.ring {
			e := r.at(i)
			e.off = to(e.off)
		}
		d := &r.disk
		drop := int(d.from(cut) - d.first)
		if ringFirst := r.first(); ringFirst >= d.first {
			drop = min(drop, int(ringFirst-d.first))
		}
		offs := d.offs[min(drop, len(d.offs)):]
		if drop > 0 {
			offs = slices.Clone(offs) // let the dropped part go
			d.first += uint64(drop)
		}
		for i, o := range offs {
			offs[i] = to(o)
		}
		d.offs = offs
	}
	// A mark's records before it are those kept from before it.
	var end int64
	if n := len(kept); n > 0 {
		end = moved[n-1] + 1 // past the last kept record's start
	}
	marks := s.marks[:0]
	for k, m := range s.marks {
		if k+1 < len(s.marks) && s.marks[k+1].off <= cut {
			continue // a later mark before the cut says more
		}
		i, _ := slices.BinarySearch(kept, m.off)
		off := end
		if i < len(kept) {
			off = moved[i]
		}
		if n := len(marks); n > 0 && marks[n-1].off >= off {
			continue // the earlier mark says as much, with an older time
		}
		marks = append(marks, ageMark{off, m.maxTS})
	}
	s.marks = marks
	s.reopen()
}

// reopen points the reader at the log's current file.
func (s *Sequencer) reopen() {
	r, err := s.st.OpenReader()
	if err != nil {
		s.log.Error("cannot open the log for reading: history beyond the rings is unavailable until the next compaction", "err", err)
	}
	s.rd.mu.Lock()
	old := s.reader
	s.reader = r
	s.rd.mu.Unlock()
	if old != nil {
		old.Close()
	}
}
