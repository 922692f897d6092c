package load

import (
	"encoding/json"
	"testing"
)

func TestCentrifugoFrames(t *testing.T) {
	text := appendLoadText(nil, 3, 7, 1764400000000000000)
	var cmd struct {
		ID      int `json:"id"`
		Publish struct {
			Channel string `json:"channel"`
			Data    struct {
				Message string `json:"message"`
			} `json:"data"`
		} `json:"publish"`
	}
	b := appendCentrifugoPublish(nil, "room-1", text, 7)
	if err := json.Unmarshal(b, &cmd); err != nil || cmd.ID != 17 || cmd.Publish.Channel != "room-1" || cmd.Publish.Data.Message != string(text) {
		t.Fatalf("publish command %s: %+v %v", b, cmd, err)
	}
	push := []byte(`{"push":{"channel":"room-1","pub":{"data":{"message":"` + string(text) + `"},"info":{"client":"x"},"offset":4}}}`)
	var f serverFrame
	if !scanCentrifugoPush(push, &f) || string(f.room) != "room-1" || string(f.message) != string(text) || string(f.typ) != "chat" {
		t.Fatalf("push %s read as room %q message %q type %q", push, f.room, f.message, f.typ)
	}
	if pub, ctr, _, ok := parseLoadText(f.message); !ok || pub != 3 || ctr != 7 {
		t.Fatalf("the pushed text reads as publisher %d counter %d (%v)", pub, ctr, ok)
	}
	if scanCentrifugoPush([]byte(`{"push":{"channel":"room-1"}}`), &f) {
		t.Fatal("a push without a publication was read")
	}
}
