package relay

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// A large state goes out as sync frames of bounded size, every one but the
// last marked More, and the parts put together are the state again.
func TestAppendSyncInParts(t *testing.T) {
	member := func(i int) protocol.Member {
		return protocol.Member{ID: fmt.Sprintf("u%08d", i), Nick: fmt.Sprintf("nick-%d", i), Instance: "ws-user-1"}
	}
	var state []link.RoomState
	for r := range 3 {
		rs := link.RoomState{Room: fmt.Sprint("room-", r), Since: uint64(r), Resume: true}
		n := []int{1, 20000, 0}[r] // one room far larger than a part
		for i := range n {
			rs.Members = append(rs.Members, member(r*100000+i))
		}
		state = append(state, rs)
	}
	b, err := appendSync(nil, state)
	if err != nil {
		t.Fatal(err)
	}
	var frames []*link.Frame
	var sizes []int
	rest := b
	for len(rest) > 0 {
		i := slices.Index(rest, '\n') + 1
		if err := link.Split(rest[:i], func(f *link.Frame) error { frames = append(frames, f); return nil }); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, i)
		rest = rest[i:]
	}
	if len(frames) < 3 {
		t.Fatalf("%d sync frames for %d bytes of state", len(frames), len(b))
	}
	got := map[string]link.RoomState{}
	var order []string
	for i, f := range frames {
		if f.T != link.OpSync || f.More != (i < len(frames)-1) || sizes[i] > 2*syncPart {
			t.Fatalf("frame %d of %d: op %s, more %v, %d bytes", i, len(frames), f.T, f.More, sizes[i])
		}
		for _, rs := range f.Rooms {
			if w, ok := got[rs.Room]; ok {
				w.Members = append(w.Members, rs.Members...)
				got[rs.Room] = w
				continue
			}
			order = append(order, rs.Room)
			got[rs.Room] = rs
		}
	}
	for i, want := range state {
		g := got[want.Room]
		if order[i] != want.Room || g.Since != want.Since || !g.Resume || !slices.Equal(g.Members, want.Members) {
			t.Fatalf("room %s: since %d resume %v, %d members; want since %d, %d members",
				want.Room, g.Since, g.Resume, len(g.Members), want.Since, len(want.Members))
		}
	}
	// A small state is one frame, as before.
	if b, _ := appendSync(nil, state[:1]); bytes.Count(b, []byte{'\n'}) != 1 {
		t.Fatalf("a one-room state took %d frames", bytes.Count(b, []byte{'\n'}))
	}
}
