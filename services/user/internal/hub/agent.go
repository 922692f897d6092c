package hub

// The server API's way into the rooms: an in-process extended client, and
// the control room through which instances tell each other to disconnect
// a user.

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
)

// ControlRoom is the room instances tell each other through. It is a room
// like any other on the bus, so a command reaches every instance in order
// on every backend, and one cut off meanwhile once it is back; clients
// cannot name it (protocol.ReservedRoomPrefix).
const ControlRoom = protocol.ReservedRoomPrefix + "control"

// command is a control room message's text.
type command struct {
	Op   string `json:"op"` // "disconnect"
	User string `json:"user"`
	At   int64  `json:"at"` // Unix milliseconds: tokens issued until then
}

// agentSession is every Agent's session: the server API's chats are
// de-duplicated by their ids among themselves. A client that chose the
// same session could only make its own chats look like re-sends of the
// API's (answered with their seq, delivered to no one), as with any
// session it shares.
const agentSession = "$api"

// Agent is an in-process extended client of the hub, for the server API.
// It speaks the protocol's frames and is answered like a connection, but
// joins rooms unseen: it is no member in anyone's presence. Its messages
// carry the user "$system" and the name it was made with. Do may be called
// from several goroutines; Close ends it.
type Agent struct {
	h *Hub
	c *client
	p *agentPeer
}

// inProcess is what the hub's in-process Peers share: no socket, so
// nothing to drain, bound, catch up or close, and no lazy frames.
type inProcess struct{ id string }

func (p *inProcess) ID() string                       { return p.id }
func (p *inProcess) SendLazy([]byte)                  {}
func (p *inProcess) Drained() bool                    { return true }
func (p *inProcess) QueueLimits() (frames, bytes int) { return 1 << 20, 64 << 20 }
func (p *inProcess) SetCatchingUp(bool)               {}
func (p *inProcess) Closing() bool                    { return false }
func (p *inProcess) Close(int, string)                {}
func (p *inProcess) CloseAfter(int, string)           {}

// agentPeer is an Agent's Peer: it keeps the answers (frames with an id)
// for Do, and drops the rooms' traffic.
type agentPeer struct {
	inProcess
	mu      sync.Mutex
	waiters map[string]chan []byte
}

func (p *agentPeer) Send(b []byte) {
	var f struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(b, &f) == nil {
		p.answer(f.ID, b)
	}
}
func (p *agentPeer) SendLive([]byte) bool        { return true }
func (p *agentPeer) SendError(e *protocol.Error) { p.answer(e.ID, protocol.Encode(e)) }

// answer hands frame b, the answer to the frame with id, to the Do that
// waits for it, if any.
func (p *agentPeer) answer(id string, b []byte) {
	if id == "" {
		return
	}
	p.mu.Lock()
	ch := p.waiters[id]
	delete(p.waiters, id)
	p.mu.Unlock()
	if ch != nil {
		select {
		case ch <- b:
		default: // a second answer to one frame: Do took the first
		}
	}
}

// NewAgent returns an agent whose messages are from name.
func (h *Hub) NewAgent(name string) *Agent {
	p := &agentPeer{inProcess: inProcess{id: h.newID("a")}, waiters: map[string]chan []byte{}}
	c := h.open(p)
	c.extended, c.observer, c.session = true, true, agentSession
	c.ident = &auth.Identity{User: systemUser, Name: name}
	c.nick, c.member.Nick, c.member.User = name, name, systemUser
	return &Agent{h: h, c: c, p: p}
}

// Do sends in and returns the answer's frame: joined, left, ack, history,
// or an error frame, which is returned as the error (a *protocol.Error).
// The answer is matched by in.ID, made here when empty; a chat's ID is
// also its key for de-duplication, as a client's with a session: every
// agent has the same, so a chat sent again with the same ID and room is
// acknowledged with its first seq and not delivered twice.
func (a *Agent) Do(ctx context.Context, in protocol.Inbound) ([]byte, error) {
	if in.ID == "" {
		in.ID = a.h.newID("q")
	}
	ch := make(chan []byte, 1)
	a.p.mu.Lock()
	a.p.waiters[in.ID] = ch
	a.p.mu.Unlock()
	defer func() {
		a.p.mu.Lock()
		delete(a.p.waiters, in.ID)
		a.p.mu.Unlock()
	}()
	a.c.Frame(in, false)
	select {
	case b := <-ch:
		var e protocol.Error
		if json.Unmarshal(b, &e) == nil && e.Type == protocol.TypeError {
			return nil, &e
		}
		return b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s %q: no answer: %w", in.Type, in.Room, ctx.Err())
	}
}

