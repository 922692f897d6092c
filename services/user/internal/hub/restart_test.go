package hub

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// A relayer back under a new epoch with a salvaged log (or one whose
// numbers went back) answers the resync with messages it kept from before:
// the seed members that stayed have them already and get only what is
// new — a message sequenced after the restart, also at a number they saw
// before with another message.
func TestSeedMembersGetNoKeptMessageTwiceAfterARestart(t *testing.T) {
	h, srv := startHub(t, 0)
	seed := dialRaw(t, srv.Listener.Addr().String(), `{"type":"join-room","room":"r"}`)
	waitUntil(t, "the seed member's join", func() bool { return testutil.ToFloat64(h.m.Memberships) == 1 })
	msg := func(seq uint64, ts int64, text string) protocol.Message {
		return protocol.Message{Room: "r", Seq: seq, TS: ts, Text: text, UID: "u1.1"}
	}
	old := []protocol.Message{msg(1, 1000, "one"), msg(2, 1001, "two"), msg(3, 1002, "three")}
	for i := range old {
		h.Message(&old[i])
	}
	for _, text := range []string{`"one"`, `"two"`, `"three"`} {
		seed.expect(t, text)
	}

	// Kept: 1 and 2; lost: 3, whose number goes to a new message.
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 4, Msgs: []protocol.Message{
		old[0], old[1], msg(3, 5000, "new three"), msg(4, 5001, "four"),
	}})
	for _, want := range []string{`"new three"`, `"four"`} {
		if f := seed.next(t); !strings.Contains(f, want) {
			t.Fatalf("want %s, got %s", want, f)
		}
	}
	// And a fresh log's numbers, all new, reach it whatever they are.
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 1, Msgs: []protocol.Message{msg(1, 6000, "fresh one")}})
	if f := seed.next(t); !strings.Contains(f, `"fresh one"`) {
		t.Fatalf(`want "fresh one", got %s`, f)
	}
}

// A recovery join whose since counts in an earlier numbering of the room
// (its epoch) recovers the new numbering from its start, and the answer
// names the new epoch; one in the current numbering recovers after since.
func TestJoinWithSinceOfAnEarlierEpochRecoversTheNewNumbering(t *testing.T) {
	h, srv := startHub(t, 0)
	addr := srv.Listener.Addr().String()
	a := dialRaw(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j1"}`)
	var first protocol.Joined
	if err := json.Unmarshal([]byte(a.expect(t, `"joined"`)), &first); err != nil || first.Epoch == "" {
		t.Fatalf("joined without an epoch (%v)", err)
	}
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 2, Epoch: "e2", Msgs: []protocol.Message{
		{Room: "r", Seq: 1, TS: 5000, Text: "one", UID: "u1.1"},
		{Room: "r", Seq: 2, TS: 5001, Text: "two", UID: "u1.1"},
	}})
	join := func(nick, epoch string) protocol.Joined {
		t.Helper()
		c := dialRaw(t, addr, fmt.Sprintf(`{"type":"hello","nick":%q}`, nick),
			fmt.Sprintf(`{"type":"join","room":"r","id":"j","since":5,"epoch":%q}`, epoch))
		var j protocol.Joined
		if err := json.Unmarshal([]byte(c.expect(t, `"joined"`)), &j); err != nil {
			t.Fatal(err)
		}
		return j
	}
	if j := join("b", first.Epoch); j.Epoch != "e2" || len(j.History) != 2 || j.Recovered == nil || !*j.Recovered {
		t.Fatalf("since 5 of epoch %s: got epoch %q, %d messages, recovered %v; want e2, both, true", first.Epoch, j.Epoch, len(j.History), j.Recovered)
	}
	if j := join("c", "e2"); j.Epoch != "e2" || len(j.History) != 0 {
		t.Fatalf("since 5 of epoch e2: got epoch %q and %d messages; want e2 and none", j.Epoch, len(j.History))
	}
}
