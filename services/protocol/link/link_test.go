package link

import (
	"strings"
	"testing"

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
