package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecode(t *testing.T) {
	cases := []struct {
		in   string
		code string // "" means valid
		id   string
	}{
		{`{"type":"join-room","room":"Room 1"}`, "", ""},
		{`{"type":"chat","room":"Room 1","message":"hi"}`, "", ""},
		{`{"type":"hello","nick":"alice"}`, "", ""},
		{`{"type":"hello","nick":"alice","session":"` + strings.Repeat("s", 64) + `"}`, "", ""},
		{`{"type":"hello","nick":"alice","session":"` + strings.Repeat("s", 65) + `","id":"h"}`, CodeBadRequest, "h"},
		{`{"type":"join","room":"r","since":0,"id":"j"}`, "", ""},
		{`  {"type":"ping"}  `, "", ""},
		{``, CodeBadJSON, ""},
		{`null`, CodeBadJSON, ""},
		{`"chat"`, CodeBadJSON, ""},
		{`{"type":"chat"`, CodeBadJSON, ""},
		{`{"type":5}`, CodeBadJSON, ""},
		{`{}`, CodeUnknownType, ""},
		{`{"type":"nope","id":"q"}`, CodeUnknownType, "q"},
		{`{"type":"hello","nick":""}`, "", ""}, // the server refuses it without a token
		{`{"type":"hello","nick":"` + strings.Repeat("n", 33) + `"}`, CodeBadNick, ""},
		{`{"type":"join","room":"tab\there","id":"t"}`, CodeBadRoom, "t"},
		{`{"type":"join","room":"zero\u200bwidth"}`, CodeBadRoom, ""},
		{`{"type":"join","room":"trailing "}`, CodeBadRoom, ""},
		{`{"type":"chat","room":"r"}`, CodeBadRequest, ""},
		{`{"type":"chat","room":"r","message":"` + strings.Repeat("m", 4097) + `"}`, CodeTooLarge, ""},
		{`{"type":"chat","room":"r","message":"x","id":"` + strings.Repeat("i", 65) + `"}`, CodeBadRequest, ""},
		{`{"type":"history","room":"r","limit":-1}`, CodeBadRequest, ""},
		// A token names the user: hello needs no nick with one, but a
		// given nick still follows the rules.
		{`{"type":"hello","token":"eyJ.a-b_c.d"}`, "", ""},
		{`{"type":"hello","nick":"","token":"eyJ.a.b"}`, "", ""},
		{`{"type":"hello","nick":"tab\there","token":"eyJ.a.b"}`, CodeBadNick, ""},
		{`{"type":"hello","token":"` + strings.Repeat("t", 8193) + `","id":"h"}`, CodeBadRequest, "h"},
		{`{"type":"hello","token":"has space"}`, CodeBadRequest, ""},
		{`{"type":"hello","token":"caf\u00e9"}`, CodeBadRequest, ""},
		{`{"type":"refresh","token":"eyJ.a.b","id":"r"}`, "", ""},
		{`{"type":"refresh","id":"r"}`, CodeBadRequest, "r"},
		{`{"type":"join","room":"$wschat/control"}`, CodeBadRoom, ""},
		{`{"type":"chat","room":"$wschat/control","message":"x"}`, CodeBadRoom, ""},
		{`{"type":"join","room":"$wschat"}`, "", ""},
	}
	for _, c := range cases {
		_, err := Decode([]byte(c.in), Rules{})
		switch {
		case c.code == "" && err != nil:
			t.Errorf("%s: unexpected %v", c.in, err)
		case c.code != "" && (err == nil || err.Code != c.code):
			t.Errorf("%s: want %s, got %v", c.in, c.code, err)
		case err != nil && (err.ID != c.id || err.Type != TypeError):
			t.Errorf("%s: error %+v should carry id %q", c.in, err, c.id)
		}
	}
}

