package hub

import (
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
	"github.com/wschat/wschat/services/user/internal/conn"
)

// closeRestart is the close code of a connection told to reconnect
// (RFC 6455: service restart).
const closeRestart = 1012

// A keptPeer is given, when its seed join completes, the room's kept
// messages (its cache), which a seed client is never sent: the control
// room's reader carries out the commands sent before it joined.
type keptPeer interface{ Kept(msgs []protocol.Message) }

// Peer is a client connection as the hub sees it; *conn.Conn is one. Its
// methods only queue work, so the hub may call them with h.mu held.
type Peer interface {
	// ID is the connection's instance-unique id, its member id.
	ID() string
	// Send queues an answer, ack or error; SendLazy a frame that may wait
	// for the next (presence); SendLive a room's message, false when the
	// queue is at its limits (the member then falls behind: behind.go).
	Send(frame []byte)
	SendLazy(frame []byte)
	SendLive(frame []byte) bool
	SendError(e *protocol.Error)
	// Drained reports whether the queue is below half its limits;
	// QueueLimits returns them.
	Drained() bool
	QueueLimits() (frames, bytes int)
	// SetCatchingUp asks for a call of client.Wrote after each batch
	// written, while on.
	SetCatchingUp(on bool)
	// Closing reports whether the connection is closing; Close closes it
	// with code and reason, dropping what is queued; CloseAfter once what
	// is queued is written (an error frame explaining the close).
	Closing() bool
	Close(code int, reason string)
	CloseAfter(code int, reason string)
}

var _ Peer = (*conn.Conn)(nil)

// client is a connection's hub state, and its conn.Session.
type client struct {
	h      *Hub
	peer   Peer
	member protocol.Member
	// nick, session and extended are written by hello, before any room
	// is joined, then only read. session is the client's own (hello's),
	// the key of its chats' de-duplication with their ids.
	nick     string
	session  string
	extended bool
	// observer: an in-process client of the server API (Agent), which
	// joins rooms without being a member anyone sees.
	observer bool
	// helloRetry: the last frame was a hello refused for its nick.
	helloRetry bool

	rooms map[string]struct{} // guarded by h.mu

	// The connection's authentication (auth.go), guarded by h.mu: its
	// token's identity (nil: anonymous), whether a token is still awaited
	// (AUTH_MODE=required and none came with the upgrade), whether it was
	// refused (its frames are ignored while it closes), and the timer of
	// its token's expiry.
	ident    *auth.Identity
	awaiting bool
	refused  bool
	gone     bool
	timer    *time.Timer
	timerGen uint64
	noticed  time.Time // the expiry the client was told of
}

var _ conn.Session = (*client)(nil)

// Open implements conn.Handler: token, the upgrade's own, is checked
// before any frame is read.
func (h *Hub) Open(c *conn.Conn, token string) conn.Session {
	cl := h.open(c)
	h.admit(cl, token)
	return cl
}

// open makes p a client of the hub.
func (h *Hub) open(p Peer) *client {
	return &client{h: h, peer: p, member: protocol.Member{ID: p.ID(), Instance: h.cfg.Instance}, rooms: map[string]struct{}{}}
}

// Frame implements conn.Session.
func (c *client) Frame(in protocol.Inbound, first bool) {
	h := c.h
	// A hello refused for its nick leaves the connection fresh: the next
	// frame may be another hello. Frames come one at a time.
	var retry bool
	if !c.observer { // an Agent's frames may come from several goroutines, and are no hello
		retry, c.helloRetry = c.helloRetry, false
	}
	switch in.Type {
	case protocol.TypeChat:
		h.chat(c, in)
	case protocol.TypeHello:
		if !first && !retry {
			e := protocol.Errorf(protocol.CodeHelloFirst, "hello must be the first frame of a connection; reconnect to change nickname")
			e.ID = in.ID
			c.peer.SendError(e)
			return
		}
		h.hello(c, in)
	case protocol.TypeRefresh:
		h.refresh(c, in)
	case protocol.TypeJoin, protocol.TypeJoinRoom:
		h.join(c, in)
	case protocol.TypeLeave:
		h.leave(c, in)
	case protocol.TypeHistory:
		h.history(c, in)
	}
}

// Wrote implements conn.Session: the writer asks for more of the rooms
// the client is behind in.
func (c *client) Wrote() { c.h.catchUp(c) }

// Closed implements conn.Session.
func (c *client) Closed() { c.h.disconnect(c) }

// admittedLocked reports whether c may do in: false when its token was
// refused (it is closing: in is ignored) or is still awaited (it is
// refused now). h.mu must be held.
func (c *client) admittedLocked(in protocol.Inbound) bool {
	if c.refused {
		return false
	}
	if c.awaiting {
		c.h.refuseLocked(c, protocol.CodeAuthRequired, protocol.CloseAuthRequired,
			"a token is required: send it in hello, or as the token query parameter of the connection's URL")
		return false
	}
	return true
}

// sendErrorLocked answers in with an error. h.mu must be held.
func (c *client) sendErrorLocked(in protocol.Inbound, code, format string, args ...any) {
	e := protocol.Errorf(code, format, args...)
	e.ID, e.Room = in.ID, in.Room
	c.peer.SendError(e)
}
