package link

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/wschat/wschat/services/protocol"
)

var fastSeeds = []string{
	`{"t":"msg","msg":{"room":"lobby","seq":42,"id":"c1","from":"ann","uid":"u-1","message":"hello there","ts":1764400000000}}`,
	`{"t":"pub","mid":"m-7","msg":{"room":"lobby","id":"c1","from":"ann","uid":"u-1","message":"hi","seq":0,"ts":0}}`,
	`{"t":"pub","mid":"m-8","sess":"3f9a","msg":{"room":"lobby","id":"c2","message":"hi"}}`,
	`{"t":"ack","room":"lobby","mid":"m-7","seq":18446744073709551615}`,
	`{"t":"msg","msg":{"room":"ü-room","seq":1,"message":"naïve ☃","ts":-5}}`,
	`{"t":"msg","msg":{"room":"r","seq":1,"message":"quote \" inside","ts":1}}`,
	`{"t":"msg","msg":{"room":"r","seq":01,"message":"x","ts":1}}`,
	`{"t":"msg","msg":{"room":"r","seq":1.5,"message":"x","ts":1}}`,
	`{"t":"ack","room":"r","mid":"m","seq":18446744073709551616}`,
	`{"t":"msg","msg":{"room":"r"},"msg":{"seq":2}}`,
	`{"t":"msg","Msg":{"room":"r"}}`,
	`{"t":"msg","msg":null}`,
	`{"t":"msg"} `,
	`{}`,
	"{\"t\":\"msg\",\"msg\":{\"message\":\"\xff\"}}",
	`{"t":"msg","msg":{"ts":-9223372036854775808}}`,
	`{"t":"subscribed","room":"r","seq":3,"first":1,"members":[]}`,
	`{"t":"presence","room":"lobby","member":{"id":"u1","nick":"ann","instance":"i1"},"event":"join"}`,
	`{"t":"leave","room":"lobby","member":{"id":"u1","nick":""}}`,
	`{"t":"join","room":"r","member":{"id":"u1"},"member":{"nick":"b"}}`,
	`{"t":"join","room":"r","member":null}`,
}

// The fast path is an optimisation, not a second decoder: whatever it
// accepts, encoding/json must accept and read the same way.
func FuzzDecodeFastMatchesEncodingJSON(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast Frame
		if !decodeFast(line, &fast) {
			return
		}
		var slow Frame
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", line, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast path read %+v (msg %+v), encoding/json %+v (msg %+v)", line, fast, fast.Msg, slow, slow.Msg)
		}
	})
}

// The frames the peers actually send take the fast path.
func TestDecodeFastTakesPeerFrames(t *testing.T) {
	m := protocol.Message{Room: "lobby", Seq: 9, ID: "c1", From: "ann", UID: "u1", User: "ann@example", Text: "hello", TS: 1764400000000}
	for _, f := range []Frame{
		{T: OpMsg, Msg: &m},
		{T: OpPub, MID: "m-1", Msg: &protocol.Message{Room: "lobby", ID: "c1", From: "ann", UID: "u1", Text: "hi"}},
		{T: OpPub, MID: "m-2", Sess: "3f9a0c1e", Msg: &protocol.Message{Room: "lobby", ID: "c2", From: "ann", UID: "u1", Text: "hi"}},
		{T: OpAck, Room: "lobby", MID: "m-1", Seq: 9},
		{T: OpJoin, Room: "lobby", Member: &protocol.Member{ID: "u1", Nick: "ann", Instance: "i1", User: "ann@example"}},
		{T: OpLeave, Room: "lobby", Member: &protocol.Member{ID: "u1"}},
		{T: OpPresence, Room: "lobby", Event: protocol.PresenceJoin, Member: &protocol.Member{ID: "u1", Nick: "ann", Instance: "i1"}},
	} {
		b, err := Append(nil, &f)
		if err != nil {
			t.Fatal(err)
		}
		var got Frame
		if !decodeFast(b[:len(b)-1], &got) {
			t.Fatalf("%s frame %s did not take the fast path", f.T, b)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("fast path read %+v, want %+v", got, f)
		}
	}
}

