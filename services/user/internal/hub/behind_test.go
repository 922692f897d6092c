package hub

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/conn"
	"github.com/wschat/wschat/services/user/internal/wstest"
)

// frozenRelay stands for a relayer that froze under traffic: the local
// bus under it sequences every publish (and keeps them for fetches), but
// their deliveries are held until thaw hands them to the hub in one go,
// as the relayer's catch-up after an outage does.
type frozenRelay struct {
	*Hub
	mu     sync.Mutex
	frozen bool
	held   []protocol.Message
}

func (f *frozenRelay) Message(m *protocol.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		f.held = append(f.held, *m)
		return
	}
	f.Hub.Message(m)
}

func (f *frozenRelay) heldCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// thaw delivers what was held as room's resync answer: every message in
// one call, under one hold of the hub's lock. first is the oldest seq the
// bus still keeps.
func (f *frozenRelay) thaw(room string, first uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = false
	f.Hub.Subscribed(bus.Subscription{Room: room, Seq: f.held[len(f.held)-1].Seq, First: first, Msgs: f.held})
	f.held = nil
}

// startFrozenHub serves a hub whose local bus keeps keep messages per room
// and whose deliveries are frozen until thaw.
func startFrozenHub(t *testing.T, keep int, set func(*stackConfig)) (*Hub, string, *frozenRelay) {
	t.Helper()
	var f *frozenRelay
	h, srv := startHubBus(t, set, func(h *Hub) bus.Bus {
		f = &frozenRelay{Hub: h}
		return bus.NewLocal(f, keep)
	})
	return h, srv.Listener.Addr().String(), f
}

// received is what a reading client got of room r.
type received struct {
	seqs   []uint64
	gaps   []string // history_gap errors
	closed string   // the close frame or read error that ended it, if any
}

// readRoom reads c, as a client reading normally does, until it has a chat
// of room r with seq last, or the connection ends; on its own goroutine.
func readRoom(c *wstest.RawClient, last uint64) <-chan received {
	out := make(chan received, 1)
	go func() {
		var got received
		defer func() { out <- got }()
		for {
			op, p, err := c.Read()
			if err != nil {
				got.closed = err.Error()
				return
			}
			if op == 8 {
				got.closed = fmt.Sprintf("close frame %q", p)
				return
			}
			var f struct {
				Type, Room, Code string
				Seq              uint64
			}
			if json.Unmarshal([]byte(p), &f) != nil || f.Room != "r" {
				continue
			}
			switch {
			case f.Type == "chat":
				got.seqs = append(got.seqs, f.Seq)
				if f.Seq >= last {
					return
				}
			case f.Type == "error" && f.Code == protocol.CodeHistoryGap:
				got.gaps = append(got.gaps, p)
			}
		}
	}()
	return out
}

// burstMembers joins two extended members and one seed member to room r
// and starts reading each until seq last.
func burstMembers(t *testing.T, h *Hub, addr string, last uint64) map[string]<-chan received {
	t.Helper()
	out := map[string]<-chan received{}
	for _, nick := range []string{"ext1", "ext2"} {
		c := wstest.Dial(t, addr, fmt.Sprintf(`{"type":"hello","nick":%q}`, nick), `{"type":"join","room":"r","id":"j"}`)
		c.Expect(t, `"joined"`)
		out[nick] = readRoom(c, last)
	}
	seed := wstest.Dial(t, addr, `{"type":"join-room","room":"r"}`)
	wstest.WaitUntil(t, "the seed member's join", func() bool { return testutil.ToFloat64(h.m.Memberships) == 3 })
	out["seed"] = readRoom(seed, last)
	return out
}

// publishFrozen sends n chats to room r from a seed client that is not a
// member, and waits until the bus has sequenced them all (held).
func publishFrozen(t *testing.T, addr string, f *frozenRelay, n int) {
	t.Helper()
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
	sender := wstest.Dial(t, addr)
	for i := range n {
		sender.Send(t, fmt.Sprintf(`{"type":"chat","room":"r","message":"burst %03d"}`, i+1))
	}
	wstest.WaitUntil(t, fmt.Sprintf("%d messages sequenced", n), func() bool { return f.heldCount() == n })
}

// waitReceived waits for every member's reading to end.
func waitReceived(t *testing.T, members map[string]<-chan received) map[string]received {
	t.Helper()
	out := map[string]received{}
	deadline := time.After(60 * time.Second)
	for nick, ch := range members {
		select {
		case got := <-ch:
			out[nick] = got
		case <-deadline:
			t.Fatalf("%s is still reading after 60s", nick)
		}
	}
	return out
}

