package sequencer

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// retention keeps far more than the rings: HISTORY_LIMIT 10, the log
// within a GiB.
func retention(c *Config) {
	c.HistoryLimit = 10
	c.RetentionBytes = 1 << 30
}

var mids atomic.Uint64

// pubN publishes n messages "msg" to room and waits for their acks.
func pubN(c *client, room string, n int) {
	c.T.Helper()
	for range n {
		c.Pub(fmt.Sprint("m", mids.Add(1)), room, "msg")
		c.Expect(link.OpAck)
	}
}

// fakeClock is a Config.Now that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fetchSeqs fetches and returns the answer.
func fetchSeqs(c *client, after, before uint64, limit int) *link.Frame {
	c.T.Helper()
	c.Send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r", After: after, Before: before, Limit: limit})
	return c.Expect(link.OpFetched)
}

// checkHistory asserts that h serves every one of 1..last of room r, from
// the log beyond the ring of 10, both through fetch and a resync.
func checkHistory(t *testing.T, h *harness, last uint64, when string) {
	t.Helper()
	c := h.dial(fmt.Sprint("check-", when))
	c.Sync()
	cases := []struct {
		after, before uint64
		limit         int
		want          []uint64
	}{
		{0, 0, 0, seqRange(1, last)},                 // everything, older than the ring included
		{0, 11, 5, seqRange(6, 10)},                  // paging back, all from the log
		{0, last - 2, 20, seqRange(last-22, last-3)}, // part log, part ring
		{3, 0, 4, seqRange(4, 7)},                    // oldest after after
		{last - 15, 0, 0, seqRange(last-14, last)},
	}
	for _, tc := range cases {
		f := fetchSeqs(c, tc.after, tc.before, tc.limit)
		if f.Code != "" || f.First != 1 || !slices.Equal(seqs(f.Msgs), tc.want) {
			t.Errorf("%s: fetch after %d before %d limit %d: code %q first %d msgs %v; want first 1, %v",
				when, tc.after, tc.before, tc.limit, f.Code, f.First, seqs(f.Msgs), tc.want)
		}
		for _, m := range f.Msgs {
			if m.Text != "msg" || m.Room != "r" || m.From != "nick" {
				t.Fatalf("%s: fetched message %+v", when, m)
			}
		}
	}
	for _, rs := range []link.RoomState{{Room: "r", Since: 2}, {Room: "r", Resume: true}} {
		d := h.dial(fmt.Sprint("resync-", when, rs.Since))
		sub := d.Sync(rs)[0]
		if sub.Gap || sub.First != 1 || sub.Seq != last || !slices.Equal(seqs(sub.Msgs), seqRange(rs.Since+1, last)) {
			t.Errorf("%s: resync since %d resume %v: gap %v first %d seq %d msgs %v; want every message after since",
				when, rs.Since, rs.Resume, sub.Gap, sub.First, sub.Seq, seqs(sub.Msgs))
		}
	}
}

// Fetches and catch-ups older than the ring are read from the log, in
// order and whole, also after a restart and after compactions.
func TestHistoryBeyondTheRingFromTheLog(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	tweak := func(c *Config) { retention(c); c.RetentionAge = time.Hour; c.Now = clock.Now }
	h := start(t, dir, tweak)
	p := h.dial("p")
	p.Sync()
	pubN(p, "other", 300) // beyond RETENTION_AGE soon: what a compaction drops
	clock.advance(2 * time.Hour)
	pubN(p, "r", 100)
	checkHistory(t, h, 100, "live")
	h.stop()

	// A compaction drops other's old messages, and keeps all of r's: they
	// are within the retention.
	h2 := start(t, dir, func(c *Config) { tweak(c); c.CompactBytes = 8 << 10 })
	checkHistory(t, h2, 100, "restarted")
	p2 := h2.dial("p")
	p2.Sync()
	if afterCompactions(h2, p2) == 0 {
		t.Fatal("no compaction")
	}
	checkHistory(t, h2, 100, "compacted")
	pubN(p2, "r", 50)
	checkHistory(t, h2, 150, "compacted, then more")
	if sub := h2.dial("o").Sync(link.RoomState{Room: "other", Since: 1})[0]; !sub.Gap || sub.First != 291 {
		t.Fatalf("room other: gap %v first %d; want its ring only", sub.Gap, sub.First)
	}
	h2.stop()

	h3 := start(t, dir, tweak)
	checkHistory(t, h3, 150, "compacted and restarted")
	p3 := h3.dial("p")
	p3.Sync()
	p3.Pub("next", "r", "next")
	if ack := p3.Expect(link.OpAck); ack.Seq != 151 {
		t.Fatalf("next seq %d, want 151", ack.Seq)
	}
}

