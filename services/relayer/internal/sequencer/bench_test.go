package sequencer

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// BenchmarkFanOut sequences one pub to a room with n subscribed links:
// apply, log write (no fsync), encode once, stage and deliver the same
// bytes to every link. Allocations must not grow with n.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("links=%d", n), func(b *testing.B) {
			st, err := store.Open(b.TempDir(), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			cfg := testConfig()
			cfg.QueueBytes = 1 << 30
			s, err := New(cfg, st)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			recs := make([]*recorder, n)
			for i := range recs {
				var in *Input
				in, recs[i] = openByHand(b, s, fmt.Sprint("sub", i))
				s.apply([]event{{kind: evFrames, in: in, frames: []*link.Frame{{T: link.OpSync, Rooms: []link.RoomState{{Room: "r"}}}}}})
			}
			pub, pubRec := openByHand(b, s, "pub")
			s.apply([]event{{kind: evFrames, in: pub, frames: []*link.Frame{{T: link.OpSync}}}})
			msg := protocol.Message{Room: "r", Text: "a typical chat message of moderate length", From: "alice", UID: "u-1", ID: "c-1"}
			f := &link.Frame{T: link.OpPub, Msg: &msg}
			ev := []event{{kind: evFrames, in: pub, frames: []*link.Frame{f}}}
			var mid []byte
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				mid = strconv.AppendInt(mid[:0], int64(i), 10)
				f.MID = string(mid)
				if err := s.apply(ev); err != nil {
					b.Fatal(err)
				}
				for _, r := range recs {
					r.out = r.out[:0]
				}
				pubRec.out = pubRec.out[:0]
			}
		})
	}
}

// benchLog returns a sequencer (not running) whose log holds n messages of
// each of rooms rooms, published round-robin, so that a room's records lie
// scattered over the log as they do in practice.
func benchLog(b *testing.B, rooms, n int, tweak func(*Config)) *Sequencer {
	st, err := store.Open(b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := testConfig()
	cfg.QueueBytes = 1 << 30
	tweak(&cfg)
	s, err := New(cfg, st)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		s.reader.Close()
		st.Close()
	})
	pub, rec := openByHand(b, s, "pub")
	s.apply([]event{{kind: evFrames, in: pub, frames: []*link.Frame{{T: link.OpSync}}}})
	text := "a typical chat message of moderate length, a little longer than a short one"
	var frames []*link.Frame
	for i := range n {
		for r := range rooms {
			msg := protocol.Message{Room: fmt.Sprint("room-", r), Text: text, From: "alice", UID: "u-1", ID: "c-1"}
			frames = append(frames, &link.Frame{T: link.OpPub, MID: fmt.Sprint(i, "-", r), Msg: &msg})
			if len(frames) == maxBatch {
				if err := s.apply([]event{{kind: evFrames, in: pub, frames: frames}}); err != nil {
					b.Fatal(err)
				}
				frames, rec.out = frames[:0], rec.out[:0]
			}
		}
	}
	if err := s.apply([]event{{kind: evFrames, in: pub, frames: frames}}); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkReadFromLog reads 1000 messages of one room from a log of 100
// rooms (the file in the page cache): what one fetch or catch-up older
// than the ring costs the reader goroutine.
func BenchmarkReadFromLog(b *testing.B) {
	s := benchLog(b, 100, 1000, func(c *Config) { c.HistoryLimit = 10; c.RetentionBytes = 1 << 30 })
	r := s.rooms["room-7"]
	b.ReportAllocs()
	for b.Loop() {
		it := &readItem{room: r, lo: 1, hi: 1000, offs: r.disk.offsets(1, 1000), back: true}
		s.runJob(s.reader, &readJob{items: []*readItem{it}})
		if !it.complete() {
			b.Fatal(it.err)
		}
	}
}

// BenchmarkCompactRetained rewrites a log of about 64 MiB that the
// retention keeps whole: the pause a compaction costs the sequencer per
// 64 MiB of RETENTION_BYTES (no fsync: add the disk's time to write it).
func BenchmarkCompactRetained(b *testing.B) {
	s := benchLog(b, 100, 2600, func(c *Config) { c.HistoryLimit = 10; c.RetentionBytes = 1 << 30 })
	size := s.st.Size()
	for b.Loop() {
		cut := s.cutoff()
		kept := s.kept(cut)
		moved := make([]int64, len(kept))
		var readErr error
		if err := s.st.CompactChecked(s.retained(kept, moved, &readErr), func() error { return readErr }); err != nil {
			b.Fatal(err)
		}
		s.moved(cut, kept, moved)
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB")
}
