package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

const (
	// maxInFlight bounds a sender's chats awaiting their ack: while the
	// relay tier is frozen, traffic waits instead of piling up.
	maxInFlight = 40
	// outageLimit bounds one reconnect phase of a client (the longest
	// fault lasts 40 s), and outageAttempts its attempts.
	outageLimit    = 120 * time.Second
	outageAttempts = 400
)

// world is what every client of one scenario shares: the notifier their
// changes wake, the member ids that are connected now (to tell a presence
// flap from a real leave), and the time of the fault.
type world struct {
	n *dockerstack.Notifier

	mu      sync.Mutex
	alive   map[string]bool      // member id -> its connection is open
	ended   map[string]time.Time // member id -> when its connection ended
	faultAt time.Time            // zero until the fault is injected
}

func newWorld() *world {
	return &world{n: dockerstack.NewNotifier(), alive: map[string]bool{}, ended: map[string]time.Time{}}
}

func (w *world) setAlive(uid string) {
	w.mu.Lock()
	w.alive[uid] = true
	w.mu.Unlock()
}

func (w *world) setEnded(uid string) {
	w.mu.Lock()
	w.alive[uid] = false
	w.ended[uid] = time.Now()
	w.mu.Unlock()
}

// endedAt is when uid's connection ended (false: it has not).
func (w *world) endedAt(uid string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.ended[uid]
	return at, ok
}

func (w *world) isAlive(uid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.alive[uid]
}

// markFault records the fault's injection time, from which "served
// again" is measured.
func (w *world) markFault() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.faultAt = time.Now()
	return w.faultAt
}

func (w *world) faultTime() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.faultAt
}

// received is one chat message as a member got it.
type received struct {
	msg  protocol.Message
	conn int  // the client's connection it came on (1, 2, ...)
	hist bool // from a joined frame's history, not live
	// restart: from the history of a join that started the room over (a
	// new epoch): the client replaced what it held with it.
	restart bool
	at      time.Time
}

// roomView is one client's view of one room.
type roomView struct {
	got    []received
	joined bool   // on the current connection
	once   bool   // joined at least once
	base   uint64 // joined.seq of the very first join: what came before is not the member's
	last   uint64 // the last seq seen, the next recovery's since
	epoch  string // the numbering last counts in (joined.epoch)
	// startOvers counts recovery joins answered with a lower seq than
	// since: the relayer's log started over (docs/protocol.md, recovery 3).
	startOvers  int
	unrecovered int // recovery joins answered recovered:false
}

// leave is a presence leave received about a member whose connection was
// still open for this client: a flap, unless that connection was ending
// (see flaps).
type leave struct {
	uid  string
	at   time.Time
	what string // for the test's log
}

// chat is one message a sender said, until it is acknowledged or refused.
type chat struct {
	room, text string
	conn       int // the connection it last went out on
	sentAt     time.Time
}

// ackRec is an acknowledgement as the sender got it.
type ackRec struct {
	room       string
	seq        uint64
	sentAt, at time.Time
}

// client is one chat client that stays in its rooms through every fault:
// when its connection breaks it reconnects through nginx, joins again
// with since (extended) or without (seed), and — an extended sender —
// re-sends its unacknowledged chats with their ids, the ones it found in
// the recovered history excepted (docs/protocol.md, "Recovery after a
// reconnect"). Its hello carries a session token that stays the same
// across its reconnects, so that a server may recognise the re-sends.
type client struct {
	name, session, base string
	rooms               []string
	seed, sender        bool
	w                   *world

	mu        sync.Mutex
	conn      *websocket.Conn
	conns     int    // connections made
	uid       string // member id of the current connection
	instance  string // replica of the current connection
	ready     bool   // every room joined on the current connection
	views     map[string]*roomView
	next      int
	resend    []string // ids to send again, oldest first
	pending   map[string]*chat
	acks      map[string]ackRec
	refused   map[string]string // id -> error code
	refusedAt map[string]time.Time
	delivered map[string]bool // ids found delivered, their ack lost with a connection
	closes    []string        // how each connection the server ended ended
	selfClose int             // connections the client ended (join refused)
	leaves    []leave         // presence leaves of members still connected
	gaps      int             // history_gap errors
	failure   error           // it gave up reconnecting
	trace     []string        // connections, joins and their answers, for a failure's log
}

// maxTrace bounds a client's trace.
const maxTrace = 200