// Beyond RETENTION_AGE the log's history is gone, and First and Gap say
// so, before and after a restart and a compaction.
func TestHistoryBeyondTheRetentionAge(t *testing.T) {
	clock := newClock()
	tweak := func(c *Config) { retention(c); c.RetentionAge = time.Hour; c.Now = clock.Now }
	dir := t.TempDir()
	h := start(t, dir, tweak)
	p := h.dial("p")
	p.Sync()
	pubN(p, "old", 300) // what makes a compaction worth it
	pubN(p, "r", 50)    // 1..50 at 00:00
	clock.advance(2 * time.Hour)
	pubN(p, "r", 50) // 51..100 at 02:00: 1..50 are over an hour old
	check := func(h *harness, when string) {
		t.Helper()
		c := h.dial("c-" + when)
		sub := c.Sync(link.RoomState{Room: "r", Since: 20})[0]
		if !sub.Gap || sub.First != 51 || !slices.Equal(seqs(sub.Msgs), seqRange(51, 100)) {
			t.Errorf("%s: resync since 20: gap %v first %d msgs %v; want a gap, first 51 and 51..100", when, sub.Gap, sub.First, seqs(sub.Msgs))
		}
		sub = h.dial("d-" + when).Sync(link.RoomState{Room: "r", Since: 50})[0]
		if sub.Gap || sub.First != 51 || !slices.Equal(seqs(sub.Msgs), seqRange(51, 100)) {
			t.Errorf("%s: resync since 50: gap %v first %d msgs %v; want no gap and 51..100", when, sub.Gap, sub.First, seqs(sub.Msgs))
		}
		if f := fetchSeqs(c, 0, 60, 100); f.First != 51 || !slices.Equal(seqs(f.Msgs), seqRange(51, 59)) {
			t.Errorf("%s: fetch before 60: first %d msgs %v; want first 51 and 51..59", when, f.First, seqs(f.Msgs))
		}
	}
	check(h, "live")
	h.stop()
	h2 := start(t, dir, func(c *Config) { tweak(c); c.CompactBytes = 4 << 10 })
	check(h2, "restarted")
	p2 := h2.dial("p")
	p2.Sync()
	pubN(p2, "other", 5)
	if afterCompactions(h2, p2) == 0 {
		t.Fatal("no compaction")
	}
	check(h2, "compacted")
	h2.stop()
	check(start(t, dir, tweak), "compacted and restarted")
}

// RETENTION_BYTES: only the last bytes of the log are served beyond the
// ring, contiguous up to the last message, and everything older is
// reported gone.
func TestHistoryBeyondTheRetentionBytes(t *testing.T) {
	h := start(t, "", func(c *Config) { retention(c); c.RetentionBytes = 4 << 10 })
	p := h.dial("p")
	p.Sync()
	pubN(p, "r", 200) // about 100 bytes a record: 20 KB
	c := h.dial("c")
	sub := c.Sync(link.RoomState{Room: "r", Resume: true})[0]
	first := sub.First
	if first <= 100 || first > 180 || !sub.Gap || !slices.Equal(seqs(sub.Msgs), seqRange(first, 200)) {
		t.Fatalf("resume: gap %v first %d msgs %v; want about the last 40 messages from first on, and a gap", sub.Gap, first, seqs(sub.Msgs))
	}
	if f := fetchSeqs(c, 0, 0, 1000); f.First != first || !slices.Equal(seqs(f.Msgs), seqRange(first, 200)) {
		t.Fatalf("fetch: first %d msgs %v; want %d..200", f.First, seqs(f.Msgs), first)
	}
}

// Without retention (0) only the rings are served, as before.
func TestNoRetentionServesTheRingsOnly(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 10 })
	p := h.dial("p")
	p.Sync()
	pubN(p, "r", 30)
	sub := h.dial("c").Sync(link.RoomState{Room: "r", Since: 5})[0]
	if !sub.Gap || sub.First != 21 || !slices.Equal(seqs(sub.Msgs), seqRange(21, 30)) {
		t.Fatalf("gap %v first %d msgs %v", sub.Gap, sub.First, seqs(sub.Msgs))
	}
}

// A catch-up read from the log is bounded (LINK_QUEUE_BYTES): past it, the
// newest messages that fit come, and Gap says the rest is missing.
func TestCatchUpFromTheLogIsBounded(t *testing.T) {
	h := start(t, "", func(c *Config) { retention(c); c.QueueBytes = 4 << 10 })
	p := h.dial("p")
	p.Sync()
	for i := range 200 {
		p.Pub(fmt.Sprint(i), "r", strings.Repeat("m", 100))
		p.Expect(link.OpAck)
	}
	sub := h.dial("c").Sync(link.RoomState{Room: "r", Since: 1})[0]
	got := seqs(sub.Msgs)
	if !sub.Gap || sub.First != 1 || len(got) < 20 || len(got) > 60 || !slices.Equal(got, seqRange(got[0], 200)) {
		t.Fatalf("gap %v first %d msgs %v; want a gap and the newest 20..60 messages", sub.Gap, sub.First, got)
	}
}