// A backlog many times the send queue, delivered at once (a relayer that
// wakes from a freeze, a resync's catch-up), does not close the members
// that read: each falls behind, catches up from the room's history as its
// queue drains, and gets every message once, in order — seed and extended.
func TestBurstLargerThanTheQueueReachesReaders(t *testing.T) {
	const queue, n = 8, 96
	cm := conn.NewMetrics(prometheus.NewRegistry())
	h, addr, f := startFrozenHub(t, 100, func(c *stackConfig) {
		c.SendQueue, c.HistorySize, c.HistoryLimit = queue, 10, 100
		c.RatePerSec, c.RateBurst = 1e6, 1e6
		c.connConfig.Metrics = cm
	})
	members := burstMembers(t, h, addr, n)
	publishFrozen(t, addr, f, n)
	f.thaw("r", 1)
	for nick, got := range waitReceived(t, members) {
		if got.closed != "" || len(got.gaps) != 0 || len(got.seqs) != n {
			t.Errorf("%s: %d messages, gaps %v, ended by %q; want all %d", nick, len(got.seqs), got.gaps, got.closed, n)
			continue
		}
		for i, s := range got.seqs {
			if s != uint64(i+1) {
				t.Errorf("%s: message %d has seq %d: %v", nick, i, s, got.seqs)
				break
			}
		}
	}
	if got := testutil.ToFloat64(cm.SlowConsumers); got != 0 {
		t.Errorf("queue_drops_total %v", got)
	}
	if testutil.ToFloat64(h.m.FellBehind) == 0 {
		t.Error("no member fell behind: the burst did not overflow a queue, the test shows nothing")
	}
	// Caught up, the members are back on live delivery.
	h.mu.Lock()
	defer h.mu.Unlock()
	for c, st := range h.rooms["r"].local {
		if st != joined {
			t.Errorf("member %s in state %d after catching up", c.member.ID, st)
		}
	}
	if len(h.lagging) != 0 {
		t.Errorf("%d clients still lagging", len(h.lagging))
	}
}

// A member that fell behind further than the bus keeps loses the messages
// no longer kept: an extended member is told with one history_gap, a seed
// member sees the numbers jump; both go on with the rest, in order.
func TestBehindPastRetentionIsAGap(t *testing.T) {
	const queue, n, keep = 8, 150, 100
	h, addr, f := startFrozenHub(t, keep, func(c *stackConfig) {
		c.SendQueue, c.HistorySize, c.HistoryLimit = queue, 10, 100
		c.RatePerSec, c.RateBurst = 1e6, 1e6
	})
	members := burstMembers(t, h, addr, n)
	publishFrozen(t, addr, f, n)
	f.thaw("r", n-keep+1)
	for nick, got := range waitReceived(t, members) {
		if got.closed != "" {
			t.Errorf("%s closed: %s", nick, got.closed)
			continue
		}
		// Whatever it got before the gap, then every kept message.
		i := len(got.seqs) - keep
		if i < 0 || got.seqs[i] != n-keep+1 {
			t.Errorf("%s: %v, want it to end with seqs %d..%d", nick, got.seqs, n-keep+1, n)
			continue
		}
		for j, s := range got.seqs {
			if j > 0 && s != got.seqs[j-1]+1 && j != i {
				t.Errorf("%s: seq %d after %d: %v", nick, s, got.seqs[j-1], got.seqs)
				break
			}
		}
		lost := got.seqs[i] != got.seqs[max(i, 1)-1]+1
		switch {
		case nick == "seed" && len(got.gaps) != 0:
			t.Errorf("seed member got %v", got.gaps)
		case nick != "seed" && lost && (len(got.gaps) != 1 || !strings.Contains(got.gaps[0], "no longer kept")):
			t.Errorf("%s lost messages and got %v, want one history_gap", nick, got.gaps)
		}
	}
}

// A member that stops reading is still closed, by WriteTimeout, once its
// writes make no progress; the members that read get every message, in
// order, and none is taken for a slow consumer though their queues are
// small.
func TestStoppedReaderIsClosedReadersGoOn(t *testing.T) {
	cm := conn.NewMetrics(prometheus.NewRegistry())
	_, srv := startHubWith(t, func(c *stackConfig) {
		c.WriterLinger, c.WriteTimeout = 20*time.Millisecond, 300*time.Millisecond
		c.SendQueue, c.SendQueueBytes = 16, 64<<10
		c.RatePerSec, c.RateBurst = 1e6, 1e6
		c.connConfig.Metrics = cm
	})
	addr := srv.Listener.Addr().String()
	mute := wstest.Dial(t, addr, `{"type":"hello","nick":"mute"}`, `{"type":"join","room":"r","id":"j"}`)
	mute.Expect(t, `"joined"`) // and never reads again
	reader := wstest.Dial(t, addr, `{"type":"hello","nick":"reader"}`, `{"type":"join","room":"r","id":"j"}`)
	reader.Expect(t, `"joined"`)
	sender := wstest.Dial(t, addr)
	var seq uint64
	deadline := time.Now().Add(60 * time.Second)
	for testutil.ToFloat64(cm.WriteTimeouts) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no write timeout after 60s of frames to a client that does not read")
		}
		sender.Send(t, bigChat, bigChat, bigChat, bigChat)
		for range 4 {
			var f struct {
				Type string
				Seq  uint64
			}
			for f.Type != "chat" {
				op, p := reader.Frame(t)
				if op == 8 {
					t.Fatalf("the reader was closed after seq %d: %q", seq, p)
				}
				if err := json.Unmarshal([]byte(p), &f); err != nil {
					t.Fatal(err)
				}
			}
			if f.Seq != seq+1 {
				t.Fatalf("the reader got seq %d after %d", f.Seq, seq)
			}
			seq = f.Seq
		}
	}
	if got := testutil.ToFloat64(cm.SlowConsumers); got != 0 {
		t.Fatalf("queue_drops_total %v: a queue's overflow closed a client", got)
	}
	t.Logf("mute closed after %d messages", seq)
}