func BenchmarkSplitMsgFrames(b *testing.B) {
	m := protocol.Message{Room: "room-42", Seq: 123456, ID: "c-99", From: "alice", UID: "u-abcdef12", Text: "hello world, this is a chat message", TS: 1764400000000}
	var batch []byte
	for range 100 {
		var err error
		if batch, err = Append(batch, &Frame{T: OpMsg, Msg: &m}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(batch)))
	for b.Loop() {
		if err := Split(batch, func(*Frame) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/100, "ns/frame")
}

// The same frames through encoding/json alone, for comparison.
func BenchmarkSplitMsgFramesEncodingJSON(b *testing.B) {
	m := protocol.Message{Room: "room-42", Seq: 123456, ID: "c-99", From: "alice", UID: "u-abcdef12", Text: "hello world, this is a chat message", TS: 1764400000000}
	line, err := Append(nil, &Frame{T: OpMsg, Msg: &m})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var f Frame
		if err := json.Unmarshal(line, &f); err != nil {
			b.Fatal(err)
		}
	}
}

// The hand-written encoders read back as the frames Append encodes.
func TestHandEncodersMatchAppend(t *testing.T) {
	m := protocol.Message{Room: "r\"é\u2028", ID: "c1", From: "nick<", UID: "u1", Text: "hi\n\x01"}
	who := protocol.Member{ID: "u\"1", Nick: "ann\xff", Instance: "i<1>"}
	for _, tc := range []struct {
		hand  []byte
		frame Frame
	}{
		{AppendPub(nil, "m\"1", "", &m), Frame{T: OpPub, MID: "m\"1", Msg: &m}},
		{AppendPub(nil, "m2", "s\"é", &m), Frame{T: OpPub, MID: "m2", Sess: "s\"é", Msg: &m}},
		{AppendMember(nil, OpJoin, "r\u2028", "", &who), Frame{T: OpJoin, Room: "r\u2028", Member: &who}},
		{AppendMember(nil, OpLeave, "r", "", &protocol.Member{ID: "u1"}), Frame{T: OpLeave, Room: "r", Member: &protocol.Member{ID: "u1"}}},
		{AppendMember(nil, OpPresence, "r", protocol.PresenceLeave, &who), Frame{T: OpPresence, Room: "r", Event: protocol.PresenceLeave, Member: &who}},
	} {
		slow, err := Append(nil, &tc.frame)
		if err != nil {
			t.Fatal(err)
		}
		var got, want []*Frame
		collect := func(into *[]*Frame) func(*Frame) error {
			return func(f *Frame) error { *into = append(*into, f); return nil }
		}
		if err := Split(tc.hand, collect(&got)); err != nil {
			t.Fatalf("%s: %v", tc.hand, err)
		}
		if err := Split(slow, collect(&want)); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s read back as %+v, Append's %s as %+v", tc.hand, got[0], slow, want[0])
		}
	}
}

