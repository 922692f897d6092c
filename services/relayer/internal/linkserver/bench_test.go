package linkserver

import (
	"strconv"
	"testing"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
)

// BenchmarkLinkBatching sends bursts of pubs over real loopback links and
// reports how many frames shared each WebSocket message on the way out.
func BenchmarkLinkBatching(b *testing.B) {
	const burst = 256
	h := start(b, func(c *config) { c.seq.HistoryLimit = 1000 })
	sub := h.dial("sub")
	sub.Sync(link.RoomState{Room: "r"})
	p := h.dial("pub")
	p.Sync()
	frames := make([]*link.Frame, burst)
	var payload []byte
	seq := 0
	msgs, got := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		payload = payload[:0]
		for i := range frames {
			seq++
			frames[i] = linktest.PubFrame(strconv.Itoa(seq), "r", "burst message")
			payload, _ = link.Append(payload, frames[i])
		}
		p.Write(payload)
		for range burst {
			sub.Expect(link.OpMsg)
			p.Expect(link.OpAck)
		}
		got += burst
		for len(sub.msgs) > 0 {
			<-sub.msgs
			msgs++
		}
	}
	if msgs > 0 {
		b.ReportMetric(float64(got)/float64(msgs), "frames/wsmsg")
	}
}
