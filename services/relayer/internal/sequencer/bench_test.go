package sequencer

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// BenchmarkFanOut sequences one pub to a room with n subscribed links:
// apply, log write (no fsync), encode once, stage and deliver the same
// bytes to every link. Allocations must not grow with n.
func BenchmarkFanOut(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("links=%d", n), func(b *testing.B) {
			st, err := store.Open(b.TempDir(), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			cfg := testConfig()
			cfg.QueueBytes = 1 << 30
			s, err := New(cfg, st)
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			fake := func(id string) *conn {
				c := &conn{s: s, inst: id, log: s.log, wake: make(chan struct{}, 1)}
				s.apply([]event{{kind: evOpen, conn: c}})
				return c
			}
			conns := make([]*conn, n)
			for i := range conns {
				conns[i] = fake(fmt.Sprint("sub", i))
				s.apply([]event{{kind: evFrames, conn: conns[i], frames: []*link.Frame{{T: link.OpSync, Rooms: []link.RoomState{{Room: "r"}}}}}})
			}
			pub := fake("pub")
			s.apply([]event{{kind: evFrames, conn: pub, frames: []*link.Frame{{T: link.OpSync}}}})
			msg := protocol.Message{Room: "r", Text: "a typical chat message of moderate length", From: "alice", UID: "u-1", ID: "c-1"}
			f := &link.Frame{T: link.OpPub, Msg: &msg}
			ev := []event{{kind: evFrames, conn: pub, frames: []*link.Frame{f}}}
			var mid []byte
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				mid = strconv.AppendInt(mid[:0], int64(i), 10)
				f.MID = string(mid)
				if err := s.apply(ev); err != nil {
					b.Fatal(err)
				}
				for _, c := range conns {
					c.out = c.out[:0]
				}
				pub.out = pub.out[:0]
			}
		})
	}
}

// BenchmarkLinkBatching sends bursts of pubs over real loopback links and
// reports how many frames shared each WebSocket message on the way out.
func BenchmarkLinkBatching(b *testing.B) {
	const burst = 256
	h := start(b, "", func(c *Config) { c.HistoryLimit = 1000 })
	sub := h.dial("sub")
	sub.sync(link.RoomState{Room: "r"})
	p := h.dial("pub")
	p.sync()
	frames := make([]*link.Frame, burst)
	var payload []byte
	seq := 0
	msgs, got := 0, 0
	b.ReportAllocs()
	for b.Loop() {
		payload = payload[:0]
		for i := range frames {
			seq++
			frames[i] = pubFrame(strconv.Itoa(seq), "r", "burst message")
			payload, _ = link.Append(payload, frames[i])
		}
		p.sendRaw(payload)
		for range burst {
			sub.expect(link.OpMsg)
			p.expect(link.OpAck)
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