// encoding/json would read invalid UTF-8 as U+FFFD, turning bytes the
// client sent into other text: every field, known or not, is refused
// instead, whichever decoding path the frame takes.
func TestDecodeRefusesInvalidUTF8(t *testing.T) {
	cases := []struct{ in, id, room string }{
		{"{\"type\":\"chat\",\"room\":\"r\",\"message\":\"caf\xe9\",\"id\":\"c1\"}", "c1", "r"},
		{"{\"type\":\"join\",\"room\":\"R\xff\",\"id\":\"j1\"}", "j1", ""},
		{"{\"type\":\"join-room\",\"room\":\"\xc3\"}", "", ""},
		{"{\"type\":\"hello\",\"nick\":\"ann\xed\xa0\x80\"}", "", ""}, // an encoded surrogate
		{"{\"type\":\"ping\",\"id\":\"p\xfe\"}", "", ""},
		{"{\"type\":\"ping\",\"extra\":\"\xff\",\"id\":\"p2\"}", "p2", ""},
		{"{\"type\":\"chat\",\"room\":\"r\",\"message\":\"say \\\"hi\\\" \xff\"}", "", "r"}, // escapes: not the fast path either
	}
	for _, c := range cases {
		_, err := Decode([]byte(c.in), Rules{})
		if err == nil || err.Code != CodeBadRequest {
			t.Errorf("%q: want %s, got %v", c.in, CodeBadRequest, err)
			continue
		}
		if err.ID != c.id || err.Room != c.room {
			t.Errorf("%q: error names id %q room %q, want %q %q", c.in, err.ID, err.Room, c.id, c.room)
		}
	}
	// Valid UTF-8, escaped or not, and U+FFFD itself are text like any other.
	for _, s := range []string{
		`{"type":"chat","room":"Café","message":"naïve ☃ \ufffd","id":"ok"}`,
		`{"type":"chat","room":"Caf\u00e9","message":"\u2603 \"quoted\""}`,
		`{"type":"join-room","room":"Room 1"}`,
	} {
		if _, err := Decode([]byte(s), Rules{}); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}

func TestDecodeAcceptsUnicodeNames(t *testing.T) {
	in, err := Decode([]byte(`{"type":"join","room":"Café ☕ 1"}`), Rules{})
	if err != nil || in.Room != "Café ☕ 1" {
		t.Fatalf("got %+v, %v", in, err)
	}
}

func TestAppendChatMatchesJSON(t *testing.T) {
	msgs := []Message{
		{Room: "Room 1", Seq: 1, Text: "Hi there", TS: 1700000000000},
		{Room: "r", Seq: 18446744073709551615, ID: "c\"1", From: "ålice", UID: "u1", User: "auth0|ålice\"", Text: "<script>\n\t\\\u2028\u2029\x01\x7f é", TS: -1},
		{Room: "bad\xffutf8", Seq: 2, Text: "\xc3", TS: 0},
	}
	for _, m := range msgs {
		b := AppendChat(nil, &m)
		var got struct {
			Type string `json:"type"`
			Message
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q is not JSON: %v", b, err)
		}
		want := m
		want.Room = strings.ToValidUTF8(m.Room, "\uFFFD")
		want.Text = strings.ToValidUTF8(m.Text, "\uFFFD")
		if got.Type != TypeChat || got.Message != want {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
		var alone Message
		if err := json.Unmarshal(AppendMessage(nil, &m), &alone); err != nil || alone != want {
			t.Fatalf("AppendMessage round trip: got %+v (%v), want %+v", alone, err, want)
		}
	}
}

func TestAppendAckMatchesJSON(t *testing.T) {
	for _, a := range []Ack{
		{Type: TypeAck, ID: "c\"1", Room: "lobby", Seq: 7},
		{Type: TypeAck, Room: "<r>", Seq: 18446744073709551615},
	} {
		var got, want Ack
		if err := json.Unmarshal(AppendAck(nil, a.ID, a.Room, a.Seq), &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(Encode(a), &want); err != nil {
			t.Fatal(err)
		}
		if got != want || got != a {
			t.Fatalf("AppendAck read back as %+v, encoding/json as %+v", got, want)
		}
	}
}

func TestAppendPongMatchesJSON(t *testing.T) {
	for _, id := range []string{"", "p\"1\u2028"} {
		var got, want Pong
		if err := json.Unmarshal(AppendPong(nil, id), &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(Encode(Pong{Type: TypePong, ID: id}), &want); err != nil {
			t.Fatal(err)
		}
		if got != want || got.Type != TypePong || got.ID != id {
			t.Fatalf("AppendPong(%q) read back as %+v, encoding/json as %+v", id, got, want)
		}
	}
}

// The hand-written join answers read back as what encoding/json writes.
func TestAppendJoinedAndPresenceMatchJSON(t *testing.T) {
	yes, no := true, false
	members := []Member{{ID: "u1", Nick: "ålice", Instance: "i1", User: "sub-1"}, {ID: "u\"2", Nick: "<bob>\n"}}
	history := []Message{{Room: "r", Seq: 1, Text: "hi", TS: 5, UID: "u1", From: "ålice", ID: "c1"}, {Room: "r", Seq: 2, Text: "\xff", TS: 6}}
	for _, j := range []Joined{
		{Type: TypeJoined, Room: "r", Seq: 0},
		{Type: TypeJoined, ID: "j1", Room: "r\u2028", Seq: 2, Members: members, History: history, Recovered: &yes},
		{Type: TypeJoined, Room: "r", Seq: 18446744073709551615, Members: members[:1], History: []Message{}, Recovered: &no},
	} {
		var got, want any
		if err := json.Unmarshal(AppendJoined(nil, &j), &got); err != nil {
			t.Fatalf("%q is not JSON: %v", AppendJoined(nil, &j), err)
		}
		if err := json.Unmarshal(Encode(j), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("AppendJoined: %v, encoding/json: %v", got, want)
		}
	}
	for _, m := range members {
		var got, want any
		if err := json.Unmarshal(AppendPresence(nil, "r\x01", PresenceLeave, &m), &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(Encode(Presence{Type: TypePresence, Room: "r\x01", Event: PresenceLeave, Member: m}), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("AppendPresence: %v, encoding/json: %v", got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "\"\\\n", "\u2028", "\xff\xfe", "é☕"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var got string
		if err := json.Unmarshal(AppendString(nil, s), &got); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if want := strings.ToValidUTF8(s, "\uFFFD"); utf8.ValidString(s) && got != want {
			t.Fatalf("%q decoded as %q", s, got)
		}
	})
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"chat","room":"r","message":"m","id":"1"}`))
	f.Add([]byte(`{"type":"join","room":"r","since":3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := Decode(data, Rules{})
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		if in.Type == "" {
			t.Fatalf("accepted a frame without type: %q", data)
		}
		if !utf8.Valid(data) {
			t.Fatalf("accepted invalid UTF-8: %q read as %+v", data, in)
		}
	})
}

func BenchmarkAppendChat(b *testing.B) {
	m := Message{Room: "Room 1", Seq: 123456, ID: "c-42", From: "alice", UID: "u0a1b2c3d.1f", Text: strings.Repeat("hello world ", 8), TS: 1764400000000}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendChat(buf[:0], &m)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkEncodeChatWithEncodingJSON(b *testing.B) {
	m := struct {
		Type string `json:"type"`
		Message
	}{TypeChat, Message{Room: "Room 1", Seq: 123456, ID: "c-42", From: "alice", UID: "u0a1b2c3d.1f", Text: strings.Repeat("hello world ", 8), TS: 1764400000000}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(&m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeChat(b *testing.B) {
	data := []byte(`{"type":"chat","room":"Room 1","message":"hello world hello world","id":"c-42"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data, Rules{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A client's session reaches the hub; a session is opaque, so any valid
// UTF-8 is one (here an escaped quote takes the slow path).
func TestDecodeSession(t *testing.T) {
	for _, s := range []string{`"3f9a0c1e"`, `"a\"b"`} {
		in, err := Decode([]byte(`{"type":"hello","nick":"ann","session":`+s+`}`), Rules{})
		var want string
		json.Unmarshal([]byte(s), &want)
		if err != nil || in.Session != want {
			t.Fatalf("session %s: got %+v, %v", s, in, err)
		}
	}
	in, err := Decode([]byte(`{"type":"hello","nick":"ann","session":"`+strings.Repeat("é", 33)+`"}`), Rules{})
	if err == nil || err.Code != CodeBadRequest || !strings.Contains(err.Message, "session") {
		t.Fatalf("a 66-byte session: got %+v, %v", in, err)
	}
}

func TestDecodeEpoch(t *testing.T) {
	for _, s := range []string{`"mj3k2x0a"`, `"a\"b"`} {
		in, err := Decode([]byte(`{"type":"join","room":"r","since":4,"epoch":`+s+`}`), Rules{})
		var want string
		json.Unmarshal([]byte(s), &want)
		if err != nil || in.Epoch != want || in.Since == nil || *in.Since != 4 {
			t.Fatalf("epoch %s: got %+v, %v", s, in, err)
		}
	}
	in, err := Decode([]byte(`{"type":"join","room":"r","since":4,"epoch":"`+strings.Repeat("é", 33)+`"}`), Rules{})
	if err == nil || err.Code != CodeBadRequest || !strings.Contains(err.Message, "epoch") {
		t.Fatalf("a 66-byte epoch: got %+v, %v", in, err)
	}
}
