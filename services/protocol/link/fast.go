package link

import (
	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/internal/jsonfast"
)

// decodeFast decodes the per-message frames (pub, msg, ack) and the
// per-member ones (join, leave, presence) as the peers encode them: compact
// JSON, no escapes in strings, only the fields those frames use. Anything
// else, and anything it is unsure of, makes it return false, and the frame
// goes to encoding/json, which decides. So it never
// accepts what encoding/json would refuse or read differently;
// FuzzDecodeFastMatchesEncodingJSON holds it to that.
//
// It exists because encoding/json's reflection was the largest CPU cost of
// a ws-user's link reader: one msg frame per message a room receives.
func decodeFast(line []byte, f *Frame) bool {
	// One string for the whole line: every field is a substring of it, so
	// a frame costs one allocation, not one per field.
	p := jsonfast.Parser{S: string(line)}
	ok := p.Object(func(key string) (ok bool) {
		switch key {
		case "t":
			f.T, ok = p.Str()
		case "room":
			f.Room, ok = p.Str()
		case "mid":
			f.MID, ok = p.Str()
		case "sess":
			f.Sess, ok = p.Str()
		case "seq":
			f.Seq, ok = p.Uint()
		case "msg":
			if f.Msg == nil { // a repeated key fills the same message, as in encoding/json
				f.Msg = new(protocol.Message)
			}
			ok = message(&p, f.Msg)
		case "member":
			if f.Member == nil {
				f.Member = new(protocol.Member)
			}
			ok = member(&p, f.Member)
		case "event":
			f.Event, ok = p.Str()
		}
		return ok
	})
	return ok && p.Done() && f.T != ""
}

func member(p *jsonfast.Parser, m *protocol.Member) bool {
	return p.Object(func(key string) (ok bool) {
		switch key {
		case "id":
			m.ID, ok = p.Str()
		case "nick":
			m.Nick, ok = p.Str()
		case "instance":
			m.Instance, ok = p.Str()
		case "user":
			m.User, ok = p.Str()
		}
		return ok
	})
}

func message(p *jsonfast.Parser, m *protocol.Message) bool {
	return p.Object(func(key string) (ok bool) {
		switch key {
		case "room":
			m.Room, ok = p.Str()
		case "seq":
			m.Seq, ok = p.Uint()
		case "id":
			m.ID, ok = p.Str()
		case "from":
			m.From, ok = p.Str()
		case "uid":
			m.UID, ok = p.Str()
		case "user":
			m.User, ok = p.Str()
		case "message":
			m.Text, ok = p.Str()
		case "ts":
			m.TS, ok = p.Int()
		}
		return ok
	})
}
