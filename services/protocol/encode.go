package protocol

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// AppendChat appends the "chat" frame of m to dst. It is the hot path of
// every broadcast (encoded once, sent to every member), so it is written by
// hand instead of through reflection; TestAppendChatMatchesJSON keeps it
// equivalent to encoding/json.
func AppendChat(dst []byte, m *Message) []byte {
	dst = append(dst, `{"type":"chat",`...)
	return appendMessageFields(dst, m)
}

// AppendMessage appends m as the JSON object encoding/json would write (the
// same fields; strings escaped by AppendString): once per published message
// on the relay link and in the relayer's log.
func AppendMessage(dst []byte, m *Message) []byte {
	return appendMessageFields(append(dst, '{'), m)
}

func appendMessageFields(dst []byte, m *Message) []byte {
	dst = append(dst, `"room":`...)
	dst = AppendString(dst, m.Room)
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, m.Text)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, m.Seq, 10)
	if m.ID != "" {
		dst = append(dst, `,"id":`...)
		dst = AppendString(dst, m.ID)
	}
	if m.From != "" {
		dst = append(dst, `,"from":`...)
		dst = AppendString(dst, m.From)
	}
	if m.UID != "" {
		dst = append(dst, `,"uid":`...)
		dst = AppendString(dst, m.UID)
	}
	if m.User != "" {
		dst = append(dst, `,"user":`...)
		dst = AppendString(dst, m.User)
	}
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	return append(dst, '}')
}

// AppendAck appends the "ack" frame for a sender's message id, one per
// message sent.
func AppendAck(dst []byte, id, room string, seq uint64) []byte {
	dst = append(dst, `{"type":"ack",`...)
	if id != "" {
		dst = append(dst, `"id":`...)
		dst = AppendString(dst, id)
		dst = append(dst, ',')
	}
	dst = append(dst, `"room":`...)
	dst = AppendString(dst, room)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}

// AppendPong appends the "pong" answering a ping with id: the keepalive of
// browser clients, answered by the connection's reader, whose stack
// encoding/json would grow.
func AppendPong(dst []byte, id string) []byte {
	dst = append(dst, `{"type":"pong"`...)
	if id != "" {
		dst = append(dst, `,"id":`...)
		dst = AppendString(dst, id)
	}
	return append(dst, '}')
}

// Encode marshals any outbound frame that is not on a hot path.
func Encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Every frame type here marshals; reaching this is a programming
		// error worth a loud, but not fatal, answer.
		return []byte(`{"type":"error","code":"internal","message":"cannot encode frame"}`)
	}
	return b
}

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD and
// U+2028/U+2029 are escaped, as encoding/json does, so the output is also
// safe to embed in JavaScript.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendJoined appends the "joined" frame j (its Type is not looked at).
// Every join sends one, with the room's member list and history: written by
// hand like the chat frame, it costs no reflection and little stack.
func AppendJoined(dst []byte, j *Joined) []byte {
	dst = append(dst, `{"type":"joined",`...)
	if j.ID != "" {
		dst = append(dst, `"id":`...)
		dst = AppendString(dst, j.ID)
		dst = append(dst, ',')
	}
	dst = append(dst, `"room":`...)
	dst = AppendString(dst, j.Room)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, j.Seq, 10)
	dst = append(dst, `,"members":`...)
	dst = appendArray(dst, j.Members, AppendMember)
	dst = append(dst, `,"history":`...)
	dst = appendArray(dst, j.History, AppendMessage)
	if j.Recovered != nil {
		dst = append(dst, `,"recovered":`...)
		dst = strconv.AppendBool(dst, *j.Recovered)
	}
	if j.Epoch != "" {
		dst = append(dst, `,"epoch":`...)
		dst = AppendString(dst, j.Epoch)
	}
	return append(dst, '}')
}

// appendArray appends items as a JSON array, or null for a nil slice, as
// encoding/json does.
func appendArray[T any](dst []byte, items []T, appendItem func([]byte, *T) []byte) []byte {
	if items == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '[')
	for i := range items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendItem(dst, &items[i])
	}
	return append(dst, ']')
}

// AppendPresence appends the "presence" frame telling a room's members that
// m joined or left (event): one per join and leave, to every other member.
func AppendPresence(dst []byte, room, event string, m *Member) []byte {
	dst = append(dst, `{"type":"presence","room":`...)
	dst = AppendString(dst, room)
	dst = append(dst, `,"event":`...)
	dst = AppendString(dst, event)
	dst = append(dst, `,"member":`...)
	dst = AppendMember(dst, m)
	return append(dst, '}')
}

// AppendMember appends m as the JSON object encoding/json would write.
func AppendMember(dst []byte, m *Member) []byte {
	dst = append(dst, `{"id":`...)
	dst = AppendString(dst, m.ID)
	dst = append(dst, `,"nick":`...)
	dst = AppendString(dst, m.Nick)
	if m.Instance != "" {
		dst = append(dst, `,"instance":`...)
		dst = AppendString(dst, m.Instance)
	}
	if m.User != "" {
		dst = append(dst, `,"user":`...)
		dst = AppendString(dst, m.User)
	}
	return append(dst, '}')
}
