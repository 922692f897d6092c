package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/wschat/wschat/services/protocol/internal/jsonfast"
)

// Error codes carried by "error" frames. They are stable: clients switch on
// them, humans read Message.
const (
	CodeBadJSON       = "bad_json"       // frame is not a JSON object
	CodeUnknownType   = "unknown_type"   // type missing or not known
	CodeBadRequest    = "bad_request"    // a field is missing or malformed
	CodeBadRoom       = "bad_room"       // room name breaks the rules
	CodeBadNick       = "bad_nick"       // nickname breaks the rules
	CodeTooLarge      = "too_large"      // message text over the limit
	CodeRateLimited   = "rate_limited"   // too many frames per second
	CodeTooManyRooms  = "too_many_rooms" // room limit per connection reached
	CodeNotJoined     = "not_joined"     // the room was not joined
	CodeAlreadyJoined = "already_joined" // the room is joined already
	CodeUnavailable   = "unavailable"    // relay down and its queue full
	CodeHelloFirst    = "hello_first"    // hello after other frames
	CodeHistoryGap    = "history_gap"    // messages were lost to this member
	CodeInternal      = "internal"       // a server fault; retry
	CodeShuttingDown  = "shutting_down"  // the instance is stopping
	CodeAuthRequired  = "auth_required"  // a token is required first
	CodeTokenInvalid  = "token_invalid"  // token malformed, badly signed, not yet valid, or for another user
	CodeTokenExpired  = "token_expired"  // token expired
	CodeTokenWrong    = "token_audience" // token for another audience or from another issuer
	CodeForbidden     = "forbidden"      // the token does not allow this room operation
	CodeDisconnected  = "disconnected"   // disconnected by the server API
)

// Error is the "error" frame. It is also a Go error, so handlers can return
// it and the connection loop sends it to the client.
type Error struct {
	Type    string `json:"type"` // always TypeError
	Code    string `json:"code"`
	Message string `json:"message"`
	ID      string `json:"id,omitempty"`   // the offending client message id
	Room    string `json:"room,omitempty"` // the room concerned, if any
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an error frame.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Type: TypeError, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Rules are the limits Decode enforces on names and text. Zero fields mean
// the defaults below.
type Rules struct {
	MaxRoomBytes    int // default 64
	MaxNickBytes    int // default 32
	MaxMessageBytes int // default 4096
	MaxIDBytes      int // default 64
	MaxTokenBytes   int // default 8192
}

func (r Rules) withDefaults() Rules {
	if r.MaxRoomBytes <= 0 {
		r.MaxRoomBytes = 64
	}
	if r.MaxNickBytes <= 0 {
		r.MaxNickBytes = 32
	}
	if r.MaxMessageBytes <= 0 {
		r.MaxMessageBytes = 4096
	}
	if r.MaxIDBytes <= 0 {
		r.MaxIDBytes = 64
	}
	if r.MaxTokenBytes <= 0 {
		r.MaxTokenBytes = 8192
	}
	return r
}

// Decode parses and validates one client frame. On failure the returned
// *Error is ready to send; its ID is set when the frame got far enough to
// have one, so the client can tell which of its frames failed.
func Decode(data []byte, rules Rules) (Inbound, *Error) {
	rules = rules.withDefaults()
	var in Inbound
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return in, Errorf(CodeBadJSON, "frame must be a JSON object")
	}
	fast := decodeFast(data, &in)
	if !fast {
		in = Inbound{}
		if err := json.Unmarshal(data, &in); err != nil {
			in = Inbound{}
			return in, Errorf(CodeBadJSON, "invalid JSON: %v", err)
		}
	}
	bad := func(code, format string, args ...any) (Inbound, *Error) {
		e := Errorf(code, format, args...)
		if len(in.ID) <= rules.MaxIDBytes && utf8.ValidString(in.ID) {
			e.ID = in.ID
		}
		if len(in.Room) <= rules.MaxRoomBytes && utf8.ValidString(in.Room) {
			e.Room = in.Room
		}
		return in, e
	}
	// encoding/json turns invalid UTF-8 in strings into U+FFFD, which
	// would pass every check below as some other text than was sent. The
	// fast path reads only valid UTF-8, so only the fallback's input needs
	// the check. An id or room without U+FFFD was not altered: it is
	// echoed, so that the client can tell which frame failed.
	if !fast && !utf8.Valid(data) {
		for _, s := range []*string{&in.ID, &in.Room} {
			if strings.ContainsRune(*s, utf8.RuneError) {
				*s = ""
			}
		}
		return bad(CodeBadRequest, "frame must be valid UTF-8")
	}
	if len(in.ID) > rules.MaxIDBytes || !utf8.ValidString(in.ID) {
		return bad(CodeBadRequest, "id must be valid UTF-8 of at most %d bytes", rules.MaxIDBytes)
	}
	if in.Limit < 0 {
		return bad(CodeBadRequest, "limit must not be negative")
	}
	switch in.Type {
	case TypeHello:
		if err := ValidToken(in.Token, rules); err != nil {
			return bad(CodeBadRequest, "token %v", err)
		}
		// An empty nick is the server's to judge: a connection with a
		// token (here or in its URL) is named by it, any other needs one.
		if in.Nick != "" {
			if err := ValidName(in.Nick, rules.MaxNickBytes); err != nil {
				return bad(CodeBadNick, "nick %v", err)
			}
		}
		if len(in.Session) > rules.MaxIDBytes || !utf8.ValidString(in.Session) {
			return bad(CodeBadRequest, "session must be valid UTF-8 of at most %d bytes", rules.MaxIDBytes)
		}
	case TypeJoin, TypeJoinRoom, TypeLeave, TypeHistory:
		if len(in.Epoch) > rules.MaxIDBytes || !utf8.ValidString(in.Epoch) {
			return bad(CodeBadRequest, "epoch must be valid UTF-8 of at most %d bytes", rules.MaxIDBytes)
		}
		if err := ValidClientRoom(in.Room, rules.MaxRoomBytes); err != nil {
			return bad(CodeBadRoom, "room %v", err)
		}
	case TypeChat:
		if err := ValidClientRoom(in.Room, rules.MaxRoomBytes); err != nil {
			return bad(CodeBadRoom, "room %v", err)
		}
		if in.Message == "" {
			return bad(CodeBadRequest, "message must not be empty")
		}
		if len(in.Message) > rules.MaxMessageBytes {
			return bad(CodeTooLarge, "message is %d bytes; the limit is %d", len(in.Message), rules.MaxMessageBytes)
		}
		if !utf8.ValidString(in.Message) {
			return bad(CodeBadRequest, "message must be valid UTF-8")
		}
	case TypeRefresh:
		if in.Token == "" {
			return bad(CodeBadRequest, "refresh needs a token")
		}
		if err := ValidToken(in.Token, rules); err != nil {
			return bad(CodeBadRequest, "token %v", err)
		}
	case TypePing:
	case "":
		return bad(CodeUnknownType, "frame has no type")
	default:
		if len(in.Type) > 32 || !utf8.ValidString(in.Type) {
			return bad(CodeUnknownType, "unknown frame type")
		}
		return bad(CodeUnknownType, "unknown frame type %q", in.Type)
	}
	return in, nil
}

