package link

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/wschat/wschat/services/protocol"
)

func TestAppendSplitRoundTrip(t *testing.T) {
	var buf []byte
	frames := []*Frame{
		{T: OpSync, Rooms: []RoomState{{Room: "r", Since: 4, Tail: 50, Members: []protocol.Member{{ID: "u1", Nick: "a"}}}}},
		{T: OpPub, MID: "m1", Msg: &protocol.Message{Room: "r", Text: "line\nbreak"}},
		{T: OpFetch, Req: 7, Room: "r", Before: 9, Limit: 3},
	}
	for _, f := range frames {
		var err error
		if buf, err = Append(buf, f); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(string(buf), "\n"); n != len(frames) {
		t.Fatalf("%d newlines for %d frames: a frame contains a raw newline", n, len(frames))
	}
	var got []*Frame
	if err := Split(buf, func(f *Frame) error { got = append(got, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[1].Msg.Text != "line\nbreak" || got[0].Rooms[0].Members[0].Nick != "a" || got[2].Req != 7 {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestSplitRejectsGarbage(t *testing.T) {
	for _, in := range []string{"{", `{"room":"r"}`, "[]"} {
		if err := Split([]byte(in), func(*Frame) error { return nil }); err == nil {
			t.Errorf("%q: want an error", in)
		}
	}
	if err := Split([]byte("\n\n"), func(*Frame) error { t.Fatal("no frame expected"); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestReadMessageReusesItsBuffer(t *testing.T) {
	var buf []byte
	for _, msg := range []string{strings.Repeat("a", 10000), "bc", strings.Repeat("d", 300)} {
		// Short reads must not lose a byte.
		got, err := ReadMessage(iotest.HalfReader(strings.NewReader(msg)), buf)
		if err != nil || string(got) != msg {
			t.Fatalf("read %d bytes, err %v; want the %d-byte message", len(got), err, len(msg))
		}
		if buf != nil && &got[:1][0] != &buf[:1][0] {
			t.Fatalf("a %d-byte message took a new array; the %d-byte one was there", len(msg), cap(buf))
		}
		buf = got
	}
	// A large message's array is not kept for the next.
	big, err := ReadMessage(strings.NewReader(strings.Repeat("b", 2<<20)), buf)
	if err != nil || len(big) != 2<<20 {
		t.Fatalf("read %d bytes, err %v; want 2 MiB", len(big), err)
	}
	if next, _ := ReadMessage(strings.NewReader("c"), big); cap(next) > 1<<20 {
		t.Fatalf("a %d-byte array was kept after a large message", cap(next))
	}
	boom := errors.New("boom")
	if _, err := ReadMessage(iotest.DataErrReader(iotest.ErrReader(boom)), buf); !errors.Is(err, boom) {
		t.Fatalf("err %v, want the reader's", err)
	}
}

func BenchmarkReadMessage(b *testing.B) {
	msg := bytes.Repeat([]byte(`{"t":"msg","msg":{"room":"r","seq":1,"message":"hello"}}`+"\n"), 200)
	b.Run("ReadMessage", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf, _ = ReadMessage(bytes.NewReader(msg), buf)
		}
	})
	b.Run("io.ReadAll", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = io.ReadAll(bytes.NewReader(msg))
		}
	})
}

// Both ends read the next message into the array the last one's frames
// came from: no frame may point into it, on either decoding path.
func TestSplitFramesOutliveTheirBytes(t *testing.T) {
	want := []Frame{
		{T: OpMsg, Msg: &protocol.Message{Room: "lobby", Seq: 9, From: "ann", UID: "u1", Text: "hello", TS: 1}}, // fast path
		{T: OpMsg, Msg: &protocol.Message{Room: "lobby", Seq: 10, Text: "line\nbreak"}},                         // encoding/json
		{T: OpJoin, Room: "lobby", Member: &protocol.Member{ID: "u1", Nick: "ann", Instance: "i1"}},
		{T: OpSync, Rooms: []RoomState{{Room: "r", Members: []protocol.Member{{ID: "u2", Nick: "bo"}}}}},
	}
	var data []byte
	for i := range want {
		var err error
		if data, err = Append(data, &want[i]); err != nil {
			t.Fatal(err)
		}
	}
	var got []Frame
	if err := Split(data, func(f *Frame) error { got = append(got, *f); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range data {
		data[i] = 'x'
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after the message's bytes were overwritten the frames read\n%+v\nwant\n%+v", got, want)
	}
}

// A backlog goes out in messages of whole frames, each at most MaxMessage
// unless one frame alone is larger, and together they are the backlog.
func TestNextMessageCutsAtFrameBoundaries(t *testing.T) {
	frame := func(n int) []byte { return append(bytes.Repeat([]byte{'x'}, n-1), '\n') }
	for _, tc := range []struct {
		name   string
		frames []int
		want   []int // message lengths
	}{
		{"small", []int{10, 20}, []int{30}},
		{"exactly the bound", []int{MaxMessage / 2, MaxMessage / 2}, []int{MaxMessage}},
		{"a backlog", []int{MaxMessage / 2, MaxMessage / 2, 1}, []int{MaxMessage, 1}},
		{"cut before the frame that crosses", []int{100, MaxMessage, 100}, []int{100, MaxMessage, 100}},
		{"one frame over the bound alone", []int{MaxMessage + 5, 7}, []int{MaxMessage + 5, 7}},
	} {
		var data []byte
		for _, n := range tc.frames {
			data = append(data, frame(n)...)
		}
		var got []int
		for rest := data; len(rest) > 0; {
			n := NextMessage(rest)
			if n <= 0 || rest[n-1] != '\n' {
				t.Fatalf("%s: a message of %d bytes that does not end a frame", tc.name, n)
			}
			got = append(got, n)
			rest = rest[n:]
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: messages %v, want %v", tc.name, got, tc.want)
		}
	}
}
