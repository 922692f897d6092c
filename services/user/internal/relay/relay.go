// Package relay is the bus that connects a ws-user instance to ws-relayer
// over the relay link (package link).
package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/protocol/link/linkws"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// Config configures the link.
type Config struct {
	URL        string // ws://host:port, the link path is added when absent
	Secret     string
	Instance   string
	PendingMax int // unacknowledged publishes kept for re-sending
	QueueBytes int // bytes of unacknowledged publishes kept; beyond, Publish refuses
	// PublishWait is how long Publish waits, while the link is up, for
	// acknowledgements to make room before it refuses: a relayer that falls
	// behind slows its publishers down (their readers wait, and TCP slows
	// the clients) before their chats are refused. 0 refuses at once.
	PublishWait  time.Duration
	MaxFrame     int64         // read limit for one link message
	PingInterval time.Duration // keepalive; a missed pong drops the link
	// FlushDelay, when positive, makes the writer wait that long after
	// frames appear before sending them, so that more go in one message:
	// less CPU at moderate rates for that much latency.
	FlushDelay time.Duration
	MinBackoff time.Duration
	MaxBackoff time.Duration
	Logger     *slog.Logger
}

// Bus is a bus.Bus over the relay link. Its methods only queue; Run dials,
// resynchronises after every reconnect and moves the frames.
type Bus struct {
	cfg Config
	h   bus.Handler
	log *slog.Logger

	epoch string // the relayer's log as of the last link: written by Run before serve, read by the frames serve handles

	mu sync.Mutex
	// up: connected. Ops go to w, or to early until serve has queued the
	// sync; otherwise they are dropped and the next sync carries their
	// effect.
	up           bool
	w            *linkws.Writer // the link's; nil until its sync is queued
	early        []byte         // ops queued while the sync is made, sent after it
	pending      map[string]pendingPub
	pendingBytes int
	nextPub      uint64
	// waiters wait in Publish for room; woken once acknowledgements bring
	// the unacknowledged publishes below the low-water mark (roomLocked),
	// or when the link goes down (they refuse).
	waiters bus.Waiters
	fetches map[uint64]struct{}

	ready atomic.Bool
}

var _ bus.Bus = (*Bus)(nil)

type pendingPub struct {
	n     uint64 // publish order, for re-sending in the original order
	frame []byte
}

// New returns a relay bus delivering to h.
func New(cfg Config, h bus.Handler) *Bus {
	if !strings.Contains(strings.TrimPrefix(strings.TrimPrefix(cfg.URL, "ws://"), "wss://"), "/") {
		cfg.URL = strings.TrimSuffix(cfg.URL, "/") + link.Path
	}
	return &Bus{
		cfg: cfg, h: h, log: cfg.Logger,
		pending: map[string]pendingPub{},
		fetches: map[uint64]struct{}{},
	}
}

// Ready reports whether the link is up and synchronised.
func (b *Bus) Ready() bool { return b.ready.Load() }

func (b *Bus) send(f *link.Frame) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.appendLocked(f)
}

// appendLocked queues f for the link, if it is up; b.mu must be held.
func (b *Bus) appendLocked(f *link.Frame) {
	b.queueLocked(func(dst []byte) []byte {
		out, err := link.Append(dst, f)
		if err != nil {
			b.log.Error("relay link: cannot encode frame", "err", err)
		}
		return out
	})
}

// queueLocked queues what enc appends (whole frames) for the link, if it
// is up; b.mu must be held.
func (b *Bus) queueLocked(enc func(dst []byte) []byte) {
	switch {
	case b.w != nil:
		b.w.AppendFunc(enc)
	case b.up:
		b.early = enc(b.early)
	}
}

// Subscribe implements bus.Bus.
func (b *Bus) Subscribe(in bus.Interest) {
	b.send(&link.Frame{T: link.OpSub, Rooms: []link.RoomState{roomState(in)}})
}

// Unsubscribe implements bus.Bus.
func (b *Bus) Unsubscribe(room string) { b.send(&link.Frame{T: link.OpUnsub, Room: room}) }

// Join implements bus.Bus.
func (b *Bus) Join(room string, m protocol.Member) { b.sendMember(link.OpJoin, room, &m) }

// Leave implements bus.Bus.
func (b *Bus) Leave(room, memberID string) {
	b.sendMember(link.OpLeave, room, &protocol.Member{ID: memberID})
}

func (b *Bus) sendMember(op, room string, m *protocol.Member) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.queueLocked(func(dst []byte) []byte { return link.AppendMember(dst, op, room, "", m) })
}

// Publish implements bus.Bus: the message is kept until the relayer
// acknowledges it, and re-sent after every reconnect until then.
func (b *Bus) Publish(mid, session string, m protocol.Message) error {
	frame := link.AppendPub(make([]byte, 0, 128+len(session)+len(m.Text)), mid, session, &m)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fullLocked(len(frame)) && !b.waiters.Await(&b.mu, b.cfg.PublishWait,
		func() bool { return b.fullLocked(len(frame)) }, func() bool { return !b.up }) {
		return bus.ErrUnavailable
	}
	b.nextPub++
	b.pending[mid] = pendingPub{n: b.nextPub, frame: frame}
	b.pendingBytes += len(frame)
	b.queueLocked(func(dst []byte) []byte { return append(dst, frame...) })
	return nil
}

