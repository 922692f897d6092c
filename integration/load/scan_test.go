package load

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

func TestScanFrame(t *testing.T) {
	chat := protocol.AppendChat(nil, &protocol.Message{Room: "load-r1", Seq: 42, ID: "c7", From: "n", UID: "u1", Text: "L3:7:123", TS: 1})
	var f serverFrame
	if !scanFrame(chat, &f) || string(f.typ) != "chat" || string(f.room) != "load-r1" || string(f.message) != "L3:7:123" ||
		string(f.id) != "c7" || f.seq != 42 || !f.hasSeq {
		t.Fatalf("chat: %+v", f)
	}
	joined := []byte(` { "type" : "joined", "id":"j","room":"r","seq":3,
		"members":[{"id":"u\"}1","nick":"a{"}],"history":[{"room":"r","seq":3,"message":"x]"}], "recovered":true}`)
	if !scanFrame(joined, &f) || string(f.typ) != "joined" || string(f.room) != "r" || f.seq != 3 {
		t.Fatalf("joined: %+v", f)
	}
	errFrame := protocol.Encode(protocol.Errorf(protocol.CodeRateLimited, "slow \"down\""))
	if !scanFrame(errFrame, &f) || string(f.typ) != "error" || string(f.code) != "rate_limited" {
		t.Fatalf("error: %+v", f)
	}
	for _, bad := range []string{``, `[]`, `{"type"`, `{"type":}`, `{"type":"x",`, `{type:"x"}`, `{"a":[1,2}`, `{"seq":1}`, `{"type":"x" "a":1}`, `{"type":"x",}`, `{"type":"x"`} {
		if scanFrame([]byte(bad), &f) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestLoadText(t *testing.T) {
	for _, c := range []struct {
		pub, ctr int
		sched    int64
	}{{0, 0, 0}, {12, 345, int64(time.Hour)}, {1 << 20, 1 << 20, 1 << 61}} {
		b := appendLoadText(nil, c.pub, c.ctr, c.sched)
		for _, in := range [][]byte{b, append(append(b, ' '), strings.Repeat("x", 50)...)} {
			pub, ctr, sched, ok := parseLoadText(in)
			if !ok || pub != c.pub || ctr != c.ctr || sched != c.sched {
				t.Fatalf("%q: %d %d %d %v", in, pub, ctr, sched, ok)
			}
		}
	}
	for _, bad := range []string{"", "P", "L1:2", "L1:2:3:4", "L1::3", "Lx:1:2", "L1:2:-3", "L99999999999:1:1", "X1:2:3"} {
		if _, _, _, ok := parseLoadText([]byte(bad)); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestAppendChatFrameDecodes(t *testing.T) {
	b := appendChatFrame(nil, `ro"om`, appendLoadText(nil, 1, 2, 3), true, 9)
	in, err := protocol.Decode(b, protocol.Rules{})
	if err != nil || in.Type != protocol.TypeChat || in.Room != `ro"om` || in.Message != "L1:2:3" || in.ID != "c9" {
		t.Fatalf("%s: %+v %v", b, in, err)
	}
}

// testRoomConn is a receiver of room "r" with publishers 0..1.
func testRoomConn(perPub int) *conn {
	r := &runner{cfg: &config{}, errs: errCounter{m: map[string]int64{}}, epoch: time.Now()}
	win := &window{}
	win.end.Store(1 << 62)
	rm := &room{name: "r", perPub: perPub, lat: newRecorder(1), win: win}
	words := (perPub + 63) / 64
	c := &conn{r: r, room: rm, words: words, bits: make([]uint64, 2*words), maxSeen: []int32{-1, -1}}
	return c
}

func TestReceiverCounts(t *testing.T) {
	c := testRoomConn(100)
	var f serverFrame
	deliver := func(pub, ctr int) {
		m := protocol.Message{Room: "r", Seq: 1, Text: string(appendLoadText(nil, pub, ctr, 0))}
		c.onFrame(protocol.AppendChat(nil, &m), &f)
	}
	deliver(0, 0)
	deliver(0, 1)
	deliver(1, 0)
	deliver(0, 1) // duplicate
	deliver(0, 3)
	deliver(0, 2) // late: out of order
	deliver(1, 1)
	if c.delivered.Load() != 6 || c.dups != 1 || c.ooo != 1 {
		t.Fatalf("delivered %d dups %d ooo %d", c.delivered.Load(), c.dups, c.ooo)
	}
	deliver(2, 0)   // unknown publisher
	deliver(0, 100) // counter beyond the schedule
	c.onFrame([]byte(`{"type":"chat","room":"other","message":"L0:5:0"}`), &f)
	c.onFrame([]byte(`{"type":"ack","id":"c1","room":"r","seq":4}`), &f)
	errs, _ := c.r.errs.snapshot()
	if errs["bad_counter"] != 2 || errs["wrong_room"] != 1 || c.acks != 1 || c.delivered.Load() != 6 {
		t.Fatalf("errors %v acks %d", errs, c.acks)
	}
	if h := c.room.lat.merged(); h.TotalCount() != 6 {
		t.Fatalf("latencies recorded: %d", h.TotalCount())
	}
}

// loopReader replays data forever.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

// BenchmarkReceive is the generator's per-frame cost: frame parsing from a
// buffered stream, field scanning, order/duplicate tracking and the latency
// histogram. Target: 0 allocs/op.
func BenchmarkReceive(b *testing.B) {
	const k = 256
	var stream []byte
	for i := range k {
		m := protocol.Message{Room: "r", Seq: uint64(i + 1), ID: "c1", From: "load1", UID: "u0a1b2c3d.1f",
			Text: string(appendLoadText(nil, i%2, i/2, 12345)), TS: 1764400000000}
		stream = append(stream, srvFrame(true, opText, protocol.AppendChat(nil, &m))...)
	}
	c := testRoomConn(k)
	ws, _ := testConn(&loopReader{data: stream}, 4096)
	c.ws = ws
	var f serverFrame
	b.SetBytes(int64(len(stream) / k))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_, p, err := c.ws.readMessage()
		if err != nil {
			b.Fatal(err)
		}
		c.onFrame(p, &f)
		if i++; i == k {
			i = 0
			clear(c.bits)
			c.maxSeen[0], c.maxSeen[1] = -1, -1
		}
	}
	if c.dups != 0 || c.ooo != 0 || c.delivered.Load() == 0 {
		b.Fatalf("dups %d ooo %d delivered %d", c.dups, c.ooo, c.delivered.Load())
	}
}

func BenchmarkSendFrame(b *testing.B) {
	ws, fc := testConn(bytes.NewReader(nil), 4096)
	frame := make([]byte, 0, 256)
	text := make([]byte, 0, 64)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		text = appendLoadText(text[:0], 3, i, int64(i)*1000)
		frame = appendChatFrame(frame[:0], "load-123-r4", text, true, i)
		if err := ws.writeFrame(opText, frame); err != nil {
			b.Fatal(err)
		}
		if fc.out.Len() > 1<<20 {
			fc.out.Reset()
		}
		i++
	}
}
