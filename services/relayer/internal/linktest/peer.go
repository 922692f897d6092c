// Package linktest is a test's end of a relay link, for the tests of
// whatever carries the link: in memory (package sequencer) or over a
// WebSocket (package linkserver).
package linktest

import (
	"bytes"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// WaitFor bounds every wait of a test for the relayer.
const WaitFor = 5 * time.Second

// Peer is an instance's end of a link in a test. Write carries one link
// message to the relayer; the carrier puts what the relayer sends, decoded,
// on Frames.
type Peer struct {
	T      testing.TB
	Inst   string
	Frames chan *link.Frame
	Write  func(msg []byte)
}

// NewPeer returns a Peer of instance inst writing with write.
func NewPeer(t testing.TB, inst string, write func(msg []byte)) *Peer {
	return &Peer{T: t, Inst: inst, Frames: make(chan *link.Frame, 1<<16), Write: write}
}

// Send writes frames as one link message.
func (p *Peer) Send(frames ...*link.Frame) {
	p.T.Helper()
	var b []byte
	for _, f := range frames {
		var err error
		if b, err = link.Append(b, f); err != nil {
			p.T.Fatal(err)
		}
	}
	p.Write(b)
}

// Next returns the next frame, failing the test after WaitFor.
func (p *Peer) Next() *link.Frame {
	p.T.Helper()
	select {
	case f := <-p.Frames:
		return f
	case <-time.After(WaitFor):
		p.T.Fatalf("%s: no frame within %s", p.Inst, WaitFor)
		return nil
	}
}

// Expect returns the next frame and checks its op.
func (p *Peer) Expect(op string) *link.Frame {
	p.T.Helper()
	f := p.Next()
	if f.T != op {
		p.T.Fatalf("%s: got %s frame %+v, want %s", p.Inst, f.T, f, op)
	}
	return f
}

// Sync sends the first frame and consumes the subscribed answers.
func (p *Peer) Sync(rooms ...link.RoomState) []*link.Frame {
	p.T.Helper()
	if rooms == nil {
		rooms = []link.RoomState{}
	}
	p.Send(&link.Frame{T: link.OpSync, Rooms: rooms})
	var out []*link.Frame
	for range rooms {
		out = append(out, p.Expect(link.OpSubscribed))
	}
	return out
}

// Pub publishes text to room under mid.
func (p *Peer) Pub(mid, room, text string) {
	p.T.Helper()
	p.Send(PubFrame(mid, room, text))
}

// PubFrame is a pub of text to room under mid, from "nick".
func PubFrame(mid, room, text string) *link.Frame {
	return &link.Frame{T: link.OpPub, MID: mid, Msg: &protocol.Message{Room: room, Text: text, From: "nick", UID: "u-" + mid}}
}

// Pubs returns n pubs to room, mids prefix0 to prefix(n-1).
func Pubs(prefix, room string, n int) []*link.Frame {
	frames := make([]*link.Frame, n)
	for i := range frames {
		frames[i] = PubFrame(prefix+strconv.Itoa(i), room, "x")
	}
	return frames
}

// Received counts the frames of op that have arrived and wait on Frames,
// taking every waiting frame.
func (p *Peer) Received(op string) int {
	n := 0
	for len(p.Frames) > 0 {
		if f := <-p.Frames; f.T == op {
			n++
		}
	}
	return n
}

// Logs collects a logger's output written from many goroutines.
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