// tracef notes an event in the client's trace, timed from the fault (or
// before it). Call with c.mu held.
func (c *client) tracef(format string, args ...any) {
	if len(c.trace) >= maxTrace {
		return
	}
	at := "before the fault"
	if f := c.w.faultTime(); !f.IsZero() {
		at = fmt.Sprintf("%+.3fs", time.Since(f).Seconds())
	}
	c.trace = append(c.trace, at+": "+fmt.Sprintf(format, args...))
}

func newClient(w *world, base, name string, rooms []string, seed, sender bool) *client {
	c := &client{
		name: name, session: "s-" + name, base: base, rooms: rooms, seed: seed, sender: sender, w: w,
		views: map[string]*roomView{}, pending: map[string]*chat{}, acks: map[string]ackRec{}, refused: map[string]string{}, refusedAt: map[string]time.Time{}, delivered: map[string]bool{},
	}
	for _, r := range rooms {
		c.views[r] = &roomView{}
	}
	return c
}

// update applies f under the client's lock and wakes every waiter.
func (c *client) update(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
	c.w.n.Bump()
}

// read runs f under the client's lock.
func (c *client) read(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

// helloFrame is hello with the session token that the de-duplication of
// re-sent chats keys on (servers that do not know it ignore it).
type helloFrame struct {
	Type    string `json:"type"`
	Nick    string `json:"nick"`
	Session string `json:"session"`
}

// start connects the client and keeps it connected until ctx ends; it
// returns once the first connection is up and its joins are sent.
func (c *client) start(ctx context.Context) error {
	conn, err := c.connect(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	go c.run(ctx, conn)
	return nil
}

// connect dials through nginx, says hello (extended) and sends a join for
// every room, with since after the room's first join. The answers are
// the reader's to take.
func (c *client) connect(ctx context.Context) (*websocket.Conn, error) {
	var (
		conn     *websocket.Conn
		instance string
		uid      string
	)
	if c.seed {
		cn, _, err := dockerstack.Dial(ctx, c.base, "/")
		if err != nil {
			return nil, err
		}
		conn = cn
	} else {
		cn, wel, err := dockerstack.HelloWith(ctx, c.base, helloFrame{Type: protocol.TypeHello, Nick: c.name, Session: c.session})
		if err != nil {
			return nil, err
		}
		conn, instance, uid = cn, wel.Instance, wel.ID
	}
	var joins []protocol.Inbound
	c.update(func() {
		c.conns++
		c.conn, c.instance, c.uid, c.ready = conn, instance, uid, c.seed
		c.tracef("connection %d on %s", c.conns, instance)
		for _, r := range c.rooms {
			v := c.views[r]
			v.joined = false
			if c.seed {
				joins = append(joins, protocol.Inbound{Type: protocol.TypeJoinRoom, Room: r})
				continue
			}
			in := protocol.Inbound{Type: protocol.TypeJoin, Room: r, ID: joinID(r, c.conns)}
			if v.once {
				since := v.last
				in.Since, in.Epoch = &since, v.epoch
				c.tracef("join %s since %d epoch %s", r, since, v.epoch)
			}
			joins = append(joins, in)
		}
	})
	if uid != "" {
		c.w.setAlive(uid)
	}
	for _, in := range joins {
		if err := dockerstack.Send(ctx, conn, in); err != nil {
			c.w.setEnded(uid)
			conn.CloseNow()
			return nil, fmt.Errorf("join %s: %w", in.Room, err)
		}
	}
	return conn, nil
}

// recovered shows a joined frame's recovered, absent or not.
func recovered(j protocol.Joined) string {
	if j.Recovered == nil {
		return "-"
	}
	return fmt.Sprint(*j.Recovered)
}

func joinID(room string, conn int) string { return fmt.Sprintf("join-%s-%d", room, conn) }

// run reads until the connection breaks, then reconnects, until ctx ends.
func (c *client) run(ctx context.Context, conn *websocket.Conn) {
	for {
		self, err := c.readLoop(ctx, conn)
		var uid string
		c.update(func() {
			uid = c.uid
			c.conn, c.ready = nil, false
			switch {
			case ctx.Err() != nil:
			case self:
				c.selfClose++
			default:
				c.closes = append(c.closes, closeCode(err))
			}
			c.tracef("connection %d ended (self %v): %v", c.conns, self, err)
		})
		if uid != "" {
			c.w.setEnded(uid)
		}
		conn.CloseNow()
		if ctx.Err() != nil {
			return
		}
		if conn, err = c.reconnect(ctx); err != nil {
			c.update(func() { c.failure = err })
			return
		}
	}
}

// reconnect dials again with backoff and jitter, bounded in attempts and
// time.
func (c *client) reconnect(ctx context.Context) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, outageLimit)
	defer cancel()
	backoff := 100 * time.Millisecond
	var last error
	for range outageAttempts {
		conn, err := c.connect(ctx)
		if err == nil {
			return conn, nil
		}
		last = err
		// Backoff between attempts, as a real client does (nothing is
		// waited for but time).
		select {
		case <-time.After(backoff + time.Duration(time.Now().UnixNano()%int64(backoff/2))):
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: reconnect: %w (last error: %v)", c.name, ctx.Err(), last)
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	return nil, fmt.Errorf("%s: reconnect: giving up: %v", c.name, last)
}

// errSelfClose: the client ended the connection itself.
var errSelfClose = errors.New("closed by the client")

// readLoop takes frames until the connection breaks; self tells whether
// the client broke it (a join refused: it reconnects and tries again).
func (c *client) readLoop(ctx context.Context, conn *websocket.Conn) (self bool, err error) {
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			return false, err
		}
		if err := c.take(b); err != nil {
			if errors.Is(err, errSelfClose) {
				conn.Close(websocket.StatusNormalClosure, "join refused, reconnecting")
				return true, err
			}
			return false, err
		}
	}
}

