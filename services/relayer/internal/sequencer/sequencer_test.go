package sequencer

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
)

func TestFanOutOrderAndInterest(t *testing.T) {
	h := start(t, "", func(c *Config) { c.HistoryLimit = 1000 })
	const pubs, perPub = 3, 100
	subs := make([]*client, 4)
	for i := range subs {
		subs[i] = h.dial(fmt.Sprintf("sub%d", i))
		subs[i].Sync(link.RoomState{Room: "r"}, link.RoomState{Room: "other"})
	}
	outsider := h.dial("outsider")
	outsider.Sync(link.RoomState{Room: "other"})

	publishers := make([]*client, pubs)
	for i := range publishers {
		// Publishers need no subscription of their own.
		publishers[i] = h.dial(fmt.Sprintf("pub%d", i))
		publishers[i].Sync()
	}
	var wg sync.WaitGroup
	for i, p := range publishers {
		wg.Go(func() {
			for j := range perPub {
				if j%10 == 0 {
					// Mixed: single frames and several frames per message.
					p.Send(linktest.PubFrame(fmt.Sprintf("p%d-%d", i, j), "r", "x"),
						linktest.PubFrame(fmt.Sprintf("p%d-%d-b", i, j), "r", "y"))
					continue
				}
				p.Pub(fmt.Sprintf("p%d-%d", i, j), "r", fmt.Sprintf("from %d #%d", i, j))
			}
		})
	}
	wg.Wait()
	total := pubs * (perPub + perPub/10)
	// Acks: every publish acknowledged once, in the publisher's own order.
	for i, p := range publishers {
		var last uint64
		for range perPub + perPub/10 {
			a := p.Expect(link.OpAck)
			if a.Room != "r" || a.Seq <= last || !strings.HasPrefix(a.MID, fmt.Sprintf("p%d-", i)) {
				t.Fatalf("publisher %d: bad ack %+v after seq %d", i, a, last)
			}
			last = a.Seq
		}
	}
	var first []protocol.Message
	for i, c := range subs {
		var got []protocol.Message
		for range total {
			got = append(got, *c.Expect(link.OpMsg).Msg)
		}
		if !slices.Equal(seqs(got), seqRange(1, uint64(total))) {
			t.Fatalf("subscriber %d got seqs %v", i, seqs(got))
		}
		if i == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("subscriber %d saw a different stream than subscriber 0", i)
		}
	}
	// The outsider's link is FIFO: had it been sent any msg of "r", it
	// would come before this one.
	publishers[0].Pub("last", "other", "to other")
	if f := outsider.Expect(link.OpMsg); f.Msg.Room != "other" || f.Msg.Seq != 1 {
		t.Fatalf("outsider got %+v", f.Msg)
	}
	for _, m := range first {
		if m.TS == 0 || m.UID == "" || m.From != "nick" {
			t.Fatalf("message not completed: %+v", m)
		}
	}
}

func TestNewLinkReplacesOld(t *testing.T) {
	h := start(t, "", nil)
	old := h.dial("A")
	old.Sync(link.RoomState{Room: "r"})
	nu := h.dial("A")
	if code, why := old.closed(); code != ClosePolicyViolation || why != DropReplaced {
		t.Fatalf("old link closed with %v (%s)", code, why)
	}
	nu.Sync(link.RoomState{Room: "r"})
	nu.Pub("m", "r", "hi")
	nu.Expect(link.OpMsg)
	nu.Expect(link.OpAck)
}