// ReservedRoomPrefix starts the names of the rooms the servers use among
// themselves (ws-user's control room): no client may use them.
const ReservedRoomPrefix = "$wschat/"

// ValidClientRoom checks a room name a client gives: ValidName, and not
// one of the servers' own.
func ValidClientRoom(s string, max int) error {
	if err := ValidName(s, max); err != nil {
		return err
	}
	if strings.HasPrefix(s, ReservedRoomPrefix) {
		return fmt.Errorf("must not start with %q (the server's own rooms)", ReservedRoomPrefix)
	}
	return nil
}

// ValidToken checks a token's size and bytes, wherever it came from (a
// frame, an upgrade's URL); its signature and claims are the server's to
// check. The error completes a sentence starting with "token".
func ValidToken(s string, rules Rules) error {
	rules = rules.withDefaults()
	if len(s) > rules.MaxTokenBytes {
		return fmt.Errorf("must be at most %d bytes, got %d", rules.MaxTokenBytes, len(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("must be printable ASCII")
		}
	}
	return nil
}

// ValidName checks a room name or nickname: 1 to max bytes of UTF-8, no
// control or format characters, no leading or trailing space. The error
// completes a sentence starting with the field's name.
func ValidName(s string, max int) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(s) > max {
		return fmt.Errorf("must be at most %d bytes, got %d", max, len(s))
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("must be valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("must not contain control characters (found %U)", r)
		}
	}
	first, _ := utf8.DecodeRuneInString(s)
	last, _ := utf8.DecodeLastRuneInString(s)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return fmt.Errorf("must not start or end with white space")
	}
	return nil
}

// decodeFast reads the frames clients commonly send (compact JSON, no
// escapes, known keys) without encoding/json's reflection; on anything else
// it returns false and encoding/json decides, so Decode stays one decoder
// with one behaviour. FuzzDecodeFastMatchesEncodingJSON holds it to that.
func decodeFast(data []byte, in *Inbound) bool {
	p := jsonfast.Parser{S: string(data)}
	ok := p.Object(func(key string) (ok bool) {
		switch key {
		case "type":
			in.Type, ok = p.Str()
		case "id":
			in.ID, ok = p.Str()
		case "room":
			in.Room, ok = p.Str()
		case "message":
			in.Message, ok = p.Str()
		case "nick":
			in.Nick, ok = p.Str()
		case "session":
			in.Session, ok = p.Str()
		case "token":
			in.Token, ok = p.Str()
		case "epoch":
			in.Epoch, ok = p.Str()
		case "since":
			var v uint64
			if v, ok = p.Uint(); ok {
				in.Since = &v
			}
		case "before":
			in.Before, ok = p.Uint()
		case "limit":
			var v int64
			v, ok = p.Int()
			in.Limit = int(v)
			ok = ok && int64(in.Limit) == v // int is narrower on 32-bit platforms
		}
		return ok
	})
	return ok && p.Done()
}