// errorFrame is the server's error frame.
type errorFrame struct {
	Code, ID, Room string
}

// presenceFrame is the server's presence event.
type presenceFrame struct {
	Event  string
	Member protocol.Member
}

// take applies one server frame.
func (c *client) take(b []byte) error {
	now := time.Now()
	switch dockerstack.FrameType(b) {
	case protocol.TypeChat:
		var msg protocol.Message
		if err := json.Unmarshal(b, &msg); err != nil {
			return fmt.Errorf("chat frame %s: %w", b, err)
		}
		c.update(func() {
			v := c.views[msg.Room]
			if v == nil {
				return
			}
			v.got = append(v.got, received{msg: msg, conn: c.conns, at: now})
			v.last = max(v.last, msg.Seq)
		})
	case protocol.TypeAck:
		var a protocol.Ack
		if err := json.Unmarshal(b, &a); err != nil {
			return fmt.Errorf("ack frame %s: %w", b, err)
		}
		c.update(func() {
			rec := ackRec{room: a.Room, seq: a.Seq, at: now}
			if ch := c.pending[a.ID]; ch != nil {
				rec.sentAt = ch.sentAt
			}
			c.acks[a.ID] = rec
			delete(c.pending, a.ID)
		})
	case protocol.TypeJoined:
		var j protocol.Joined
		if err := json.Unmarshal(b, &j); err != nil {
			return fmt.Errorf("joined frame %s: %w", b, err)
		}
		c.update(func() { c.joined(j, now) })
	case protocol.TypePresence:
		var p presenceFrame
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("presence frame %s: %w", b, err)
		}
		if p.Event == "leave" && c.w.isAlive(p.Member.ID) {
			c.update(func() {
				c.leaves = append(c.leaves, leave{uid: p.Member.ID, at: now, what: fmt.Sprintf("%s (on %s) got presence leave of %s (%s on %s), still connected, %s after the fault",
					c.name, c.instance, p.Member.ID, p.Member.Nick, p.Member.Instance, now.Sub(c.w.faultTime()).Round(time.Millisecond))})
			})
		}
	case protocol.TypeError:
		var e errorFrame
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("error frame %s: %w", b, err)
		}
		var self bool
		c.update(func() {
			c.tracef("error %s (id %q, room %s)", e.Code, e.ID, e.Room)
			switch {
			case e.Code == "history_gap":
				c.gaps++
			case c.pending[e.ID] != nil:
				// Refused: not sent (docs/protocol.md, chat).
				c.refused[e.ID], c.refusedAt[e.ID] = e.Code, now
				delete(c.pending, e.ID)
			case e.ID == joinID(e.Room, c.conns):
				self = true
			}
		})
		if self {
			return errSelfClose
		}
	}
	return nil
}

