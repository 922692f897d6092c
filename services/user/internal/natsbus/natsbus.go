// Package natsbus is a bus.Bus on a NATS JetStream cluster: the relay tier
// without ws-relayer, replicated by JetStream.
//
// Every room's messages are in one stream, each under a subject of its own
// that ends with its number in the room: wschat.r.<room>.<seq>. An
// instance numbers a publish itself (the room's last seq plus one) and
// publishes it with the stream sequence of the room's last message as the
// expected last sequence of the subjects wschat.r.<room>.*; JetStream stores
// it only if no other message of the room came in between, so each room's
// numbers are gapless and the same on every instance, whoever publishes.
// On a conflict the instance reads the room's last message and tries again.
// A publish is acknowledged once JetStream has stored it on a quorum of
// the stream's replicas. Its Nats-Msg-Id (the client's session and chat
// id, else the instance and mid) makes a re-send within the stream's
// duplicate window the same message. A room's number maps to its message
// by subject, so a recovery from since starts where since+1 is stored.
//
// Presence is a key-value bucket: one key per room and instance, the
// instance's members there, put again every third of the bucket's TTL
// while the instance lives; a dead instance's keys expire, and every
// watcher of the room sees its members leave.
//
// The stream's creation time names its numbering (the epoch): a stream
// lost and made anew is a restart, handled as a relayer's new log is.
package natsbus

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// Config configures the bus.
type Config struct {
	URLs     []string // seed servers: nats://host:4222
	Instance string
	// Options authenticate and secure the connection (user and password,
	// a token, a creds or nkey file, TLS); see app's config.
	Options []nats.Option
	// Stream and Bucket name the stream of messages and the presence
	// bucket; Replicas is their replication (3 on a cluster of three).
	Stream   string
	Bucket   string
	Replicas int
	// MaxBytes and MaxAge bound what the stream keeps (oldest first);
	// zero: no bound.
	MaxBytes int64
	MaxAge   time.Duration
	// DedupWindow is how long a publish's id is remembered: a re-send
	// within it is the first one.
	DedupWindow time.Duration
	// MaxConsumers bounds the consumers of the message stream and of the
	// presence bucket's, counted over every instance: each holds one of
	// each per room it has members in. Without it a server applies its
	// own default (1,000 per stream on nats-server 2.15), which two
	// instances with 500 rooms each reach.
	MaxConsumers int
	// PresenceTTL is how long a vanished instance's members stay.
	PresenceTTL time.Duration
	// PendingMax bounds the publishes not yet acknowledged; past it,
	// Publish waits up to PublishWait for room, then refuses with
	// bus.ErrUnavailable: a cluster that falls behind slows its publishers
	// down (their readers wait, and TCP slows the clients) before their
	// chats are refused. PublishWait 0 refuses at once.
	PendingMax  int
	PublishWait time.Duration
	// HistoryLimit bounds a fetch's messages and a new subscription's
	// tail; CatchUpMax a resumed subscription's catch-up (0: no bound).
	HistoryLimit int
	CatchUpMax   int
	// PublishTimeout bounds how long a publish may wait to reach the
	// cluster (no connection): then it is refused as unavailable. One that
	// reached it and waits that long for an answer (no quorum) is sent
	// again until answered, and new ones are refused meanwhile (Publish).
	PublishTimeout time.Duration
	// Timeout bounds one request to the cluster.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Bus is a bus.Bus over NATS JetStream.
type Bus struct {
	cfg Config
	h   bus.Handler
	log *slog.Logger

	ready atomic.Bool
	// resync asks Run to synchronise again: a room's delivery failed, or
	// the stream went away.
	resync atomic.Bool

	mu      sync.Mutex
	js      jetstream.JetStream
	stream  jetstream.Stream
	kv      jetstream.KeyValue
	heads   jetstream.KeyValue // each room's last number, kept past the stream's limits
	epoch   string
	rooms   map[string]*room
	pending int // publishes not yet answered
	// stuck counts the publishes sent and unanswered for longer than
	// PublishTimeout: while any is, new ones are refused (Publish).
	stuck int
	// waiters wait in Publish for room; woken once answers bring pending
	// to nine tenths of PendingMax, or when publishes are refused (stuck,
	// or the bus stopped).
	waiters bus.Waiters
	stopped chan struct{}        // closed when Run returns
	pubs    map[string]*pubQueue // by room: this instance's publishes, in order
	wake    chan struct{}        // capacity 1: the connection changed
	// known keeps a subscribed room's head after its queue emptied, so
	// that its next publish need not ask the cluster for it first.
	known map[string]roomHead
	// dirty holds the rooms whose presence key must be written, with
	// their members then; presenceWake tells writePresence.
	dirty        map[string][]protocol.Member
	presenceWake chan struct{}
}

var _ bus.Bus = (*Bus)(nil)

// New returns a NATS bus delivering to h; Run connects it.
func New(cfg Config, h bus.Handler) *Bus {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	return &Bus{
		cfg: cfg, h: h, log: cfg.Logger,
		rooms:        map[string]*room{},
		pubs:         map[string]*pubQueue{},
		known:        map[string]roomHead{},
		wake:         make(chan struct{}, 1),
		presenceWake: make(chan struct{}, 1),
		stopped:      make(chan struct{}),
	}
}

// Ready reports whether the cluster is reachable and the bus synchronised.
func (b *Bus) Ready() bool { return b.ready.Load() }

// token is name as one subject token (or KV key part): base64url, which
// has no '.', '*', '>' or white space.
func token(name string) string { return base64.RawURLEncoding.EncodeToString([]byte(name)) }

func (b *Bus) roomFilter(room string) string { return "wschat.r." + token(room) + ".*" }
func (b *Bus) msgSubject(room string, seq uint64) string {
	return "wschat.r." + token(room) + "." + strconv.FormatUint(seq, 10)
}

// seqOf reads a message's number in its room from its subject.
func seqOf(subject string) (uint64, error) {
	i := strings.LastIndexByte(subject, '.')
	return strconv.ParseUint(subject[i+1:], 10, 64)
}

// Run connects to the cluster, makes the stream and bucket if they are not
// there, and keeps the bus synchronised across reconnects until ctx ends.
func (b *Bus) Run(ctx context.Context) error {
	opts := append([]nats.Option{
		nats.Name("ws-user " + b.cfg.Instance),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { b.signal() }),
		nats.ReconnectHandler(func(*nats.Conn) { b.signal() }),
		nats.RetryOnFailedConnect(true),
	}, b.cfg.Options...)
	nc, err := nats.Connect(strings.Join(b.cfg.URLs, ","), opts...)
	if err != nil {
		return fmt.Errorf("nats: connect: %w", err)
	}
	defer nc.Close()
	defer func() {
		b.mu.Lock()
		close(b.stopped)
		b.waiters.Wake() // waiting publishers refuse
		b.mu.Unlock()
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("nats: jetstream: %w", err)
	}
	b.mu.Lock()
	b.js = js
	b.mu.Unlock()
	b.signal()
	presenceDone := make(chan struct{})
	pctx, stopPresence := context.WithCancel(ctx)
	go func() {
		defer close(presenceDone)
		b.writePresence(pctx)
	}()
	defer func() {
		stopPresence()
		<-presenceDone
	}()
	up := false
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	// An instance that only receives would not notice a stream deleted
	// and made anew (its consumers follow the new one): it looks.
	check := time.NewTicker(2 * time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			b.down()
			return nil
		case <-b.wake:
		case <-retry.C:
		case <-check.C:
			if up {
				b.checkEpoch(ctx)
			}
			continue
		}
		if !nc.IsConnected() {
			if up {
				up = false
				b.down()
			}
			continue
		}
		if b.resync.Swap(false) && up {
			up = false
			b.down()
		}
		if up {
			continue
		}
		if err := b.sync(ctx); err != nil {
			b.log.Warn("nats: cannot synchronise; retrying", "err", err)
			retry.Reset(time.Second)
			continue
		}
		up = true
	}
}

