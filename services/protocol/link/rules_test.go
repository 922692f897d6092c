package link

import (
	"slices"
	"testing"
)

func TestWindow(t *testing.T) {
	var seqs []uint64
	for s := uint64(10); s <= 20; s++ {
		seqs = append(seqs, s)
	}
	for _, c := range []struct {
		after, before uint64
		limit         int
		want          []uint64
	}{
		{0, 0, 3, []uint64{18, 19, 20}},  // the latest
		{0, 15, 3, []uint64{12, 13, 14}}, // paging back
		{12, 0, 3, []uint64{13, 14, 15}}, // forward from after
		{12, 15, 0, []uint64{13, 14}},    // a range, no limit
		{0, 10, 5, nil},                  // before the oldest
		{20, 0, 5, nil},                  // nothing newer
		{15, 12, 5, nil},                 // an empty range
	} {
		lo, hi := Window(len(seqs), func(i int) uint64 { return seqs[i] }, c.after, c.before, c.limit)
		if got := seqs[lo:hi]; !slices.Equal(got, c.want) && (len(got) != 0 || c.want != nil) {
			t.Errorf("Window(after %d, before %d, limit %d) = %v, want %v", c.after, c.before, c.limit, got, c.want)
		}
		// The same rule in seqs over the contiguous 10..20.
		slo, shi := SeqWindow(c.after, c.before, 20, 10, c.limit)
		var got []uint64
		for s := slo; s <= shi; s++ {
			got = append(got, s)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("SeqWindow(after %d, before %d, limit %d) = %d..%d, want %v", c.after, c.before, c.limit, slo, shi, c.want)
		}
	}
	// A window over seqs with a hole keeps to the messages there are.
	holed := []uint64{3, 4, 7, 8, 9}
	if lo, hi := Window(len(holed), func(i int) uint64 { return holed[i] }, 3, 9, 0); !slices.Equal(holed[lo:hi], []uint64{4, 7, 8}) {
		t.Errorf("over a hole: %v", holed[lo:hi])
	}
	if lo, hi := SeqWindow(0, 0, 4, 5, 10); lo <= hi {
		t.Errorf("nothing kept (oldest 5 > last 4): %d..%d, want empty", lo, hi)
	}
}

func TestCatchUpFrom(t *testing.T) {
	for _, c := range []struct {
		last, since uint64
		resume      bool
		tail, limit int
		want        uint64
	}{
		{100, 0, false, 10, 50, 90},  // a new subscription: the tail
		{100, 0, false, 80, 50, 50},  // a tail over the limit: the limit
		{100, 95, false, 10, 50, 90}, // since within the tail: the tail
		{100, 40, false, 10, 50, 40}, // since before it: everything after since
		{100, 0, true, 0, 50, 0},     // resume at 0: everything
		{5, 0, false, 10, 50, 0},     // a tail longer than the room
	} {
		if got := CatchUpFrom(c.last, c.since, c.resume, c.tail, c.limit); got != c.want {
			t.Errorf("CatchUpFrom(last %d, since %d, resume %v, tail %d, limit %d) = %d, want %d", c.last, c.since, c.resume, c.tail, c.limit, got, c.want)
		}
	}
}