// Close leaves every room the agent joined.
func (a *Agent) Close() { a.c.Closed() }

// Disconnect closes every connection of user on every instance whose
// token was issued until now, through the control room, and returns once
// the bus has it.
func (h *Hub) Disconnect(ctx context.Context, user string) error {
	a := h.NewAgent("control")
	defer a.Close()
	if _, err := a.Do(ctx, protocol.Inbound{Type: protocol.TypeJoin, Room: ControlRoom, Limit: 1}); err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	text, _ := json.Marshal(command{Op: "disconnect", User: user, At: time.Now().UnixMilli()})
	if _, err := a.Do(ctx, protocol.Inbound{Type: protocol.TypeChat, Room: ControlRoom, Message: string(text)}); err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	return nil
}

// ctlPeer is the instance's own member of the control room: it hands the
// room's kept messages, once its join completes, and then each message to
// the goroutine of RunControl.
type ctlPeer struct {
	inProcess
	mu     sync.Mutex
	kept   []protocol.Message // the room's tail at the join, not replayed yet
	joined bool               // kept was handed over
	msgs   [][]byte
	wake   chan struct{}
}

// Kept implements keptPeer.
func (p *ctlPeer) Kept(msgs []protocol.Message) {
	p.mu.Lock()
	p.kept, p.joined = append(p.kept, msgs...), true
	p.mu.Unlock()
	p.kick()
}

func (p *ctlPeer) SendLive(b []byte) bool {
	p.mu.Lock()
	p.msgs = append(p.msgs, b)
	p.mu.Unlock()
	p.kick()
	return true
}

func (p *ctlPeer) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}
func (p *ctlPeer) Send([]byte)               {}
func (p *ctlPeer) SendError(*protocol.Error) {}

// RunControl joins the control room and carries out its commands until
// ctx ends. The commands the room still keeps from before (its last
// HistoryLimit messages, keepFor) are carried out first, so that an
// instance started after a disconnect refuses the revoked tokens too;
// ControlReady reports when they have been.
func (h *Hub) RunControl(ctx context.Context) {
	p := &ctlPeer{inProcess: inProcess{id: h.newID("c")}, wake: make(chan struct{}, 1)}
	c := h.open(p)
	c.observer = true
	h.join(c, protocol.Inbound{Type: protocol.TypeJoin, Room: ControlRoom})
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		p.mu.Lock()
		kept, joined, msgs := p.kept, p.joined, p.msgs
		p.kept, p.msgs = nil, nil
		p.mu.Unlock()
		for i := range kept {
			h.control(&kept[i], true)
		}
		if joined {
			h.controlReady.Store(true)
		}
		for _, b := range msgs {
			var m protocol.Message
			if json.Unmarshal(b, &m) != nil {
				h.log.Warn("control room: a frame that is no message")
				continue
			}
			h.control(&m, false)
		}
	}
}

// ControlReady reports whether tokens may be admitted: the control room's
// kept commands have been carried out (RunControl), or Config.Control is
// off.
func (h *Hub) ControlReady() bool { return !h.cfg.Control || h.controlReady.Load() }

// control carries out one control room message: only the server API's
// (user "$system") count. A kept one (sent before this instance joined)
// counts only while the revocation it made lasts.
func (h *Hub) control(m *protocol.Message, kept bool) {
	var cmd command
	if m.User != systemUser || json.Unmarshal([]byte(m.Text), &cmd) != nil {
		h.log.Warn("control room: a message that is no command", "seq", m.Seq)
		return
	}
	switch cmd.Op {
	case "disconnect":
		at := time.UnixMilli(cmd.At)
		if kept && !time.Now().Before(at.Add(h.cfg.RevokeFor)) {
			return // over before this instance started
		}
		h.mu.Lock()
		n := h.disconnectUserLocked(cmd.User, at)
		h.mu.Unlock()
		h.log.Info("user disconnected by the server API", "user", cmd.User, "connections", n, "seq", m.Seq, "kept", kept)
	default:
		h.log.Warn("control room: unknown command", "op", cmd.Op, "seq", m.Seq)
	}
}