func (b *Bus) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// sync makes sure the stream and bucket exist, notices a stream made anew
// (Restarted), and resubscribes every room the hub has.
func (b *Bus) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*b.cfg.Timeout)
	defer cancel()
	stream, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       b.cfg.Stream,
		Subjects:   []string{"wschat.r.>"},
		Storage:    jetstream.FileStorage,
		Replicas:   b.cfg.Replicas,
		MaxBytes:   max(b.cfg.MaxBytes, -1),
		MaxAge:     b.cfg.MaxAge,
		Duplicates: b.cfg.DedupWindow,
		Discard:    jetstream.DiscardOld,
		// A server's default applies when this is 0 or -1 (unbounded).
		MaxConsumers: max(b.cfg.MaxConsumers, 0),
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", b.cfg.Stream, err)
	}
	kv, err := b.presenceBucket(ctx)
	if err != nil {
		return fmt.Errorf("presence bucket %s: %w", b.cfg.Bucket, err)
	}
	heads, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   b.cfg.Stream + "_heads",
		Replicas: b.cfg.Replicas,
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("heads bucket %s_heads: %w", b.cfg.Stream, err)
	}
	epoch := strconv.FormatInt(stream.CachedInfo().Created.UnixNano(), 36)
	b.mu.Lock()
	restarted := b.epoch != "" && b.epoch != epoch
	b.stream, b.kv, b.heads, b.epoch = stream, kv, heads, epoch
	b.mu.Unlock()
	if restarted {
		b.log.Warn("nats: the stream is new: its numbering started over", "stream", b.cfg.Stream)
		b.h.Restarted()
	}
	// Ready before the hub's state is read: a room the hub makes meanwhile
	// is subscribed by its own Subscribe (twice at most: harmless).
	b.ready.Store(true)
	interests := b.h.State()
	b.h.LinkState(true)
	for _, in := range interests {
		b.Subscribe(in)
	}
	b.mu.Lock()
	for _, q := range b.pubs {
		q.kick()
	}
	b.mu.Unlock()
	b.log.Info("nats: up", "stream", b.cfg.Stream, "rooms", len(interests))
	return nil
}