// While a resync's history is read from the log, the room's live messages
// and presence do not go to that instance ahead of its subscribed answer:
// the answer carries them, and live frames follow it.
func TestCatchUpFromTheLogPrecedesLiveFrames(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, retention)
	p := h.dial("p")
	p.Sync()
	pubN(p, "r", 30)
	h.stop()

	h2, run := startPaused(t, dir, retention)
	b := h2.dial("b")
	b.Send(&link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "r", Since: 5}}})
	waitQueued(t, h2, 2) // b's open and sync, ahead of p's frames
	p2 := h2.dial("p")
	p2.Send(&link.Frame{T: link.OpSync}, linktest.PubFrame("late", "r", "late"),
		&link.Frame{T: link.OpJoin, Room: "r", Member: &protocol.Member{ID: "m1", Nick: "n"}})
	waitQueued(t, h2, 4)
	run()
	sub := b.Expect(link.OpSubscribed)
	if sub.Gap || !slices.Equal(seqs(sub.Msgs), seqRange(6, 31)) || len(sub.Members) != 1 {
		t.Fatalf("subscribed: gap %v msgs %v members %v; want 6..31 and the new member", sub.Gap, seqs(sub.Msgs), sub.Members)
	}
	p2.Pub("later", "r", "later")
	if m := b.Expect(link.OpMsg); m.Msg.Seq != 32 {
		t.Fatalf("live message after the answer: %+v", m.Msg)
	}
}

// waitQueued waits until the paused sequencer of h has n events waiting.
func waitQueued(t *testing.T, h *harness, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for len(h.s.in) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d events queued, want %d", len(h.s.in), n)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
}

// When the ring moves on past what a resync's read got (a busy room
// evicted more while the log was read), the rest is read before the
// answer goes out, and the answer still holds every message after since,
// those sequenced meanwhile included; none went to the instance before it.
// Driven by hand (no Run), so that the publishes land between the read and
// its answer.
func TestCatchUpReadsWhatTheRingLostMeanwhile(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	retention(&cfg)
	s, err := New(cfg, st)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.reader.Close(); st.Close() })
	fake := func(id string, rooms ...link.RoomState) (*Input, *recorder) {
		in, rec := openByHand(t, s, id)
		if err := s.apply([]event{{kind: evFrames, in: in, frames: []*link.Frame{{T: link.OpSync, Rooms: rooms}}}}); err != nil {
			t.Fatal(err)
		}
		return in, rec
	}
	pub, _ := fake("p")
	publish := func(n int) {
		for range n {
			if err := s.apply([]event{{kind: evFrames, in: pub, frames: []*link.Frame{linktest.PubFrame(fmt.Sprint("m", mids.Add(1)), "r", "msg")}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// runReads plays the reader goroutine for the jobs handed over.
	runReads := func() int {
		s.rd.mu.Lock()
		jobs := s.rd.queue
		s.rd.queue = nil
		s.rd.mu.Unlock()
		for _, j := range jobs {
			s.runJob(s.reader, j)
			if err := s.apply([]event{{kind: evRead, job: j}}); err != nil {
				t.Fatal(err)
			}
		}
		return len(jobs)
	}
	publish(30)
	_, b := fake("b", link.RoomState{Room: "r", Since: 5})
	s.rd.mu.Lock()
	first := s.rd.queue
	s.rd.queue = nil
	s.rd.mu.Unlock()
	if len(first) != 1 || b.out != nil {
		t.Fatalf("%d jobs, output %.200q: want one read out and no answer yet", len(first), b.out)
	}
	s.runJob(s.reader, first[0]) // reads 6..20
	publish(25)                  // 31..55: the ring (10) now starts at 46
	if err := s.apply([]event{{kind: evRead, job: first[0]}}); err != nil {
		t.Fatal(err)
	}
	if b.out != nil {
		t.Fatalf("answered before 21..45 were read: %.200q", b.out)
	}
	if n := runReads(); n != 1 {
		t.Fatalf("%d more reads, want 1", n)
	}
	var frames []*link.Frame
	if err := link.Split(b.out, func(f *link.Frame) error { frames = append(frames, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(frames) != 1 || frames[0].T != link.OpSubscribed || frames[0].Gap || frames[0].Seq != 55 ||
		!slices.Equal(seqs(frames[0].Msgs), seqRange(6, 55)) {
		t.Fatalf("b got %d frames, the first %+v; want only subscribed with 6..55", len(frames), frames[0])
	}
	b.out = b.out[:0]
	publish(1)
	if err := link.Split(b.out, func(f *link.Frame) error {
		if f.T != link.OpMsg || f.Msg.Seq != 56 {
			t.Fatalf("after the answer: %+v", f)
		}
		return nil
	}); err != nil || len(b.out) == 0 {
		t.Fatalf("no live message after the answer (%v)", err)
	}
}
