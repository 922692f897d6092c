package containers

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

// peer is an extended client through nginx: every frame it gets is kept,
// in order, for the test to wait on, and so is how its connection ended.
type peer struct {
	name string
	c    *websocket.Conn
	nt   *dockerstack.Notifier
	w    protocol.Welcome // once welcomed (hello, helloPeer)

	mu     sync.Mutex
	frames [][]byte
	end    error // why reading ended (a websocket.CloseError when closed); nil while open
}

// dialPeer connects through nginx (query is the URL's, a token in it) and
// starts reading.
func dialPeer(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, name, query string) *peer {
	t.Helper()
	c, _, err := dockerstack.Dial(ctx, s.WSURL, "/ws"+query)
	if err != nil {
		msg := err.Error()
		if query != "" {
			msg = strings.ReplaceAll(msg, query, "?token=…")
		}
		t.Fatalf("%s: %s", name, msg)
	}
	p := &peer{name: name, c: c, nt: nt}
	t.Cleanup(func() { c.CloseNow() })
	go p.read(ctx)
	return p
}

// hello connects with a nick (name) and a session until the connection
// lands on a replica want accepts (nil: any).
func hello(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, name, session string, want func(instance string) bool) *peer {
	t.Helper()
	return helloUntil(ctx, t, nt, s, name, protocol.Inbound{Nick: name, Session: session}, want)
}

// helloPeer connects with token in hello (and nick, if not empty) until
// the connection lands on a replica want accepts (nil: any).
func helloPeer(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, name, token, nick string, want func(instance string) bool) *peer {
	t.Helper()
	return helloUntil(ctx, t, nt, s, name, protocol.Inbound{Nick: nick, Token: token}, want)
}

// helloUntil connects, says hello (in, its type set here) and waits for
// welcome, again (at most 60 tries) until the connection lands on a
// replica want accepts (nil: any). The peer returned is welcomed (w) and
// reading.
func helloUntil(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, name string, in protocol.Inbound, want func(instance string) bool) *peer {
	t.Helper()
	in.Type = protocol.TypeHello
	var seen []string
	for range 60 {
		p := dialPeer(ctx, t, nt, s, name, "")
		p.send(ctx, t, in)
		p.w = expect[protocol.Welcome](ctx, t, p, protocol.TypeWelcome, "welcome", nil)
		if want == nil || want(p.w.Instance) {
			return p
		}
		seen = append(seen, p.w.Instance)
		p.c.CloseNow()
	}
	t.Fatalf("%s: no connection reached a wanted replica in 60 tries: %v", name, seen)
	return nil
}

func (p *peer) read(ctx context.Context) {
	for {
		_, b, err := p.c.Read(ctx)
		p.mu.Lock()
		if err != nil {
			p.end = err
		} else {
			p.frames = append(p.frames, b)
		}
		p.mu.Unlock()
		p.nt.Bump()
		if err != nil {
			return
		}
	}
}

func (p *peer) send(ctx context.Context, t *testing.T, in protocol.Inbound) {
	t.Helper()
	if err := dockerstack.Send(ctx, p.c, in); err != nil {
		t.Fatalf("%s: send %s: %v", p.name, in.Type, err)
	}
}

// has tells whether p got a frame of type typ.
func (p *peer) has(typ string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.ContainsFunc(p.frames, func(b []byte) bool { return dockerstack.FrameType(b) == typ })
}

// chats counts the chat frames of room with message id id p received.
func (p *peer) chats(room, id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, b := range p.frames {
		var m protocol.Message
		if dockerstack.FrameType(b) == protocol.TypeChat && json.Unmarshal(b, &m) == nil && m.Room == room && m.ID == id {
			n++
		}
	}
	return n
}

func (p *peer) join(ctx context.Context, t *testing.T, room string) {
	t.Helper()
	id := "join-" + room
	p.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: id})
	expect(ctx, t, p, protocol.TypeJoined, "joined "+room, func(j protocol.Joined) bool { return j.ID == id })
}

// ping checks the connection is open and answered.
func (p *peer) ping(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	p.send(ctx, t, protocol.Inbound{Type: protocol.TypePing, ID: id})
	expect(ctx, t, p, protocol.TypePong, "pong "+id, func(f protocol.Pong) bool { return f.ID == id })
}

// expect waits (at most 30 s) for the first frame of p of type typ that
// match (nil: any) accepts once decoded. The connection ending first fails
// the test; either failure reports the error frames p got.
func expect[T any](ctx context.Context, t *testing.T, p *peer, typ, what string, match func(T) bool) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var found T
	var ok bool
	var end error
	var errs []string
	err := p.nt.WaitFor(ctx, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		errs = errs[:0]
		for _, b := range p.frames {
			switch dockerstack.FrameType(b) {
			case typ:
				var v T
				if json.Unmarshal(b, &v) == nil && (match == nil || match(v)) {
					found, ok = v, true
					return true
				}
			case protocol.TypeError:
				errs = append(errs, string(b))
			}
		}
		end = p.end
		return end != nil
	})
	switch {
	case ok:
		return found
	case end != nil:
		t.Fatalf("%s: %s: the connection ended first: %s (error frames: %v)", p.name, what, closeReason(end), errs)
	case err != nil:
		t.Fatalf("%s: %s: not within 30s (error frames: %v)", p.name, what, errs)
	}
	return found
}