// presenceBucket makes or binds the presence bucket, its stream allowing
// MaxConsumers watchers. nats.go makes a bucket's stream with no bound of
// its own, so the server's default applies; the bound is set after.
// Binding a bucket that already has it leaves it alone: an update would
// put the default back for a moment, refusing other instances' watches.
func (b *Bus) presenceBucket(ctx context.Context) (jetstream.KeyValue, error) {
	name := "KV_" + b.cfg.Bucket // nats.go's name for a bucket's stream
	if st, err := b.js.Stream(ctx, name); err == nil {
		// What CreateOrUpdateKeyValue below would set, as nats.go maps
		// the bucket's settings to its stream's.
		c := st.CachedInfo().Config
		if c.MaxAge == b.cfg.PresenceTTL && c.Replicas == b.cfg.Replicas && c.MaxConsumers == b.cfg.MaxConsumers &&
			c.Storage == jetstream.MemoryStorage && c.AllowMsgTTL && c.SubjectDeleteMarkerTTL == b.cfg.PresenceTTL {
			return b.js.KeyValue(ctx, b.cfg.Bucket)
		}
	}
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         b.cfg.Bucket,
		TTL:            b.cfg.PresenceTTL,
		Replicas:       b.cfg.Replicas,
		Storage:        jetstream.MemoryStorage,
		LimitMarkerTTL: b.cfg.PresenceTTL,
	})
	if err != nil || b.cfg.MaxConsumers <= 0 {
		return kv, err
	}
	st, err := b.js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	c := st.CachedInfo().Config
	c.MaxConsumers = b.cfg.MaxConsumers
	if _, err := b.js.UpdateStream(ctx, c); err != nil {
		return nil, fmt.Errorf("consumer bound of %s: %w", name, err)
	}
	return kv, nil
}

// down stops every room's delivery; the next sync starts them again.
func (b *Bus) down() {
	b.ready.Store(false)
	b.mu.Lock()
	for _, r := range b.rooms {
		r.stop()
	}
	b.mu.Unlock()
	b.h.LinkState(false)
}

// checkEpoch asks for a resync when the stream is gone or not the one
// the bus synchronised with.
func (b *Bus) checkEpoch(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	b.mu.Lock()
	js, epoch := b.js, b.epoch
	b.mu.Unlock()
	st, err := js.Stream(ctx, b.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		b.lost("stream check", err)
	case err == nil && strconv.FormatInt(st.CachedInfo().Created.UnixNano(), 36) != epoch:
		b.lost("stream check", errors.New("the stream was made anew"))
	}
}

