// Package link defines the relay link: the protocol between ws-user
// instances and ws-relayer.
//
// A ws-user dials the relayer's Path with the shared secret in the
// Authorization header ("Bearer <secret>") and its instance id in
// HeaderInstance. Each WebSocket text message on the link carries one or
// more frames, each a JSON object on its own line (newline-delimited JSON):
// under load many frames share one WebSocket message, and a frame that many
// instances receive is encoded once and its bytes appended to each link.
//
// Ordering is the contract the rest of the system leans on: the relayer
// emits every frame of a room to a link in sequence order, and a ws-user
// handles the frames of its link in the order received.
package link

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/wschat/wschat/services/protocol"
)

// Path is the relayer's link endpoint.
const Path = "/link"

// HeaderInstance carries the dialling ws-user's instance id.
const HeaderInstance = "X-Wschat-Instance"

// HeaderEpoch, in the relayer's answer to the dial, names its log: a
// different epoch than the last link's means the relayer's sequence
// numbers started over (a new or lost data directory), and an instance
// must forget every position it holds before it syncs.
const HeaderEpoch = "X-Wschat-Epoch"

// Frame ops. ws-user to relayer:
const (
	// OpSync is the first frame after every (re)connect: the instance's
	// whole state (Rooms). The relayer replaces all presence it holds for
	// the instance and answers with one OpSubscribed per room. A large
	// state comes in parts: sync frames with More, then the last without;
	// the relayer applies them together, a room listed in several parts
	// with the members of all.
	OpSync = "sync"
	// OpSub subscribes one room (Rooms holds exactly one RoomState).
	OpSub = "sub"
	// OpUnsub drops the subscription of Room and the instance's members in it.
	OpUnsub = "unsub"
	// OpJoin and OpLeave change the instance's members of Room.
	OpJoin  = "join"
	OpLeave = "leave"
	// OpPub publishes Msg (Seq and TS unset) under the unique MID. Sess,
	// when set, is the sending client's session (protocol.Inbound.Session):
	// with Msg.ID it is the publish's de-duplication key instead of MID,
	// so that the client's re-send through another instance (another MID)
	// and this instance's own re-send are one message.
	OpPub = "pub"
	// OpFetch asks for history of Room: After/Before/Limit, answered by
	// OpFetched with the same Req.
	OpFetch = "fetch"
)

// Frame ops. Relayer to ws-user:
const (
	// OpSubscribed answers OpSync/OpSub for Room: Seq is the room's last
	// sequence number, Members every member on every instance, Msgs the
	// catch-up (see RoomState), First the oldest kept seq, and Gap is true
	// when messages after Since were too old to send (First tells it too:
	// ws-user reads First; Gap stays on the wire for other readers).
	OpSubscribed = "subscribed"
	// OpMsg delivers one sequenced message, Msg.
	OpMsg = "msg"
	// OpAck tells the publishing instance that MID was sequenced as Seq.
	OpAck = "ack"
	// OpNack refuses MID with Code and Error.
	OpNack = "nack"
	// OpPresence carries Event (protocol.PresenceJoin/Leave) for Member.
	OpPresence = "presence"
	// OpFetched answers OpFetch: Msgs ascending, First the oldest kept seq;
	// or Code and Error when the relayer refuses it (its output to the
	// instance is over its bound: fetch again later).
	OpFetched = "fetched"
)

// RoomState is an instance's view of one room, sent in OpSync and OpSub.
type RoomState struct {
	Room string `json:"room"`
	// Since is the last seq the instance delivered locally; 0 for a new
	// subscription, unless Resume is set.
	Since uint64 `json:"since,omitempty"`
	// Resume says the instance was subscribed and delivered every message
	// up to Since, even when Since is 0 (a room that had none yet): it is
	// owed every message after Since, not a new subscription's tail.
	Resume bool `json:"resume,omitempty"`
	// Tail is how many recent messages the instance keeps for the room.
	// The relayer answers with every message after min(Since, last-Tail)
	// when Since > 0 or Resume is set, else with the last Tail messages.
	Tail int `json:"tail,omitempty"`
	// Members are the instance's own members of the room.
	Members []protocol.Member `json:"members"`
}

// Frame is every link frame; T says which fields matter (see the Op
// constants). One flat struct keeps the link to one decoder.
type Frame struct {
	T       string             `json:"t"`
	Room    string             `json:"room,omitempty"`
	Rooms   []RoomState        `json:"rooms,omitempty"`
	MID     string             `json:"mid,omitempty"`
	Sess    string             `json:"sess,omitempty"`
	Msg     *protocol.Message  `json:"msg,omitempty"`
	Msgs    []protocol.Message `json:"msgs,omitempty"`
	Member  *protocol.Member   `json:"member,omitempty"`
	Members []protocol.Member  `json:"members,omitempty"`
	Event   string             `json:"event,omitempty"`
	Seq     uint64             `json:"seq,omitempty"`
	First   uint64             `json:"first,omitempty"`
	Gap     bool               `json:"gap,omitempty"`
	Req     uint64             `json:"req,omitempty"`
	After   uint64             `json:"after,omitempty"`
	Before  uint64             `json:"before,omitempty"`
	Limit   int                `json:"limit,omitempty"`
	Code    string             `json:"code,omitempty"`
	Error   string             `json:"error,omitempty"`
	More    bool               `json:"more,omitempty"` // sync: more parts follow
	// Settle, in subscribed, is set by a relayer that started less than
	// its presence grace ago: it holds presence in memory, so Members may
	// lack the members of instances that have not re-synced since. For
	// Settle milliseconds the instance keeps the other instances' members
	// it knew and Members lacks; presence joins confirm them as their
	// instances sync, and those still unconfirmed then have left.
	Settle int64 `json:"settle,omitempty"`
}

