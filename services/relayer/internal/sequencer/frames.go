package sequencer

import (
	"strconv"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// The per-message frames (msg, ack) are on the hot path and are built by
// hand from the message's JSON, encoded once at sequencing time;
// TestHandBuiltFramesMatchLinkAppend keeps them identical to link.Append.

const msgFramePrefix = `{"t":"msg","msg":`

// newMsgFrame returns the msg frame for m and, inside the same allocation,
// m's JSON, so that the ring entry and every link share bytes.
func newMsgFrame(m *protocol.Message) (frame, js []byte) {
	frame = make([]byte, 0, len(msgFramePrefix)+len(m.Text)+len(m.Room)+len(m.From)+len(m.UID)+len(m.ID)+96)
	frame = append(frame, msgFramePrefix...)
	frame = protocol.AppendMessage(frame, m)
	frame = append(frame, '}', '\n')
	return frame, frame[len(msgFramePrefix) : len(frame)-2]
}

func appendAck(dst []byte, room, mid string, seq uint64) []byte {
	dst = append(dst, `{"t":"ack","room":`...)
	dst = protocol.AppendString(dst, room)
	dst = append(dst, `,"mid":`...)
	dst = protocol.AppendString(dst, mid)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}', '\n')
}

// appendWithMsgs appends f (whose Msgs must be nil) with msgs spliced in as
// its "msgs" field: catch-up answers can carry a thousand messages, and
// re-encoding each would cost the sequencer far more than copying the JSON
// it already holds. JSON objects are unordered, so the field may go last.
func appendWithMsgs(dst []byte, f *link.Frame, msgs [][]byte) ([]byte, error) {
	dst, err := link.Append(dst, f)
	if err != nil || len(msgs) == 0 {
		return dst, err
	}
	dst = dst[:len(dst)-2] // "}\n"
	dst = append(dst, `,"msgs":[`...)
	for i, m := range msgs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, m...)
	}
	return append(dst, ']', '}', '\n'), nil
}
