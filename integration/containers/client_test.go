package containers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

// roomLog is what one client saw of one room: every chat message in the
// order it arrived, history of (re)joins included, plus its own acks.
type roomLog struct {
	n    *dockerstack.Notifier
	mu   sync.Mutex
	msgs []protocol.Message
	acks map[string]uint64 // client message id -> seq
	sent map[string]string // client message id -> text, every attempt
	// sentOn is the connection (joins at the time) each message went out
	// on: one still unacknowledged when that connection ended is lost.
	sentOn map[string]int
	errs   []string // error frames received
	base   uint64   // seq of the room when the client first joined
	joins  int
}

func newRoomLog(n *dockerstack.Notifier) *roomLog {
	return &roomLog{n: n, acks: map[string]uint64{}, sent: map[string]string{}, sentOn: map[string]int{}}
}

// inFlight counts messages sent on the current connection and not yet
// acknowledged. Call with l.mu held.
func (l *roomLog) inFlight() int {
	n := 0
	for id, conn := range l.sentOn {
		if _, ok := l.acks[id]; !ok && conn == l.joins {
			n++
		}
	}
	return n
}

// update applies f under the lock and wakes every waiter.
func (l *roomLog) update(f func()) {
	l.mu.Lock()
	f()
	l.mu.Unlock()
	l.n.Bump()
}

// waitFor blocks until cond, run under the log's lock, holds.
func (l *roomLog) waitFor(ctx context.Context, cond func() bool) error {
	return l.n.WaitFor(ctx, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return cond()
	})
}

func (l *roomLog) lastSeq() uint64 {
	if len(l.msgs) == 0 {
		return l.base
	}
	return l.msgs[len(l.msgs)-1].Seq
}

// member is an extended client that stays in one room for the whole test:
// when its connection breaks it reconnects through nginx (to whichever
// replica nginx picks), says hello again and joins with since = the last
// seq it saw, as the protocol tells clients to.
type member struct {
	name, room, base string
	log              *roomLog

	mu        sync.Mutex
	conn      *websocket.Conn
	instances []string // replica of each connection, in order
	closes    []string // how each connection ended
	failure   error    // set when it gave up reconnecting
	n         int      // messages said
}

// join connects a member and returns once it has joined; it then keeps
// itself connected until ctx ends.
func join(ctx context.Context, t *testing.T, n *dockerstack.Notifier, base, name, room string) *member {
	t.Helper()
	m := &member{name: name, room: room, base: base, log: newRoomLog(n)}
	c, err := m.connect(ctx)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go m.run(ctx, c)
	return m
}

// connect dials, says hello and joins (with since after the first join).
func (m *member) connect(ctx context.Context) (*websocket.Conn, error) {
	c, w, err := dockerstack.Hello(ctx, m.base, m.name)
	if err != nil {
		return nil, err
	}
	in := protocol.Inbound{Type: protocol.TypeJoin, Room: m.room, ID: "join"}
	m.log.mu.Lock()
	if m.log.joins > 0 {
		since := m.log.lastSeq()
		in.Since = &since
	}
	m.log.mu.Unlock()
	if err := dockerstack.Send(ctx, c, in); err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("join: %w", err)
	}
	var j protocol.Joined
	if err := dockerstack.ReadType(ctx, c, protocol.TypeJoined, &j); err != nil {
		c.CloseNow()
		return nil, err
	}
	if in.Since != nil && (j.Recovered == nil || !*j.Recovered) {
		c.CloseNow()
		return nil, fmt.Errorf("rejoin since %d: not recovered: %+v", *in.Since, j)
	}
	m.log.update(func() {
		if m.log.joins == 0 {
			// What came before the first join is not this member's to see.
			m.log.base = j.Seq
		} else {
			m.log.msgs = append(m.log.msgs, j.History...)
		}
		m.log.joins++
	})
	m.mu.Lock()
	m.conn = c
	m.instances = append(m.instances, w.Instance)
	m.mu.Unlock()
	return c, nil
}

// run reads until the connection breaks, then reconnects, until ctx ends.
// Reconnecting is bounded in attempts and time.
func (m *member) run(ctx context.Context, c *websocket.Conn) {
	for {
		err := m.read(ctx, c)
		m.mu.Lock()
		m.conn = nil
		m.closes = append(m.closes, closeReason(err))
		m.mu.Unlock()
		c.CloseNow()
		if ctx.Err() != nil {
			return
		}
		c, err = m.reconnect(ctx)
		if err != nil {
			m.mu.Lock()
			m.failure = err
			m.mu.Unlock()
			m.log.update(func() {})
			return
		}
	}
}