// Split over arbitrary bytes never panics; every frame it hands out has an
// op, is its own (changing the message's bytes afterwards changes no
// frame: both ends reuse the array), and reads back the same once
// re-encoded.
func FuzzSplit(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("{\"t\":\"ack\",\"mid\":\"m1\",\"seq\":1}\n\n{\"t\":\"ack\",\"mid\":\"m2\",\"seq\":2}\n"))
	f.Add([]byte(`{"t":"sync","rooms":[{"room":"r","since":3,"resume":true,"tail":50,"members":[{"id":"u1","nick":"ann"}]}],"more":true}`))
	f.Add([]byte(`{"t":"subscribed","room":"r","seq":3,"members":[{"id":"u1","nick":"ann","instance":"a"}],"msgs":[{"room":"r","seq":3,"message":"x","ts":1}],"settle":4999}`))
	f.Add([]byte("{\"t\":\"msg\"}\n{\"t\":"))
	f.Add([]byte("{\"t\":\"\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var frames []*Frame
		var encoded [][]byte
		// A bad frame is an error (not checked); those before it are handed out.
		_ = Split(data, func(fr *Frame) error {
			if fr.T == "" {
				t.Fatalf("%q: a frame without op", data)
			}
			b, err := json.Marshal(fr)
			if err != nil {
				t.Fatalf("%q: frame %+v does not encode: %v", data, fr, err)
			}
			frames, encoded = append(frames, fr), append(encoded, b)
			return nil
		})
		for i := range data {
			data[i] = 'x'
		}
		for i, fr := range frames {
			b, _ := json.Marshal(fr)
			if !bytes.Equal(b, encoded[i]) {
				t.Fatalf("frame %d changed with the message's bytes: %s, then %s", i, encoded[i], b)
			}
			again, aerr := Append(nil, fr)
			if aerr != nil {
				t.Fatal(aerr)
			}
			if serr := Split(again, func(fr2 *Frame) error {
				if b2, _ := json.Marshal(fr2); !bytes.Equal(b2, b) {
					t.Fatalf("frame %s read back as %s", b, b2)
				}
				return nil
			}); serr != nil {
				t.Fatalf("frame %s does not read back: %v", b, serr)
			}
		}
	})
}

// The relayer's msg, ack and spliced frames read back as Append's.
func TestRelayerFramesReadBack(t *testing.T) {
	m := protocol.Message{Room: "r\"é\u2028", Seq: 42, ID: "c1", From: "nick<", UID: "u1", Text: "hi\n\x01", TS: 1700000000000}
	js, _ := json.Marshal(&m)

	// The msg frame is built around the message's own JSON (AppendMessage,
	// not encoding/json, so not byte for byte): both read back as m.
	frame, inner := MsgFrame(&m)
	var frames []*Frame
	if err := Split(frame, func(f *Frame) error { frames = append(frames, f); return nil }); err != nil {
		t.Fatal(err)
	}
	var innerMsg protocol.Message
	if err := json.Unmarshal(inner, &innerMsg); err != nil {
		t.Fatal(err)
	}
	if len(frames) != 1 || frames[0].T != OpMsg || frames[0].Msg == nil || *frames[0].Msg != m || innerMsg != m ||
		!bytes.Contains(frame, inner) || frame[len(frame)-1] != '\n' {
		t.Fatalf("msg frame %s (inner %s) does not carry %+v", frame, inner, m)
	}
	var want []byte

	got := AppendAck(nil, m.Room, "mid\"1", 42)
	want, _ = Append(nil, &Frame{T: OpAck, Room: m.Room, MID: "mid\"1", Seq: 42})
	if !bytes.Equal(got, want) {
		t.Fatalf("ack frame\n got %s\nwant %s", got, want)
	}

	m2 := m
	m2.Seq = 43
	js2, _ := json.Marshal(&m2)
	for _, msgs := range [][][]byte{nil, {js}, {js, js2}} {
		f := Frame{T: OpSubscribed, Room: "r", Seq: 43, First: 1, Members: []protocol.Member{{ID: "a", Nick: "A", Instance: "i"}}}
		got, err := AppendWithMsgs(nil, &f, msgs)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range msgs {
			var mm protocol.Message
			json.Unmarshal(b, &mm)
			f.Msgs = append(f.Msgs, mm)
		}
		var decoded []*Frame
		if err := Split(got, func(f *Frame) error { decoded = append(decoded, f); return nil }); err != nil {
			t.Fatal(err)
		}
		wantJSON, _ := json.Marshal(&f)
		gotJSON, _ := json.Marshal(decoded[0])
		if len(decoded) != 1 || !bytes.Equal(gotJSON, wantJSON) || got[len(got)-1] != '\n' {
			t.Fatalf("spliced frame %s decodes to %s, want %s", got, gotJSON, wantJSON)
		}
	}
}
