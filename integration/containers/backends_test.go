package containers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

// On two replicas: presence across instances (the members a join
// answers, live joins and leaves), a chat re-sent after a reconnect (same
// session, same id, through another replica) acknowledged with its
// original seq and delivered once, and a newcomer's history on join and
// paging back holding every message once, in order.
func TestHistoryPresenceAndReSend(t *testing.T) {
	onEveryBackend(t, 2, testHistoryPresenceAndReSend)
}

func testHistoryPresenceAndReSend(t *testing.T, s *dockerstack.Stack) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const room = "recall"
	nt := dockerstack.NewNotifier()

	alice := hello(ctx, t, nt, s, "alice", "s-alice", nil)
	bob := hello(ctx, t, nt, s, "bob", "s-bob", func(i string) bool { return i != alice.w.Instance })
	alice.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j"})
	expect(ctx, t, alice, protocol.TypeJoined, "joined", func(j protocol.Joined) bool { return j.ID == "j" })
	bob.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j"})
	j := expect(ctx, t, bob, protocol.TypeJoined, "joined", func(j protocol.Joined) bool { return j.ID == "j" })
	if !hasMember(j.Members, alice.w.ID, alice.w.Instance) {
		t.Errorf("bob's join on %s lists %+v, want alice (%s on %s) among them", bob.w.Instance, j.Members, alice.w.ID, alice.w.Instance)
	}
	expect(ctx, t, alice, protocol.TypePresence, "presence join of bob", func(p protocol.Presence) bool {
		return p.Room == room && p.Event == protocol.PresenceJoin && p.Member.ID == bob.w.ID && p.Member.Instance == bob.w.Instance
	})

	first := protocol.Inbound{Type: protocol.TypeChat, Room: room, ID: "a-1", Message: "first"}
	alice.send(ctx, t, first)
	ack := expect(ctx, t, alice, protocol.TypeAck, "ack of a-1", func(a protocol.Ack) bool { return a.ID == "a-1" })
	expect(ctx, t, bob, protocol.TypeChat, "a-1", func(m protocol.Message) bool { return m.ID == "a-1" && m.Seq == ack.Seq })

	// Alice comes back on bob's replica with her session, recovers since
	// the ack, and sends a-1 again as if its ack had been lost.
	firstOn := alice.w.Instance
	alice.c.Close(websocket.StatusNormalClosure, "reconnecting")
	alice = hello(ctx, t, nt, s, "alice", "s-alice", func(i string) bool { return i == bob.w.Instance })
	since := ack.Seq
	alice.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j2", Since: &since, Epoch: j.Epoch})
	rj := expect(ctx, t, alice, protocol.TypeJoined, "recovery join", func(j protocol.Joined) bool { return j.ID == "j2" })
	if rj.Recovered == nil || !*rj.Recovered || rj.Seq != ack.Seq || len(rj.History) != 0 {
		t.Fatalf("recovery join since %d: seq %d, recovered %v, %d messages; want seq %d, recovered, none", since, rj.Seq, recovered(rj), len(rj.History), ack.Seq)
	}
	alice.send(ctx, t, first)
	again := expect(ctx, t, alice, protocol.TypeAck, "ack of the re-sent a-1", func(a protocol.Ack) bool { return a.ID == "a-1" })
	if again.Seq != ack.Seq {
		t.Errorf("re-sent a-1 acknowledged as seq %d, first as %d: sequenced twice", again.Seq, ack.Seq)
	}
	alice.send(ctx, t, protocol.Inbound{Type: protocol.TypeChat, Room: room, ID: "a-2", Message: "second"})
	ack2 := expect(ctx, t, alice, protocol.TypeAck, "ack of a-2", func(a protocol.Ack) bool { return a.ID == "a-2" })
	if ack2.Seq != ack.Seq+1 {
		t.Errorf("a-2 acknowledged as seq %d, want %d (right after a-1)", ack2.Seq, ack.Seq+1)
	}
	expect(ctx, t, bob, protocol.TypeChat, "a-2", func(m protocol.Message) bool { return m.ID == "a-2" })
	if n := bob.chats(room, "a-1"); n != 1 {
		t.Errorf("bob got a-1 %d times, want once", n)
	}

	// A newcomer on the other replica: the whole room on join, and the
	// same two messages paging back.
	carol := hello(ctx, t, nt, s, "carol", "s-carol", func(i string) bool { return i != bob.w.Instance })
	zero := uint64(0)
	carol.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j", Since: &zero})
	cj := expect(ctx, t, carol, protocol.TypeJoined, "joined", func(j protocol.Joined) bool { return j.ID == "j" })
	if cj.Seq != ack2.Seq || len(cj.History) != int(cj.Seq) {
		t.Fatalf("carol joined at seq %d with %d messages, want seq %d and all of them", cj.Seq, len(cj.History), ack2.Seq)
	}
	for i, m := range cj.History {
		if m.Seq != uint64(i+1) {
			t.Fatalf("carol's history[%d] is seq %d, want %d", i, m.Seq, i+1)
		}
	}
	if got := cj.History[ack.Seq-1]; got.ID != "a-1" || got.Text != "first" || got.UID == "" {
		t.Errorf("history at seq %d: %+v, want a-1 from alice", ack.Seq, got)
	}
	if got := cj.History[ack2.Seq-1]; got.ID != "a-2" || got.Text != "second" {
		t.Errorf("history at seq %d: %+v, want a-2", ack2.Seq, got)
	}
	carol.send(ctx, t, protocol.Inbound{Type: protocol.TypeHistory, Room: room, ID: "h", Before: ack2.Seq + 1, Limit: 2})
	h := expect(ctx, t, carol, protocol.TypeHistory, "history", func(h protocol.History) bool { return h.ID == "h" })
	if len(h.Messages) != 2 || h.Messages[0].ID != "a-1" || h.Messages[1].ID != "a-2" {
		t.Errorf("history before %d, limit 2: %+v, want a-1 and a-2", ack2.Seq+1, h.Messages)
	}

	// Bob goes: alice, on his replica, and carol, on the other, see him leave.
	bob.c.Close(websocket.StatusNormalClosure, "bye")
	for _, p := range []*peer{alice, carol} {
		expect(ctx, t, p, protocol.TypePresence, "presence leave of bob", func(pr protocol.Presence) bool {
			return pr.Room == room && pr.Event == protocol.PresenceLeave && pr.Member.ID == bob.w.ID
		})
	}
	t.Logf("a-1 at seq %d, a-2 at %d; alice on %s then %s, bob on %s, carol on %s", ack.Seq, ack2.Seq, firstOn, alice.w.Instance, bob.w.Instance, carol.w.Instance)
}

func hasMember(ms []protocol.Member, id, instance string) bool {
	for _, m := range ms {
		if m.ID == id && m.Instance == instance {
			return true
		}
	}
	return false
}

func recovered(j protocol.Joined) string {
	if j.Recovered == nil {
		return "-"
	}
	return fmt.Sprint(*j.Recovered)
}