// fullLocked: a publish of n bytes does not fit among the unacknowledged
// ones. Lock should be held.
func (b *Bus) fullLocked(n int) bool {
	return len(b.pending) >= b.cfg.PendingMax || b.pendingBytes+n > b.cfg.QueueBytes
}

// roomLocked: the unacknowledged publishes are at the low-water mark of
// both bounds, where waiting publishers are woken. Lock should be held.
func (b *Bus) roomLocked() bool {
	return bus.LowWater(len(b.pending), b.cfg.PendingMax) && bus.LowWater(b.pendingBytes, b.cfg.QueueBytes)
}

var errLinkDown = errors.New("relay link is down; retry when the instance is ready")

// Fetch implements bus.Bus.
func (b *Bus) Fetch(req uint64, room string, after, before uint64, limit int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		// The handler must not be called under the caller's locks.
		go b.h.Fetched(req, nil, 0, errLinkDown)
		return
	}
	b.fetches[req] = struct{}{}
	b.appendLocked(&link.Frame{T: link.OpFetch, Req: req, Room: room, After: after, Before: before, Limit: limit})
}

// Run keeps the link up until ctx ends, reconnecting with jittered backoff.
func (b *Bus) Run(ctx context.Context) error {
	backoff := b.cfg.MinBackoff
	for ctx.Err() == nil {
		conn, e, err := b.dial(ctx)
		if err == nil {
			if e != b.epoch && b.epoch != "" && e != "" {
				b.log.Warn("relay link: the relayer's log is not the one it had (new or lost data directory); its sequence numbers start over",
					"epoch", e, "was", b.epoch)
				b.h.Restarted()
			}
			b.epoch = cmp.Or(e, b.epoch)
			upSince := time.Now()
			err = b.serve(ctx, conn)
			b.down()
			if ctx.Err() != nil {
				break
			}
			b.log.Warn("relay link: lost, reconnecting", "err", err)
			// Only a link that stayed up resets the backoff: one that fails
			// right after connecting (a frame the relayer refuses, say)
			// must not reconnect in a tight loop.
			if time.Since(upSince) > 10*b.cfg.MaxBackoff {
				backoff = b.cfg.MinBackoff
				continue
			}
		} else if ctx.Err() == nil {
			b.log.Warn("relay link: dial failed", "url", b.cfg.URL, "err", err)
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(backoff*2, b.cfg.MaxBackoff)
	}
	return nil
}

// dial connects a link and returns the relayer's epoch (link.HeaderEpoch).
func (b *Bus) dial(ctx context.Context) (*websocket.Conn, string, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+b.cfg.Secret)
	hdr.Set(link.HeaderInstance, b.cfg.Instance)
	conn, resp, err := websocket.Dial(dctx, b.cfg.URL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, "", fmt.Errorf("relayer refused the link (401): RELAY_SECRET differs from the relayer's: %w", err)
		}
		return nil, "", fmt.Errorf("dial relayer: %w", err)
	}
	conn.SetReadLimit(b.cfg.MaxFrame)
	return conn, resp.Header.Get(link.HeaderEpoch), nil
}

// serve runs one connected link: sync first, then frames both ways until
// either side fails.
func (b *Bus) serve(ctx context.Context, conn *websocket.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer conn.CloseNow()

	// From here on every operation is queued behind the sync frame. An
	// operation that raced with the snapshot may be sent twice; every link
	// operation is idempotent, so that is harmless.
	b.mu.Lock()
	b.up = true
	b.early = b.early[:0]
	b.mu.Unlock()
	interests := b.h.State()
	state := make([]link.RoomState, len(interests))
	for i, in := range interests {
		state[i] = roomState(in)
	}
	head, err := appendSync(nil, state)
	if err != nil {
		return fmt.Errorf("encode sync: %w", err)
	}
	b.mu.Lock()
	resend := make([]pendingPub, 0, len(b.pending))
	for _, p := range b.pending {
		resend = append(resend, p)
	}
	slices.SortFunc(resend, func(x, y pendingPub) int { return cmp.Compare(x.n, y.n) })
	for _, p := range resend {
		head = append(head, p.frame...)
	}
	w := linkws.NewWriter(conn, b.cfg.FlushDelay)
	w.Append(head, b.early)
	b.w, b.early = w, nil
	b.mu.Unlock()
	b.ready.Store(true)
	b.h.LinkState(true)
	b.log.Info("relay link: up", "url", b.cfg.URL, "rooms", len(state), "resent", len(resend))

	errc := make(chan error, 3)
	go func() { errc <- w.Run(ctx) }()
	go func() { errc <- b.readLoop(ctx, conn) }()
	go func() { errc <- linkws.Keepalive(ctx, conn, b.cfg.PingInterval) }()
	err = <-errc
	if ctx.Err() != nil {
		conn.Close(websocket.StatusGoingAway, "instance shutting down")
	}
	cancel()
	conn.CloseNow()
	<-errc
	<-errc
	return err
}

