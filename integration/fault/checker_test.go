package fault

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// The checker must see each kind of defect it exists for, and nothing in
// a clean run: TestFaults passing means little otherwise.
func TestCheckCountsDefects(t *testing.T) {
	t0 := time.UnixMilli(1_800_000_000_000)
	msg := func(seq uint64, id string, at time.Time) received {
		return received{msg: protocol.Message{Room: "r", Seq: seq, ID: id, Text: "message " + id, TS: at.UnixMilli()}, conn: 1}
	}
	// Messages a..e are seqs 1..5, sequenced a second apart, all acknowledged.
	ids := []string{"a", "b", "c", "d", "e"}
	clean := func() []received {
		var got []received
		for i, id := range ids {
			got = append(got, msg(uint64(i+1), id, t0.Add(time.Duration(i)*time.Second)))
		}
		return got
	}
	var acks []ack
	for i, id := range ids {
		acks = append(acks, ack{key: id, room: "r", seq: uint64(i + 1), at: t0.Add(time.Duration(i)*time.Second + 10*time.Millisecond)})
	}
	restart := t0.Add(2500 * time.Millisecond)
	cases := []struct {
		name string
		ep   epochs
		bob  func([]received) []received
		want verdict
	}{
		{"clean", nil, func(g []received) []received { return g }, verdict{}},
		{"lost", nil, func(g []received) []received { return append(g[:2:2], g[3:]...) }, verdict{lost: 1}},
		{"duplicated at its seq", nil, func(g []received) []received { return append(g[:3:3], g[2:]...) }, verdict{duplicated: 1}},
		{"duplicated at a new seq", nil, func(g []received) []received {
			again := msg(6, "b", t0.Add(6*time.Second))
			return append(g, again)
		}, verdict{duplicated: 1}},
		{"reordered", nil, func(g []received) []received {
			g[1], g[2] = g[2], g[1]
			return g
		}, verdict{reordered: 1}},
		{"seq reused", nil, func(g []received) []received {
			other := msg(3, "z", t0.Add(3*time.Second))
			return append(g, other)
		}, verdict{reused: 1, reordered: 1}},
		// A start-over's history shows kept messages again where they
		// were: not duplicates; one at another seq is.
		{"start-over", nil, func(g []received) []received {
			again := []received{g[0], g[1], msg(6, "c", t0.Add(6*time.Second))}
			for i := range again {
				again[i].restart = true
			}
			return append(g, again...)
		}, verdict{duplicated: 1}},
		// After a new epoch the numbers start over: not a reorder.
		{"new epoch", epochs{restart}, func(g []received) []received {
			g[3] = msg(1, "d", t0.Add(3*time.Second))
			g[4] = msg(2, "e", t0.Add(4*time.Second))
			return g
		}, verdict{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			alice := clean()
			bob := tc.bob(clean())
			a := acks
			if tc.ep != nil {
				alice = tc.bob(clean())
				a = append(acks[:3:3], ack{key: "d", room: "r", seq: 1, at: acks[3].at}, ack{key: "e", room: "r", seq: 2, at: acks[4].at})
			}
			var v verdict
			check(&v, "r", tc.ep, []stream{{member: "alice", got: alice}, {member: "bob", got: bob}}, a)
			got := fmt.Sprintf("lost %d duplicated %d reordered %d reused %d", v.lost, v.duplicated, v.reordered, v.reused)
			want := fmt.Sprintf("lost %d duplicated %d reordered %d reused %d", tc.want.lost, tc.want.duplicated, tc.want.reordered, tc.want.reused)
			if got != want {
				t.Errorf("got %s, want %s; problems: %q", got, want, v.problems)
			}
		})
	}
}

// A seed member, which does not recover, owes only what came while each of
// its connections was up; an extended one owes everything from its first
// join on.
func TestCheckCoverage(t *testing.T) {
	t0 := time.UnixMilli(1_800_000_000_000)
	var all []received
	var acks []ack
	for i := 1; i <= 6; i++ {
		id := fmt.Sprint("m", i)
		all = append(all, received{msg: protocol.Message{Seq: uint64(i), ID: id, TS: t0.UnixMilli()}, conn: 1})
		acks = append(acks, ack{key: id, room: "r", seq: uint64(i), at: t0})
	}
	// Both miss seq 3 and 4 between two connections.
	gap := append(all[:2:2], all[4:]...)
	gap[2].conn, gap[3].conn = 2, 2
	var v verdict
	check(&v, "r", nil, []stream{{member: "full", got: all}, {member: "seed", seed: true, got: gap}}, acks)
	if v.lost != 0 {
		t.Errorf("seed: %d lost, want 0 (a seed member misses what came between its connections): %q", v.lost, v.problems)
	}
	v = verdict{}
	check(&v, "r", nil, []stream{{member: "full", got: all}, {member: "extended", got: gap}}, acks)
	if v.lost != 2 {
		t.Errorf("extended: %d lost, want 2: %q", v.lost, v.problems)
	}
	// After a new epoch (from seq 4 on here), an extended member owes it
	// from its first message, even one it came too late for.
	v = verdict{}
	check(&v, "r", epochs{t0.Add(time.Second)}, []stream{
		{member: "full", got: shift(all, 3)},
		{member: "extended", got: shift(all, 3)[:3:3]},
		{member: "late", got: shift(all, 3)[4:]},
	}, shiftAcks(acks, 3))
	if v.lost != 1 {
		t.Errorf("new epoch: %d lost, want 1 (seq 4, which late missed): %q", v.lost, v.problems)
	}
	// An extended member that joined at seq 2 owes only from seq 3 on.
	v = verdict{}
	check(&v, "r", nil, []stream{{member: "late", base: 2, got: all[2:]}}, acks)
	if v.lost != 0 {
		t.Errorf("late joiner: %d lost, want 0: %q", v.lost, v.problems)
	}
}

// shift moves the messages from index n on into a new epoch, a second
// later.
func shift(got []received, n int) []received {
	out := slices.Clone(got)
	for i := n; i < len(out); i++ {
		out[i].msg.TS += 1000
	}
	return out
}

func shiftAcks(acks []ack, n int) []ack {
	out := slices.Clone(acks)
	for i := n; i < len(out); i++ {
		out[i].at = out[i].at.Add(time.Second)
	}
	return out
}

// A leave about a member still connected is a flap, unless its connection
// ended within flapGrace after: then the leave only reached the room-mate
// before the end reached the member.
func TestFlapsSkipOnlyLeavesOfConnectionsThatEnded(t *testing.T) {
	w := newWorld()
	t0 := time.Now()
	for _, uid := range []string{"ended", "late", "open"} {
		w.setAlive(uid)
	}
	w.setEnded("ended")
	w.mu.Lock()
	w.ended["late"] = t0.Add(flapGrace + time.Second)
	w.mu.Unlock()
	var leaves []leave
	for _, uid := range []string{"ended", "late", "open"} {
		leaves = append(leaves, leave{uid: uid, at: t0, what: uid})
	}
	if got := flaps(w, leaves); !slices.Equal(got, []string{"late", "open"}) {
		t.Fatalf("flaps: %v, want late, open", got)
	}
}