// joined applies a join's answer; with every room joined, the client
// queues its unacknowledged chats for re-sending. Call with c.mu held.
func (c *client) joined(j protocol.Joined, now time.Time) {
	v := c.views[j.Room]
	if v == nil {
		return
	}
	restart := false
	switch {
	case !v.once:
		// What came before the first join is not this member's to see.
		v.base, v.last = j.Seq, j.Seq
	case j.Epoch != "" && v.epoch != "" && j.Epoch != v.epoch:
		// The room's numbering started over (the join's since counted in
		// the old one, so the answer recovers the new one from its start).
		v.startOvers++
		v.last = 0
		restart = true
	case j.Seq < v.last:
		// The relayer's log started over: start the room over.
		v.startOvers++
		v.last = j.Seq
	case j.Recovered != nil && !*j.Recovered:
		v.unrecovered++
	}
	if len(j.History) > 0 {
		c.tracef("joined %s: seq %d epoch %s recovered %v restart %v history %d..%d", j.Room, j.Seq, j.Epoch, recovered(j), restart, j.History[0].Seq, j.History[len(j.History)-1].Seq)
	} else {
		c.tracef("joined %s: seq %d epoch %s recovered %v restart %v, no history", j.Room, j.Seq, j.Epoch, recovered(j), restart)
	}
	if v.once {
		for _, m := range j.History {
			v.got = append(v.got, received{msg: m, conn: c.conns, hist: true, restart: restart, at: now})
			v.last = max(v.last, m.Seq)
		}
	}
	v.once, v.joined, v.epoch = true, true, j.Epoch
	for _, r := range c.rooms {
		if !c.views[r].joined {
			return
		}
	}
	c.ready = true
	// A chat found in what the rooms delivered was sequenced (its ack was
	// lost with the connection): it is not said again.
	seen := map[string]bool{}
	for _, r := range c.rooms {
		for _, g := range c.views[r].got {
			if g.msg.ID != "" {
				seen[g.msg.ID] = true
			}
		}
	}
	var again []string
	for id, ch := range c.pending {
		switch {
		case ch.conn == c.conns || slices.Contains(c.resend, id):
		case seen[id]:
			c.delivered[id] = true
			delete(c.pending, id)
		default:
			again = append(again, id)
		}
	}
	slices.SortFunc(again, func(a, b string) int { return c.pending[a].sentAt.Compare(c.pending[b].sentAt) })
	c.resend = append(c.resend, again...)
}

// step sends the client's next chat, a re-send first, if it is connected
// and joined and has fewer than maxInFlight unacknowledged; with onlyResend
// it sends re-sends only.
func (c *client) step(ctx context.Context, onlyResend bool) {
	var (
		conn *websocket.Conn
		in   protocol.Inbound
	)
	c.update(func() {
		if !c.sender || !c.ready || c.conn == nil {
			return
		}
		inFlight := 0
		for _, ch := range c.pending {
			if ch.conn == c.conns {
				inFlight++
			}
		}
		if inFlight >= maxInFlight {
			return
		}
		var id string
		for len(c.resend) > 0 && id == "" {
			id, c.resend = c.resend[0], c.resend[1:]
			if c.pending[id] == nil { // acknowledged meanwhile
				id = ""
			}
		}
		if id == "" && onlyResend {
			return
		}
		if id == "" {
			c.next++
			id = fmt.Sprintf("%s-%d", c.name, c.next)
			room := c.rooms[c.next%len(c.rooms)]
			c.pending[id] = &chat{room: room, text: "message " + id}
		}
		ch := c.pending[id]
		ch.conn, ch.sentAt = c.conns, time.Now()
		conn = c.conn
		in = protocol.Inbound{Type: protocol.TypeChat, Room: ch.room, Message: ch.text, ID: id}
	})
	if conn != nil {
		// A failed write shows as the reader's error; the chat stays
		// pending and is re-sent after the reconnect.
		_ = dockerstack.Send(ctx, conn, in)
	}
}

// say sends one chat now (the final one of a room), bypassing the pacer;
// it returns its id, or "" when the client is not connected and joined.
func (c *client) say(ctx context.Context, room string) string {
	c.mu.Lock()
	if !c.ready || c.conn == nil {
		c.mu.Unlock()
		return ""
	}
	c.next++
	id := fmt.Sprintf("%s-%d", c.name, c.next)
	c.pending[id] = &chat{room: room, text: "final " + id, conn: c.conns, sentAt: time.Now()}
	conn := c.conn
	c.mu.Unlock()
	c.w.n.Bump()
	_ = dockerstack.Send(ctx, conn, protocol.Inbound{Type: protocol.TypeChat, Room: room, Message: "final " + id, ID: id})
	return id
}

func (c *client) close() {
	var conn *websocket.Conn
	c.read(func() { conn = c.conn })
	if conn != nil {
		conn.Close(websocket.StatusNormalClosure, "test over")
	}
}

// closeCode names how a connection ended: its close code, or "none" when
// it just broke (no close frame).
func closeCode(err error) string {
	if s := websocket.CloseStatus(err); s != -1 {
		return fmt.Sprint(int(s))
	}
	return "none"
}