func TestBadFramesDoNotHurt(t *testing.T) {
	h := start(t, "", nil)
	c := h.dial("A")
	c.Sync(link.RoomState{Room: "r"})
	long := strings.Repeat("x", maxTextBytes+1)
	nacks := []struct {
		f    *link.Frame
		code string
	}{
		{&link.Frame{T: link.OpPub, MID: "n1"}, protocol.CodeBadRequest},
		{&link.Frame{T: link.OpPub, Msg: &protocol.Message{Room: "r", Text: "no mid"}}, protocol.CodeBadRequest},
		{linktest.PubFrame("n2", "", "x"), protocol.CodeBadRoom},
		{linktest.PubFrame("n3", " r", "x"), protocol.CodeBadRoom},
		{linktest.PubFrame("n4", "r\x00", "x"), protocol.CodeBadRoom},
		{linktest.PubFrame("n5", "r", ""), protocol.CodeBadRequest},
		{linktest.PubFrame("n6", "r", long), protocol.CodeTooLarge},
		{&link.Frame{T: link.OpPub, MID: "n7", Msg: &protocol.Message{Room: "r", Text: "x", From: long[:maxFieldBytes+1]}}, protocol.CodeBadRequest},
	}
	for _, n := range nacks {
		c.Send(n.f)
		if f := c.Expect(link.OpNack); f.Code != n.code || f.MID != n.f.MID || f.Error == "" {
			t.Fatalf("%+v: got %+v, want code %s", n.f, f, n.code)
		}
	}
	// Ignored without an answer; the marker shows nothing came first.
	c.Send(&link.Frame{T: "no-such-op"},
		&link.Frame{T: link.OpJoin, Room: "r"},
		&link.Frame{T: link.OpJoin, Room: "", Member: &protocol.Member{ID: "x"}},
		&link.Frame{T: link.OpLeave, Room: "r"},
		&link.Frame{T: link.OpUnsub, Room: "never-subscribed"},
		&link.Frame{T: link.OpSub, Rooms: []link.RoomState{{Room: "\x01"}}},
		linktest.PubFrame("ok", "r", "fine"))
	if f := c.Expect(link.OpMsg); f.Msg.Seq != 1 {
		t.Fatalf("got %+v", f.Msg)
	}
	c.Expect(link.OpAck)

}

func TestRestartContinuesSequence(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, nil)
	p := h.dial("p")
	p.Sync()
	for i := 1; i <= 5; i++ {
		p.Pub(fmt.Sprint("m", i), "r", fmt.Sprint("before ", i))
	}
	for range 5 {
		p.Expect(link.OpAck)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if code, why := p.closed(); code != CloseServiceRestart || why != DropShutdown {
		t.Fatalf("closed on shutdown with %v (%s), want 1012", code, why)
	}

	h2 := start(t, dir, nil)
	c := h2.dial("p")
	sub := c.Sync(link.RoomState{Room: "r", Tail: 10})[0]
	if sub.Seq != 5 || !slices.Equal(seqs(sub.Msgs), seqRange(1, 5)) || sub.Msgs[4].Text != "before 5" {
		t.Fatalf("after restart: %+v", sub)
	}
	// A publish re-sent across the restart is still recognised.
	c.Pub("m3", "r", "re-sent")
	if a := c.Expect(link.OpAck); a.Seq != 3 {
		t.Fatalf("re-sent ack %+v", a)
	}
	c.Pub("m6", "r", "after")
	if m := c.Expect(link.OpMsg); m.Msg.Seq != 6 {
		t.Fatalf("first seq after restart %d, want 6", m.Msg.Seq)
	}
}

