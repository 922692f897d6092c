package wsconn

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// clientFrame is a masked client frame (mask key zero): first is FIN and
// opcode.
func clientFrame(first byte, payload []byte) []byte {
	b := []byte{first}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	return append(append(b, 0, 0, 0, 0), payload...)
}

// The tracker knows, after any prefix of a client's stream, whether a
// message has started and not ended, however the bytes are split.
func TestFrameTrackerFollowsMessages(t *testing.T) {
	const (
		text     = 0x81 // FIN + text
		textMore = 0x01 // text, more fragments follow
		contEnd  = 0x80 // FIN + continuation
		ping     = 0x89
	)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		// startedAfter[i]: a message is under way after frame i.
		startedAfter []bool
	}{
		{"small", [][]byte{clientFrame(text, []byte("hi")), clientFrame(text, nil)}, []bool{false, false}},
		{"16-bit length", [][]byte{clientFrame(text, bytes.Repeat([]byte("x"), 300))}, []bool{false}},
		{"64-bit length", [][]byte{clientFrame(text, bytes.Repeat([]byte("x"), 70000))}, []bool{false}},
		{"ping between messages", [][]byte{clientFrame(ping, []byte("p")), clientFrame(text, []byte("a"))}, []bool{false, false}},
		{"fragments", [][]byte{
			clientFrame(textMore, []byte("a")), clientFrame(ping, nil), clientFrame(contEnd, []byte("b")),
		}, []bool{true, true, false}},
	} {
		for _, step := range []int{1, 3, 1 << 20} {
			var tr frameTracker
			for i, f := range tc.frames {
				for k := 0; k < len(f); k += step {
					if k > 0 {
						if !tr.started() {
							t.Fatalf("%s, step %d: not started %d bytes into frame %d", tc.name, step, k, i)
						}
					}
					tr.feed(f[k:min(k+step, len(f))])
				}
				if tr.started() != tc.startedAfter[i] {
					t.Fatalf("%s, step %d: started after frame %d = %v, want %v", tc.name, step, i, tr.started(), tc.startedAfter[i])
				}
			}
		}
	}
}