// lost makes Run synchronise every room again: what the cluster holds for
// them changed under the bus (a failed consumer, a deleted stream).
func (b *Bus) lost(why string, err error) {
	if b.resync.CompareAndSwap(false, true) {
		b.log.Warn("nats: synchronising again", "why", why, "err", err)
	}
	b.signal()
}

// ErrDown is the error of a fetch while the cluster is unreachable.
var ErrDown = errors.New("the NATS cluster is unreachable")

// state returns what a request needs, or ErrDown.
func (b *Bus) state() (jetstream.Stream, jetstream.KeyValue, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stream == nil || !b.ready.Load() {
		return nil, nil, "", ErrDown
	}
	return b.stream, b.kv, b.epoch, nil
}

// head returns the room's last message number and its stream sequence
// (zeros for a room without messages).
func (b *Bus) head(ctx context.Context, stream jetstream.Stream, room string) (seq, sseq uint64, err error) {
	m, err := stream.GetLastMsgForSubject(ctx, b.roomFilter(room))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// None kept (or none ever): the room's number goes on from its
		// recorded head, never back to 1, or instances that saw the
		// old numbers would take the new messages for old ones.
		last, err := b.recordedHead(ctx, room)
		return last, 0, err
	}
	if err != nil {
		return 0, 0, err
	}
	seq, err = seqOf(m.Subject)
	return seq, m.Sequence, err
}

// headKey is room's key in the heads bucket, in this stream's numbering.
func (b *Bus) headKey(room string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.epoch + "." + token(room)
}

// recordedHead returns the last number recorded for room (0: none).
func (b *Bus) recordedHead(ctx context.Context, room string) (uint64, error) {
	b.mu.Lock()
	heads := b.heads
	b.mu.Unlock()
	if heads == nil {
		return 0, ErrDown
	}
	e, err := heads.Get(ctx, b.headKey(room))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(e.Value()), 10, 64)
}

// recordHead raises q's room's recorded head to seq, never lowering it
// (instances record concurrently, in any order; a re-send is acknowledged
// with its first, older, number): not at all when q wrote seq or more
// itself, by the revision q last wrote when it has one (no one wrote the
// key since), else after reading the key. Called by q's sendAll.
func (b *Bus) recordHead(q *pubQueue, seq uint64) {
	if seq <= q.headVal {
		return // the key holds what q wrote, or more
	}
	b.mu.Lock()
	heads := b.heads
	b.mu.Unlock()
	if heads == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	key, val := b.headKey(q.room), []byte(strconv.FormatUint(seq, 10))
	wrote := func(rev, v uint64) { q.headRev, q.headVal = rev, v }
	if q.headRev > 0 {
		if rev, err := heads.Update(ctx, key, val, q.headRev); err == nil {
			wrote(rev, seq)
			return
		}
		q.headRev = 0
	}
	for range 10 {
		e, err := heads.Get(ctx, key)
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if rev, err = heads.Create(ctx, key, val); err == nil {
				wrote(rev, seq)
				return
			}
		case err != nil:
		default:
			cur, perr := strconv.ParseUint(string(e.Value()), 10, 64)
			if perr == nil && cur >= seq {
				return
			}
			if rev, err = heads.Update(ctx, key, val, e.Revision()); err == nil {
				wrote(rev, seq)
				return
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	b.log.Warn("nats: room head not recorded", "room", q.room, "seq", seq)
}

// first returns the room's oldest kept message number and its stream
// sequence; for a room with none kept, after+1 and 0.
func (b *Bus) first(ctx context.Context, stream jetstream.Stream, room string, after uint64) (seq, sseq uint64, err error) {
	m, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(b.roomFilter(room)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return after + 1, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	seq, err = seqOf(m.Subject)
	return seq, m.Sequence, err
}

// decode makes a stored message (protocol.AppendMessage's JSON) the
// protocol's; its number and time are the stream's.
func decode(room string, seq uint64, data []byte, at time.Time) (protocol.Message, error) {
	var m protocol.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("stored message %d of room %q: %w", seq, room, err)
	}
	m.Room, m.Seq, m.TS = room, seq, at.UnixMilli()
	return m, nil
}