func (m *member) reconnect(ctx context.Context) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	backoff := 50 * time.Millisecond
	var last error
	for attempt := 0; attempt < 40; attempt++ {
		c, err := m.connect(ctx)
		if err == nil {
			return c, nil
		}
		last = err
		// Backoff between attempts, as a real client would (this is not
		// synchronisation: nothing is waited for but time).
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: reconnect: %w (last error: %v)", m.name, ctx.Err(), last)
		}
		backoff = min(2*backoff, time.Second)
	}
	return nil, fmt.Errorf("%s: reconnect: giving up: %v", m.name, last)
}

func (m *member) read(ctx context.Context, c *websocket.Conn) error {
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return err
		}
		switch dockerstack.FrameType(b) {
		case protocol.TypeChat:
			var msg protocol.Message
			if err := json.Unmarshal(b, &msg); err != nil {
				return fmt.Errorf("chat frame %s: %w", b, err)
			}
			if msg.Room == m.room {
				m.log.update(func() { m.log.msgs = append(m.log.msgs, msg) })
			}
		case protocol.TypeAck:
			var a protocol.Ack
			if err := json.Unmarshal(b, &a); err != nil {
				return fmt.Errorf("ack frame %s: %w", b, err)
			}
			m.log.update(func() { m.log.acks[a.ID] = a.Seq })
		case protocol.TypeError:
			m.log.update(func() { m.log.errs = append(m.log.errs, string(b)) })
		}
	}
}

// say sends one chat message if the member is connected; whether it was
// sequenced shows in the acks.
func (m *member) say(ctx context.Context) {
	m.mu.Lock()
	c := m.conn
	m.n++
	id := fmt.Sprintf("%s-%d", m.name, m.n)
	m.mu.Unlock()
	if c == nil {
		return
	}
	text := "message " + id
	m.log.update(func() {
		m.log.sent[id] = text
		m.log.sentOn[id] = m.log.joins
	})
	_ = dockerstack.Send(ctx, c, protocol.Inbound{Type: protocol.TypeChat, Room: m.room, Message: text, ID: id})
}

func (m *member) instance() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.instances[len(m.instances)-1]
}

func (m *member) close() {
	m.mu.Lock()
	c := m.conn
	m.mu.Unlock()
	if c != nil {
		c.Close(websocket.StatusNormalClosure, "test over")
	}
}

func closeReason(err error) string {
	if s := websocket.CloseStatus(err); s != -1 {
		var ce websocket.CloseError
		errors.As(err, &ce)
		return fmt.Sprintf("close %d %q", s, ce.Reason)
	}
	return err.Error()
}

// checkLogs asserts what every client must have seen of the room once
// everyone has received seq last (the test's final message):
//   - each log is gap-free and duplicate-free from the client's first join
//     to at least last: nothing lost, nothing twice, whatever happened;
//   - all logs agree on every seq (one order for everyone);
//   - every acknowledged message is in them with the acknowledged seq.
//
// It returns the agreed messages by seq.
func checkLogs(t *testing.T, last uint64, logs map[string]*roomLog) map[uint64]protocol.Message {
	t.Helper()
	canon := map[uint64]protocol.Message{}
	for name, l := range logs {
		l.mu.Lock()
		msgs, base := slices.Clone(l.msgs), l.base
		l.mu.Unlock()
		want := base + 1
		ids := map[string]uint64{}
		for _, msg := range msgs {
			if msg.Seq != want {
				t.Errorf("%s: got seq %d, want %d (base %d): a gap or a duplicate", name, msg.Seq, want, base)
				break
			}
			want++
			if msg.ID != "" {
				if prev, dup := ids[msg.ID]; dup {
					t.Errorf("%s: message id %s delivered twice, as seq %d and %d", name, msg.ID, prev, msg.Seq)
				}
				ids[msg.ID] = msg.Seq
			}
			if c, ok := canon[msg.Seq]; !ok {
				canon[msg.Seq] = msg
			} else if c.ID != msg.ID || c.Text != msg.Text || c.UID != msg.UID {
				t.Errorf("%s: seq %d is %q (%s), another client saw %q (%s)", name, msg.Seq, msg.Text, msg.ID, c.Text, c.ID)
			}
		}
		if want-1 < last {
			t.Errorf("%s: saw up to seq %d, want at least %d", name, want-1, last)
		}
	}
	for name, l := range logs {
		l.mu.Lock()
		for id, seq := range l.acks {
			msg, ok := canon[seq]
			if (ok || seq <= last) && (msg.ID != id || msg.Text != l.sent[id]) {
				t.Errorf("%s: acknowledged %s as seq %d, which is %+v", name, id, seq, msg)
			}
		}
		l.mu.Unlock()
	}
	return canon
}
