package hub

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/wstest"
)

// A relayer back under a new epoch with a salvaged log (or one whose
// numbers went back) answers the resync with messages it kept from before:
// the seed members that stayed have them already and get only what is
// new — a message sequenced after the restart, also at a number they saw
// before with another message.
func TestSeedMembersGetNoKeptMessageTwiceAfterARestart(t *testing.T) {
	h, srv := startHub(t, 0)
	seed := wstest.Dial(t, srv.Listener.Addr().String(), `{"type":"join-room","room":"r"}`)
	wstest.WaitUntil(t, "the seed member's join", func() bool { return testutil.ToFloat64(h.m.Memberships) == 1 })
	msg := func(seq uint64, ts int64, text string) protocol.Message {
		return protocol.Message{Room: "r", Seq: seq, TS: ts, Text: text, UID: "u1.1"}
	}
	old := []protocol.Message{msg(1, 1000, "one"), msg(2, 1001, "two"), msg(3, 1002, "three")}
	for i := range old {
		h.Message(&old[i])
	}
	for _, text := range []string{`"one"`, `"two"`, `"three"`} {
		seed.Expect(t, text)
	}

	// Kept: 1 and 2; lost: 3, whose number goes to a new message.
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 4, Msgs: []protocol.Message{
		old[0], old[1], msg(3, 5000, "new three"), msg(4, 5001, "four"),
	}})
	for _, want := range []string{`"new three"`, `"four"`} {
		if f := seed.Next(t); !strings.Contains(f, want) {
			t.Fatalf("want %s, got %s", want, f)
		}
	}
	// And a fresh log's numbers, all new, reach it whatever they are.
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 1, Msgs: []protocol.Message{msg(1, 6000, "fresh one")}})
	if f := seed.Next(t); !strings.Contains(f, `"fresh one"`) {
		t.Fatalf(`want "fresh one", got %s`, f)
	}
}

