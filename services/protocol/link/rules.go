package link

import "sort"

// The two history rules of the link, in one place for every backend: the
// relayer answers with them, and ws-user's standalone bus and its cache
// follow the same ones.

// CatchUpFrom is the seq a subscription's catch-up follows (OpSubscribed's
// Msgs are the kept messages after it), for a room whose last seq is last
// and a backend that sends at most limit for a tail: every message after
// min(since, last-tail) when since > 0 or resume is set, else the last
// tail (see RoomState).
func CatchUpFrom(last, since uint64, resume bool, tail, limit int) uint64 {
	t := uint64(min(max(tail, 0), limit))
	from := last - min(t, last)
	if since > 0 || resume {
		from = min(since, from)
	}
	return from
}

// Window applies the OpFetch rule to n messages in ascending seq order, the
// i-th's seq being seq(i): those with after < seq < before (before 0: no
// bound), at most limit (limit <= 0: no bound), the newest of them when
// paging back (after 0), else the oldest after after. It returns their
// indexes, [lo, hi).
func Window(n int, seq func(i int) uint64, after, before uint64, limit int) (lo, hi int) {
	lo, hi = sort.Search(n, func(i int) bool { return seq(i) > after }), n
	if before != 0 {
		hi = sort.Search(n, func(i int) bool { return seq(i) >= before })
	}
	hi = max(hi, lo)
	if limit > 0 && hi-lo > limit {
		if after == 0 {
			lo = hi - limit
		} else {
			hi = lo + limit
		}
	}
	return lo, hi
}

// SeqWindow is Window over the contiguous seqs oldest..last (none when
// oldest > last), in seqs: the window is lo..hi, empty when lo > hi.
func SeqWindow(after, before, last, oldest uint64, limit int) (lo, hi uint64) {
	if oldest == 0 {
		oldest = 1 // seqs start at 1
	}
	n := 0
	if last >= oldest {
		n = int(last - oldest + 1)
	}
	i, j := Window(n, func(i int) uint64 { return oldest + uint64(i) }, after, before, limit)
	return oldest + uint64(i), oldest + uint64(j) - 1
}
