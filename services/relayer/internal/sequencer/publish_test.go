package sequencer

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// A message of fetches, a few bytes each, must not stage unbounded
// answers: past LINK_QUEUE_BYTES of output owed to the link, fetches are
// refused (and the link stays up).
func TestFetchesAreRefusedPastTheQueueBound(t *testing.T) {
	h := start(t, "", func(c *Config) { c.QueueBytes = 4096 })
	p := h.dial("p")
	p.Sync()
	for i := range 50 {
		p.Pub(fmt.Sprint(i), "r", strings.Repeat("m", 100))
		p.Expect(link.OpAck)
	}
	c := h.dial("c")
	c.Sync()
	var fetches []*link.Frame
	for i := range 10 {
		fetches = append(fetches, &link.Frame{T: link.OpFetch, Req: uint64(i + 1), Room: "r"})
	}
	c.Send(fetches...)
	answered, refused := 0, 0
	for range 10 {
		f := c.Expect(link.OpFetched)
		switch {
		case f.Code == "" && len(f.Msgs) == 50:
			answered++
		case f.Code == protocol.CodeUnavailable && len(f.Msgs) == 0:
			refused++
		default:
			t.Fatalf("fetched %+v", f)
		}
	}
	// The first answer alone is over 4096 bytes: every later one in the
	// batch is refused. (Fetches in a later batch may be answered again.)
	if answered < 1 || refused < 1 || answered+refused != 10 {
		t.Fatalf("%d answered, %d refused", answered, refused)
	}
	if got := testutil.ToFloat64(h.s.m.fetchesRefused); got != float64(refused) {
		t.Fatalf("fetches_refused_total %v, want %d", got, refused)
	}
	c.Send(&link.Frame{T: link.OpFetch, Req: 99, Room: "r", Limit: 1})
	if f := c.Expect(link.OpFetched); f.Req != 99 {
		t.Fatalf("the link after the refusals: %+v", f)
	}
}

func TestFetchPaging(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 25 })
	p := h.dial("p")
	p.Sync()
	for i := 1; i <= 30; i++ {
		p.Pub(fmt.Sprint(i), "r", "x")
	}
	for range 30 {
		p.Expect(link.OpAck)
	}
	cases := []struct {
		after, before uint64
		limit         int
		want          []uint64
	}{
		{0, 0, 10, seqRange(21, 30)},
		{0, 21, 10, seqRange(11, 20)},
		{0, 11, 10, seqRange(6, 10)}, // 1..5 are no longer kept
		{0, 6, 10, nil},
		{7, 0, 3, seqRange(8, 10)},
		{7, 10, 0, seqRange(8, 9)},
		{0, 0, 0, seqRange(6, 30)},    // default limit: everything kept
		{0, 0, 5000, seqRange(6, 30)}, // capped
		{30, 0, 10, nil},
	}
	for i, tc := range cases {
		req := uint64(100 + i)
		p.Send(&link.Frame{T: link.OpFetch, Req: req, Room: "r", After: tc.after, Before: tc.before, Limit: tc.limit})
		f := p.Expect(link.OpFetched)
		if f.Req != req || f.Room != "r" || f.First != 6 || !slices.Equal(seqs(f.Msgs), tc.want) {
			t.Errorf("fetch after %d before %d limit %d: req %d first %d msgs %v; want %v",
				tc.after, tc.before, tc.limit, f.Req, f.First, seqs(f.Msgs), tc.want)
		}
	}
	p.Send(&link.Frame{T: link.OpFetch, Req: 7, Room: "nowhere"})
	if f := p.Expect(link.OpFetched); f.Req != 7 || f.First != 1 || len(f.Msgs) != 0 {
		t.Fatalf("fetch of an unknown room: %+v", f)
	}
}

// With a commit delay, publishes that arrive within it after the first
// share its batch, and so one log sync (one fsync in production); none is
// acknowledged before the delay has passed.
func TestCommitDelayGathersPublishes(t *testing.T) {
	const delay = 300 * time.Millisecond
	h := start(t, "", func(c *Config) { c.CommitDelay = delay })
	a, b := h.dial("a"), h.dial("b")
	a.Sync()
	b.Sync()
	syncs := func() uint64 {
		var m dto.Metric
		if err := h.s.m.fsync.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	before := syncs()
	t0 := time.Now()
	a.Pub("m-a", "r", "one")
	b.Pub("m-b", "r", "two")
	a.Expect(link.OpAck)
	took := time.Since(t0)
	b.Expect(link.OpAck)
	if took < delay*9/10 {
		t.Errorf("acknowledged after %s, before the commit delay (%s)", took, delay)
	}
	if n := syncs() - before; n != 1 {
		t.Errorf("%d log syncs for two publishes within the commit delay, want 1", n)
	}
}