// roomState is in as the link says it.
func roomState(in bus.Interest) link.RoomState {
	return link.RoomState{Room: in.Room, Since: in.Since, Resume: in.Resume, Tail: in.Tail, Members: in.Members}
}

// syncPart is about the most bytes of state one sync frame carries.
const syncPart = 256 << 10

// appendSync appends state as sync frames of about syncPart bytes, every
// one but the last marked More, a room's members split over several if
// need be: as one frame, the state of a large instance would be larger
// than the relayer reads in one message (LINK_MAX_FRAME_BYTES), and the
// link would be refused at every reconnect.
func appendSync(dst []byte, state []link.RoomState) ([]byte, error) {
	part := link.Frame{T: link.OpSync, Rooms: []link.RoomState{}}
	size := 0
	flush := func(more bool) error {
		part.More = more
		var err error
		dst, err = link.Append(dst, &part)
		part.Rooms, size = part.Rooms[:0], 0
		return err
	}
	for _, rs := range state {
		rest := rs.Members
		for first := true; first || len(rest) > 0; first = false {
			if size += len(rs.Room) + 64; size > syncPart && len(part.Rooms) > 0 {
				if err := flush(true); err != nil {
					return dst, err
				}
				size = len(rs.Room) + 64
			}
			n := 0
			for n < len(rest) {
				// Its JSON: the strings and about 40 bytes of keys.
				m := len(rest[n].ID) + len(rest[n].Nick) + len(rest[n].Instance) + 40
				if size+m > syncPart && (n > 0 || len(part.Rooms) > 0) {
					break
				}
				size += m
				n++
			}
			piece := rs
			piece.Members = rest[:n]
			part.Rooms = append(part.Rooms, piece)
			if rest = rest[n:]; len(rest) > 0 {
				if err := flush(true); err != nil {
					return dst, err
				}
			}
		}
	}
	return dst, flush(false)
}

func (b *Bus) down() {
	b.ready.Store(false)
	b.mu.Lock()
	b.up, b.w, b.early = false, nil, nil
	b.waiters.Wake() // waiting publishers refuse: nothing will be acknowledged soon
	failed := b.fetches
	b.fetches = map[uint64]struct{}{}
	b.mu.Unlock()
	for req := range failed {
		b.h.Fetched(req, nil, 0, errLinkDown)
	}
	b.h.LinkState(false)
}

func (b *Bus) readLoop(ctx context.Context, conn *websocket.Conn) error {
	var buf []byte
	for {
		_, r, err := conn.Reader(ctx)
		if err == nil {
			buf, err = link.ReadMessage(r, buf)
		}
		if err != nil {
			return fmt.Errorf("read link: %w", err)
		}
		if err := link.Split(buf, b.handle); err != nil {
			conn.Close(websocket.StatusPolicyViolation, "bad link frame")
			return err
		}
	}
}

// settle reads link.Frame.Settle, clamped so that it cannot overflow.
func settle(ms int64) time.Duration {
	return time.Duration(min(max(ms, 0), int64(math.MaxInt64/time.Millisecond))) * time.Millisecond
}

func (b *Bus) handle(f *link.Frame) error {
	switch f.T {
	case link.OpSubscribed:
		b.h.Subscribed(bus.Subscription{Room: f.Room, Seq: f.Seq, First: f.First, Members: f.Members, Msgs: f.Msgs,
			Settle: settle(f.Settle), Epoch: b.epoch})
	case link.OpMsg:
		if f.Msg == nil {
			return fmt.Errorf("msg frame without msg")
		}
		b.h.Message(f.Msg)
	case link.OpAck, link.OpNack:
		b.mu.Lock()
		p, ok := b.pending[f.MID]
		delete(b.pending, f.MID)
		b.pendingBytes -= len(p.frame)
		if b.waiters.Waiting() && b.roomLocked() {
			b.waiters.Wake()
		}
		b.mu.Unlock()
		if !ok {
			return nil // a duplicate answer to a re-sent publish
		}
		if f.T == link.OpAck {
			b.h.Ack(f.MID, f.Room, f.Seq)
		} else {
			b.h.Nack(f.MID, protocol.Errorf(f.Code, "%s", f.Error))
		}
	case link.OpPresence:
		if f.Member == nil {
			return fmt.Errorf("presence frame without member")
		}
		b.h.Presence(f.Room, f.Event, *f.Member)
	case link.OpFetched:
		b.mu.Lock()
		_, ok := b.fetches[f.Req]
		delete(b.fetches, f.Req)
		b.mu.Unlock()
		switch {
		case !ok:
		case f.Code != "":
			b.h.Fetched(f.Req, nil, 0, fmt.Errorf("relayer refused the fetch (%s): %s", f.Code, f.Error))
		default:
			b.h.Fetched(f.Req, f.Msgs, f.First, nil)
		}
	default:
		b.log.Warn("relay link: unknown frame ignored", "op", f.T)
	}
	return nil
}