// Append appends f and its terminating newline to dst.
func Append(dst []byte, f *Frame) ([]byte, error) {
	b, err := json.Marshal(f)
	if err != nil {
		return dst, fmt.Errorf("encode %s frame: %w", f.T, err)
	}
	dst = append(dst, b...)
	return append(dst, '\n'), nil
}

// AppendPub appends the pub frame of m under mid and the client's session
// sess (may be empty), reading back as the frame Append would encode
// (TestHandEncodersMatchAppend): written by hand because every message
// sent crosses the link once.
func AppendPub(dst []byte, mid, sess string, m *protocol.Message) []byte {
	dst = append(dst, `{"t":"pub","mid":`...)
	dst = protocol.AppendString(dst, mid)
	if sess != "" {
		dst = append(dst, `,"sess":`...)
		dst = protocol.AppendString(dst, sess)
	}
	dst = append(dst, `,"msg":`...)
	dst = protocol.AppendMessage(dst, m)
	return append(dst, '}', '\n')
}

// The relayer's per-message frames (msg, ack) are on the hot path and
// are built by hand from the message's JSON, encoded once at sequencing
// time (TestHandEncodersMatchAppend keeps them reading back as Append's).

const msgFramePrefix = `{"t":"msg","msg":`

// MsgFrame returns the msg frame for m and, inside the same allocation,
// m's JSON, so that the relayer's ring entry and every link share bytes.
func MsgFrame(m *protocol.Message) (frame, msgJSON []byte) {
	frame = make([]byte, 0, len(msgFramePrefix)+len(m.Text)+len(m.Room)+len(m.From)+len(m.UID)+len(m.ID)+96)
	frame = append(frame, msgFramePrefix...)
	frame = protocol.AppendMessage(frame, m)
	frame = append(frame, '}', '\n')
	return frame, frame[len(msgFramePrefix) : len(frame)-2]
}

// AppendAck appends the ack frame of the publish mid, sequenced in room
// as seq.
func AppendAck(dst []byte, room, mid string, seq uint64) []byte {
	dst = append(dst, `{"t":"ack","room":`...)
	dst = protocol.AppendString(dst, room)
	dst = append(dst, `,"mid":`...)
	dst = protocol.AppendString(dst, mid)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}', '\n')
}

// AppendWithMsgs appends f (whose Msgs must be nil) with msgs, each a
// message's JSON, spliced in as its "msgs" field: catch-up answers can
// carry a thousand messages, and re-encoding each would cost the relayer
// far more than copying the JSON it already holds. JSON objects are
// unordered, so the field may go last.
func AppendWithMsgs(dst []byte, f *Frame, msgs [][]byte) ([]byte, error) {
	dst, err := Append(dst, f)
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

// MaxMessage bounds one link message as both ends write it: a backlog (a
// resync, publishes re-sent after an outage, a catch-up) goes out in
// several, cut at frame boundaries (NextMessage), so that it never exceeds
// the other end's read limit. A relayer's LINK_MAX_FRAME_BYTES must be at
// least this.
const MaxMessage = 1 << 20

// NextMessage is the length of the first link message to write of data,
// whole frames: all of it when it is at most MaxMessage, else the frames
// that fit in MaxMessage, or one frame larger than that alone.
func NextMessage(data []byte) int {
	if len(data) <= MaxMessage {
		return len(data)
	}
	if i := bytes.LastIndexByte(data[:MaxMessage], '\n'); i >= 0 {
		return i + 1
	}
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1
	}
	return len(data)
}

// Split calls fn for each frame of one link message, in order, and stops at
// the first error. A frame that does not decode is an error: the link is
// between trusted peers, so a bad frame means a bug or a version mismatch,
// and the caller closes the link. Frames never point into data: both ends
// reuse its array for the next message while frames are still queued.
func Split(data []byte, fn func(*Frame) error) error {
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var f Frame
		if !decodeFast(line, &f) {
			f = Frame{}
			if err := json.Unmarshal(line, &f); err != nil {
				return fmt.Errorf("decode link frame: %w", err)
			}
		}
		if f.T == "" {
			return fmt.Errorf("decode link frame: missing op")
		}
		if err := fn(&f); err != nil {
			return err
		}
	}
	return nil
}

// ReadMessage reads r, one link message, to its end into buf's array,
// growing it as needed, and returns the message. A link reads every
// message into the same buffer this way instead of allocating one per
// message (io.ReadAll's way): frames copy whatever they keep, so the bytes
// are free again once Split returns. An array grown past KeepBytes (by a
// resync's or a backlog's large message) is let go, not kept for good.
func ReadMessage(r io.Reader, buf []byte) ([]byte, error) {
	buf = buf[:0]
	if cap(buf) == 0 || cap(buf) > KeepBytes {
		buf = make([]byte, 0, 512)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF { // io.Reader's contract: EOF itself, never wrapped
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// KeepBytes bounds the arrays a link end reuses: ReadMessage's, and the
// spare output buffer of its writer (package linkws).
const KeepBytes = 1 << 20

// AppendMember appends a frame about one member (join, leave, presence),
// reading back as the frame Append would encode: written by hand because a
// connection storm sends several per connection.
func AppendMember(dst []byte, op, room, event string, m *protocol.Member) []byte {
	dst = append(dst, `{"t":`...)
	dst = protocol.AppendString(dst, op)
	if room != "" {
		dst = append(dst, `,"room":`...)
		dst = protocol.AppendString(dst, room)
	}
	dst = append(dst, `,"member":`...)
	dst = protocol.AppendMember(dst, m)
	if event != "" {
		dst = append(dst, `,"event":`...)
		dst = protocol.AppendString(dst, event)
	}
	return append(dst, '}', '\n')
}