// A recovery join whose since counts in an earlier numbering of the room
// (its epoch) recovers the new numbering from its start, and the answer
// names the new epoch; one in the current numbering recovers after since.
func TestJoinWithSinceOfAnEarlierEpochRecoversTheNewNumbering(t *testing.T) {
	h, srv := startHub(t, 0)
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j1"}`)
	var first protocol.Joined
	if err := json.Unmarshal([]byte(a.Expect(t, `"joined"`)), &first); err != nil || first.Epoch == "" {
		t.Fatalf("joined without an epoch (%v)", err)
	}
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 2, Epoch: "e2", Msgs: []protocol.Message{
		{Room: "r", Seq: 1, TS: 5000, Text: "one", UID: "u1.1"},
		{Room: "r", Seq: 2, TS: 5001, Text: "two", UID: "u1.1"},
	}})
	join := func(nick, epoch string) protocol.Joined {
		t.Helper()
		c := wstest.Dial(t, addr, fmt.Sprintf(`{"type":"hello","nick":%q}`, nick),
			fmt.Sprintf(`{"type":"join","room":"r","id":"j","since":5,"epoch":%q}`, epoch))
		var j protocol.Joined
		if err := json.Unmarshal([]byte(c.Expect(t, `"joined"`)), &j); err != nil {
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

// keptFetches answers fetches from kept with the link's window rule
// (bus.Window), as the relayer does from its log, on a goroutine of its
// own. When during is set, it runs first there (a message delivered while
// the fetch is in flight).
type keptFetches struct {
	bus.Bus
	h      *Hub
	kept   []protocol.Message
	during func()
}

func (f keptFetches) Fetch(req uint64, _ string, after, before uint64, limit int) {
	go func() {
		if f.during != nil {
			f.during()
		}
		f.h.Fetched(req, bus.Window(f.kept, after, before, limit), 0, nil)
	}()
}

// After a relayer came back with a salvaged log whose hole leaves its
// oldest kept message of a room at 17, a recovery join gets every message
// the relayer still keeps, from 17 on, with recovered:false — not only the
// instance's cached tail, which would miss the new numbering's first
// messages (31 to 35 here: what the instances had queued) for good.
func TestRecoveryPastTheOldestKeptGetsEverythingKept(t *testing.T) {
	var kept []protocol.Message
	for seq := uint64(17); seq <= 40; seq++ {
		kept = append(kept, protocol.Message{Room: "r", Seq: seq, TS: int64(1000 + seq), Text: fmt.Sprintf("m%d", seq), UID: "u1.1"})
	}
	h, srv := startHubOn(t, func(c *stackConfig) { c.HistorySize = 10 }, func(h *Hub, b bus.Bus) bus.Bus { return keptFetches{b, h, kept, nil} })
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j1"}`)
	var first protocol.Joined
	if err := json.Unmarshal([]byte(a.Expect(t, `"joined"`)), &first); err != nil {
		t.Fatal(err)
	}
	h.Restarted()
	h.Subscribed(bus.Subscription{Room: "r", Seq: 40, First: 17, Epoch: "e2", Msgs: kept})

	for _, join := range []string{
		fmt.Sprintf(`{"type":"join","room":"r","id":"j","since":30,"epoch":%q}`, first.Epoch), // an earlier numbering: from its start
		`{"type":"join","room":"r","id":"j","since":5,"epoch":"e2"}`,                          // this one, below its oldest kept
	} {
		c := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`, join)
		var j protocol.Joined
		if err := json.Unmarshal([]byte(c.Expect(t, `"joined"`)), &j); err != nil {
			t.Fatal(err)
		}
		if len(j.History) != len(kept) || j.History[0].Seq != 17 || j.History[len(j.History)-1].Seq != 40 || j.Recovered == nil || *j.Recovered {
			var seqs []uint64
			for _, m := range j.History {
				seqs = append(seqs, m.Seq)
			}
			t.Fatalf("%s: got seqs %v, recovered %v; want 17 to 40 and recovered false", join, seqs, j.Recovered)
		}
	}
}

// A recovery whose fetch is in flight while the room's messages go on
// (a full cache dropping its oldest) still gets every message: the fetch
// reaches the room's end, not where the cache began when it was asked.
// Before, the fetched messages no longer met the cache and the client got
// the cache's tail, recovered:false — after a start-over, under the
// re-sent publishes' traffic, the new numbering's first messages for good.
func TestRecoveryWhileTheRoomGoesOnGetsEveryMessage(t *testing.T) {
	var kept []protocol.Message
	for seq := uint64(1); seq <= 41; seq++ {
		kept = append(kept, protocol.Message{Room: "r", Seq: seq, TS: int64(1000 + seq), Text: fmt.Sprintf("m%d", seq), UID: "u1.1"})
	}
	var h *Hub
	h, srv := startHubOn(t, func(c *stackConfig) { c.HistorySize = 10 }, func(hh *Hub, b bus.Bus) bus.Bus {
		return keptFetches{b, hh, kept, func() { h.Message(&kept[40]) }}
	})
	addr := srv.Listener.Addr().String()
	a := wstest.Dial(t, addr, `{"type":"hello","nick":"a"}`, `{"type":"join","room":"r","id":"j1"}`)
	a.Expect(t, `"joined"`)
	h.Subscribed(bus.Subscription{Room: "r", Seq: 40, First: 1, Epoch: "e1", Msgs: kept[:40]})

	c := wstest.Dial(t, addr, `{"type":"hello","nick":"b"}`, `{"type":"join","room":"r","id":"j","since":5,"epoch":"e1"}`)
	var j protocol.Joined
	if err := json.Unmarshal([]byte(c.Expect(t, `"joined"`)), &j); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, m := range j.History {
		seqs = append(seqs, m.Seq)
	}
	if len(seqs) != 36 || seqs[0] != 6 || seqs[35] != 41 || j.Recovered == nil || !*j.Recovered {
		t.Fatalf("got seqs %v, recovered %v; want 6 to 41 and recovered true", seqs, j.Recovered)
	}
}
