package linkserver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
)

// After a write of more than 1 MiB the writer must not reuse, as its next
// output buffer, the array it is about to send (found in review: the race
// detector sees the sequencer append into what the writer sends, and the
// peer gets garbled, lost or doubled frames).
func TestLinkBuffersAreNotSharedAfterALargeWrite(t *testing.T) {
	h := start(t, func(c *config) { c.seq.QueueBytes = 64 << 20; c.MaxFrameBytes = 16 << 20; c.seq.HistoryLimit = 5000 })
	a := h.dial("a")
	a.Sync(link.RoomState{Room: "r"})
	b := h.dial("b")
	b.Sync()
	var med []*link.Frame
	for i := range 20 {
		med = append(med, linktest.PubFrame(fmt.Sprint("med", i), "r", strings.Repeat("y", 10000)))
	}
	b.Send(med...)
	for range 20 {
		a.Expect(link.OpMsg)
	}
	var big []*link.Frame
	for i := range 25 {
		big = append(big, linktest.PubFrame(fmt.Sprint("big", i), "r", strings.Repeat("x", 60000)))
	}
	b.Send(big...)
	go func() {
		for i := range 3000 {
			b.Pub(fmt.Sprint("s", i), "r", fmt.Sprint("small message number ", i))
		}
	}()
	for want := uint64(21); want <= 3045; {
		f := a.Next()
		if f.T != link.OpMsg {
			continue
		}
		if f.Msg.Seq != want {
			t.Fatalf("got seq %d, want %d", f.Msg.Seq, want)
		}
		want++
	}
}