func TestShutdownDeliversWhatWasAcknowledged(t *testing.T) {
	h := start(t, "", nil)
	sub := h.dial("s")
	sub.Sync(link.RoomState{Room: "r"})
	p := h.dial("p")
	p.Sync()
	p.Send(linktest.Pubs("m", "r", 200)...)
	p.Expect(link.OpAck) // the batch is applied and on disk
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if code, _ := sub.closed(); code != CloseServiceRestart {
		t.Fatalf("close status %v", code)
	}
	if n := sub.Received(link.OpMsg); n != 200 {
		t.Fatalf("subscriber got %d of 200 sequenced messages before the close", n)
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	// A small window: its keys are kept by compaction too.
	tweak := func(c *Config) { c.HistoryLimit = 5; c.CompactBytes = 4096; c.DedupWindow = 10 }
	h := start(t, dir, tweak)
	p := h.dial("p")
	p.Sync()
	for i := 1; i <= 300; i++ {
		p.Pub(fmt.Sprint("m", i), fmt.Sprint("r", i%2), strings.Repeat("z", 50))
	}
	for range 300 {
		p.Expect(link.OpAck)
	}
	// A round trip: the sequencer compacts after delivering a batch, so
	// the next answer comes after any compaction the pubs caused.
	p.Send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r0"})
	p.Expect(link.OpFetched)
	if size := testutil.ToFloat64(h.s.m.logBytes); size >= 4096 {
		t.Fatalf("log is %v bytes after compaction, threshold 4096", size)
	}
	if !strings.Contains(h.logs.String(), "log compacted") {
		t.Fatal("no compaction logged")
	}
	h.stop()
	h2 := start(t, dir, tweak)
	c := h2.dial("c")
	subs := c.Sync(link.RoomState{Room: "r0", Tail: 100}, link.RoomState{Room: "r1", Tail: 100})
	if subs[0].Seq != 150 || !slices.Equal(seqs(subs[0].Msgs), seqRange(146, 150)) ||
		subs[1].Seq != 150 || !slices.Equal(seqs(subs[1].Msgs), seqRange(146, 150)) {
		t.Fatalf("after compaction and restart: r0 %d %v, r1 %d %v", subs[0].Seq, seqs(subs[0].Msgs), subs[1].Seq, seqs(subs[1].Msgs))
	}
	c.Pub("m1", "r1", "after")
	if m := c.Expect(link.OpMsg); m.Msg.Seq != 151 {
		t.Fatalf("seq %d after compaction, want 151", m.Msg.Seq)
	}
}

// A link whose peer stops reading is closed once output it already owed
// is over the limit; one large answer alone does not condemn it.
func TestSlowLinkIsClosed(t *testing.T) {
	h := start(t, "", func(c *Config) { c.QueueBytes = 64 << 10 })
	slow := h.dial("slow")
	slow.Sync(link.RoomState{Room: "r"})
	slow.stall()
	p := h.dial("p")
	p.Sync()
	var frames []*link.Frame
	for i := range 400 { // about 100 KB of msg frames, in one batch
		frames = append(frames, linktest.PubFrame(fmt.Sprint(i), "r", strings.Repeat("y", 200)))
	}
	p.Send(frames...)
	for range 400 {
		p.Expect(link.OpAck)
	}
	// A round trip: the batch was delivered to every link.
	p.Send(&link.Frame{T: link.OpFetch, Req: 1, Room: "r", Limit: 1})
	p.Expect(link.OpFetched)
	select {
	case <-slow.done:
		t.Fatal("one batch over the limit closed the link")
	default:
	}
	p.Pub("more", "r", "more")
	if code, why := slow.closed(); code != CloseTryAgainLater || why != DropSlow {
		t.Fatalf("slow link closed with %v (%s), want 1013 for being slow", code, why)
	}
	p.Expect(link.OpAck) // the publisher is not held back by the slow link
}

// A link's reader waits once more than InflightBytes of its input wait for
// the sequencer, and goes on once they are applied.
func TestLinkInputIsBounded(t *testing.T) {
	h, run := startPaused(t, "", func(c *Config) { c.InflightBytes = 8 << 10 })
	p := h.dial("p")
	const n = 50
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		p.Send(&link.Frame{T: link.OpSync})
		for i := range n { // 50 messages of about 1 KB
			p.Pub(fmt.Sprint("m", i), "r", strings.Repeat("z", 1000))
		}
	}()
	// Nothing is applied: the reader hands over what fits, crosses the
	// bound with one more message, and waits.
	deadline := time.Now().Add(waitFor)
	for p.in.inflight.Load() <= 8<<10 || !strings.Contains(stacks(), "(*Input).Frames") {
		if time.Now().After(deadline) {
			t.Fatalf("the link's input never passed its bound, or Frames does not wait; %d events queued", len(h.s.in))
		}
		time.Sleep(time.Millisecond) // polling, with a deadline
	}
	// The link's open, its sync and 8 KiB of publishes plus the one that
	// crossed the bound.
	if queued := len(h.s.in); queued > 11 {
		t.Fatalf("%d events queued while the reader waits, want at most 11 (8 KiB of 1 KB publishes)", queued)
	}
	run()
	for i := range n {
		if ack := p.Expect(link.OpAck); ack.Seq != uint64(i+1) {
			t.Fatalf("ack %d: %+v", i, ack)
		}
	}
	<-sent
}

// stacks returns every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
