package link

import (
	"unicode/utf8"

	"github.com/wschat/wschat/services/protocol"
)

// decodeFast decodes the per-message frames (pub, msg, ack) as the peers
// encode them: compact JSON, no escapes in strings, only the fields those
// frames use. Anything else, and anything it is unsure of, makes it return
// false, and the frame goes to encoding/json, which decides. So it never
// accepts what encoding/json would refuse or read differently;
// FuzzDecodeFastMatchesEncodingJSON holds it to that.
//
// It exists because encoding/json's reflection was the largest CPU cost of
// a ws-user's link reader: one msg frame per message a room receives.
func decodeFast(line []byte, f *Frame) bool {
	// One string for the whole line: every field is a substring of it, so
	// a frame costs one allocation, not one per field.
	p := fastParser{s: string(line)}
	if !p.lit('{') {
		return false
	}
	for first := true; ; first = false {
		if p.lit('}') {
			return !first && p.i == len(p.s) && f.T != ""
		}
		if !first && !p.lit(',') {
			return false
		}
		key, ok := p.str()
		if !ok || !p.lit(':') {
			return false
		}
		switch key {
		case "t":
			f.T, ok = p.str()
		case "room":
			f.Room, ok = p.str()
		case "mid":
			f.MID, ok = p.str()
		case "seq":
			f.Seq, ok = p.uint()
		case "msg":
			if f.Msg == nil { // a repeated key fills the same message, as in encoding/json
				f.Msg = new(protocol.Message)
			}
			ok = p.message(f.Msg)
		default:
			return false
		}
		if !ok {
			return false
		}
	}
}

type fastParser struct {
	s string
	i int
}

func (p *fastParser) lit(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters, in valid
// UTF-8 (encoding/json would replace invalid bytes; the slow path does).
func (p *fastParser) str() (string, bool) {
	if !p.lit('"') {
		return "", false
	}
	start := p.i
	ascii := true
	for ; p.i < len(p.s); p.i++ {
		switch c := p.s[p.i]; {
		case c == '"':
			v := p.s[start:p.i]
			p.i++
			if !ascii && !utf8.ValidString(v) {
				return "", false
			}
			return v, true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// uint reads a JSON integer that fits a uint64: no sign, no leading zero,
// no fraction or exponent.
func (p *fastParser) uint() (uint64, bool) {
	start := p.i
	var v uint64
	for ; p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9'; p.i++ {
		d := uint64(p.s[p.i] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	n := p.i - start
	if n == 0 || (n > 1 && p.s[start] == '0') {
		return 0, false
	}
	if p.i < len(p.s) && (p.s[p.i] == '.' || p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		return 0, false
	}
	return v, true
}

func (p *fastParser) int() (int64, bool) {
	neg := p.lit('-')
	u, ok := p.uint()
	if !ok || u > 1<<63-1 {
		return 0, false // -1<<63 itself goes the slow way
	}
	if neg {
		return -int64(u), true
	}
	return int64(u), true
}

func (p *fastParser) message(m *protocol.Message) bool {
	if !p.lit('{') {
		return false
	}
	for first := true; ; first = false {
		if p.lit('}') {
			return true
		}
		if !first && !p.lit(',') {
			return false
		}
		key, ok := p.str()
		if !ok || !p.lit(':') {
			return false
		}
		switch key {
		case "room":
			m.Room, ok = p.str()
		case "seq":
			m.Seq, ok = p.uint()
		case "id":
			m.ID, ok = p.str()
		case "from":
			m.From, ok = p.str()
		case "uid":
			m.UID, ok = p.str()
		case "message":
			m.Text, ok = p.str()
		case "ts":
			m.TS, ok = p.int()
		default:
			return false
		}
		if !ok {
			return false
		}
	}
}
