// Package sequencer is the core of ws-relayer: the relay link endpoint and
// the single goroutine that owns every room, orders every message, writes
// it to the log and routes it to the instances subscribed to its room.
//
// Link readers hand decoded frames to the sequencer through one channel. It
// drains what is available (a batch), applies it in order, appends the new
// messages to the log and syncs once, and only then delivers the batch's
// output: nothing is acknowledged or delivered before it is durable, so a
// restart never reuses a sequence number anyone has seen.
package sequencer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// Sanity bounds on what a gateway may send. Policy (the real limits shown
// to clients) lives in ws-user; these only keep a confused peer from
// growing the relayer's memory or log without bound, so they are generous.
const (
	maxRoomBytes  = 256
	maxTextBytes  = 64 << 10
	maxFieldBytes = 256 // mid, member and client ids, nicknames, instance ids
	maxFetch      = 1000
	// minMsgBytes is less than the JSON of any message takes.
	minMsgBytes = 32
	// maxBatch bounds the frames applied per log sync, and so the latency
	// a batch adds to the first frame in it.
	maxBatch = 4096
)

// Config configures a Sequencer.
type Config struct {
	Secret        string
	HistoryLimit  int           // messages kept in memory per room
	DedupWindow   int           // publishes remembered for de-duplication beyond the rings
	PresenceGrace time.Duration // how long a dropped instance's members stay
	QueueBytes    int           // per-link output limit
	MaxFrameBytes int64         // per-link read limit
	// InflightBytes bounds what one link has read and the sequencer not
	// yet applied: past it (by at most the message that crossed it), the
	// link's reader waits, so a fast peer queues in its own buffers, not
	// here. A sequencer stalled longer than the keepalive loses its links
	// meanwhile (their pongs wait unread). Zero means 2 × MaxFrameBytes.
	InflightBytes int64
	PingInterval  time.Duration
	// FlushDelay, when positive, makes a link's writer wait that long
	// after output appears before sending it, so that more goes in one
	// message: less CPU at moderate rates for that much latency.
	FlushDelay   time.Duration
	CompactBytes int64 // compact the log once it is at least this big
	// RetentionBytes and RetentionAge bound the history kept beyond the
	// rings: messages in the last RetentionBytes of the log and younger
	// than RetentionAge (0: no age bound) survive compaction and are
	// served from the log. RetentionBytes 0 keeps only the rings.
	RetentionBytes int64
	RetentionAge   time.Duration
	Logger         *slog.Logger
	Registry       prometheus.Registerer
	Now            func() time.Time // message timestamps; time.Now when nil
}

// Sequencer is the relayer core. Serve links with ServeHTTP, drive it with
// Run.
type Sequencer struct {
	cfg      Config
	log      *slog.Logger
	st       *store.Log
	m        *metrics
	authHash [sha256.Size]byte

	in      chan event
	stopped chan struct{} // closed when Run stops taking events
	ready   atomic.Bool

	mu      sync.Mutex // guards live and closing
	live    map[*conn]struct{}
	closing bool
	links   sync.WaitGroup

	// Owned by the Run goroutine.
	rooms     map[string]*room
	insts     map[string]*instance
	touched   []*conn
	liveBytes int64 // log bytes of the retained messages
	nextCheck int64 // log size at which compaction is considered next
	nsubs     int
	nmembers  int
	scratch   []byte
	msgsBuf   [][]byte
	recent    *recentPubs
	// settleUntil ends the presence grace after this process's start:
	// until then the instances that were connected before it may not
	// have re-synced, so presence lacks their members (see link.Frame.Settle).
	settleUntil time.Time
	// History on disk (disk.go).
	marks      []ageMark
	maxTS      int64 // newest message timestamp
	reader     *store.Reader
	rd         diskReader
	batchReads map[*conn]*readJob // this batch's reads, by link
	readOrder  []*readJob         // the same, in order
	nextJob    uint64
	reads      int // jobs out with the reader
}

// instance is a ws-user as the sequencer knows it; it outlives its links
// for PRESENCE_GRACE.
type instance struct {
	id     string
	link   *conn // nil while disconnected
	synced bool  // link has sent its sync: live traffic may flow to it
	gen    uint64
	grace  *time.Timer
	rooms  map[*room]struct{} // subscribed or with members present
	// catching holds the rooms whose subscribed answer waits for a read
	// of their history (by job id): until it is staged, the room's live
	// frames skip this instance (the answer will carry them).
	catching map[*room]uint64
	// syncParts are the parts of a sync received so far (link.OpSync
	// with More), applied with the last; parts counts their entries.
	syncParts []link.RoomState
	parts     int
}

// maxSyncEntries bounds the rooms and members a sync's parts may hold
// before the last arrives: what one instance could have (its connections
// times their rooms) with room to spare, not what a broken peer can send.
const maxSyncEntries = 1 << 23

type eventKind uint8

const (
	evFrames eventKind = iota
	evOpen
	evClosed
	evGrace
	evRead // a readJob back from the reader
)

type event struct {
	kind   eventKind
	conn   *conn
	frames []*link.Frame
	bytes  int64 // of the link message the frames came in
	inst   *instance
	gen    uint64
	job    *readJob
}

// New replays the log into memory and returns a sequencer that owns st
// from now on (Run closes it).
func New(cfg Config, st *store.Log) (*Sequencer, error) {
	if cfg.InflightBytes <= 0 {
		cfg.InflightBytes = 32 << 20
		if cfg.MaxFrameBytes > 0 {
			cfg.InflightBytes = 2 * cfg.MaxFrameBytes
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s := &Sequencer{
		cfg:        cfg,
		log:        cfg.Logger,
		st:         st,
		m:          m,
		authHash:   sha256.Sum256([]byte("Bearer " + cfg.Secret)),
		in:         make(chan event, 1024),
		stopped:    make(chan struct{}),
		live:       map[*conn]struct{}{},
		rooms:      map[string]*room{},
		insts:      map[string]*instance{},
		recent:     newRecentPubs(cfg.DedupWindow),
		rd:         diskReader{wake: make(chan struct{}, 1), done: make(chan struct{})},
		batchReads: map[*conn]*readJob{},
	}
	start := time.Now()
	var records, skipped int
	err = st.Replay(func(p []byte) error {
		if s.replay(p) {
			records++
		} else {
			skipped++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("replay log: %w", err)
	}
	if d := st.Damage(); d != nil {
		m.lostMsgs.Add(float64(d.LostMessages()))
		m.lostBytes.Add(float64(d.LostBytes()))
		m.salvaged.Add(float64(d.Salvaged))
	}
	if skipped > 0 {
		s.log.Error("log records skipped during replay: intact on disk but unusable (a bug or a foreign file)", "skipped", skipped)
	}
	if s.reader, err = st.OpenReader(); err != nil {
		return nil, err
	}
	s.nextCheck = cfg.CompactBytes
	s.updateGauges()
	s.log.Info("log replayed", "records", records, "rooms", len(s.rooms),
		"log_bytes", st.Size(), "took", time.Since(start).Round(time.Millisecond))
	s.settleUntil = time.Now().Add(cfg.PresenceGrace)
	// Ready from here: links that connect before Run starts queue their
	// events for it. (Ready only once Run ran raced with the listener:
	// /readyz could say 503 to the first caller.)
	s.ready.Store(true)
	return s, nil
}

func (s *Sequencer) replay(p []byte) bool {
	off := s.st.ReplayOffset()
	defer s.markAge(off + store.RecordSize(p))
	rec, err := store.DecodeRecord(p)
	if err == nil && rec.KeyOnly() {
		if protocol.ValidName(rec.Room, maxRoomBytes) != nil || rec.Seq == 0 {
			return false
		}
		s.recent.add(keyOf(rec.Inst, rec.MID, rec.Sess, rec.CID), rec.Room, rec.Seq)
		return true
	}
	if err != nil || protocol.ValidName(rec.Msg.Room, maxRoomBytes) != nil {
		return false
	}
	r := s.room(rec.Msg.Room)
	if rec.Msg.Seq <= r.last {
		return false
	}
	// The same encoder as for live messages, so a replayed ring entry holds
	// the bytes the message was first delivered with.
	js := protocol.AppendMessage(nil, &rec.Msg)
	r.last, r.lastTS = rec.Msg.Seq, max(r.lastTS, rec.Msg.TS)
	s.retain(r, entry{seq: rec.Msg.Seq, key: keyOf(rec.Inst, rec.MID, rec.Sess, rec.Msg.ID), js: js, size: store.RecordSize(p), off: off})
	s.indexed(r, rec.Msg.Seq, off, rec.Msg.TS)
	return true
}

func (s *Sequencer) retain(r *room, e entry) {
	s.recent.add(e.key, r.name, e.seq)
	s.liveBytes += e.size
	if old, ok := r.push(e, s.cfg.HistoryLimit); ok {
		s.liveBytes -= old.size
	}
}

// Ready reports whether the sequencer takes links: from New, its log
// replayed, until it stops (its context ended or the log failed).
func (s *Sequencer) Ready() bool { return s.ready.Load() }

// send hands an event to the sequencer; false once it has stopped.
func (s *Sequencer) send(ev event) bool {
	select {
	case <-s.stopped:
		return false
	default:
	}
	select {
	case s.in <- ev:
		return true
	case <-s.stopped:
		return false
	}
}

func (s *Sequencer) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.live[c] = struct{}{}
	s.links.Add(1)
	s.m.links.Inc()
	return true
}

func (s *Sequencer) unregister(c *conn) {
	s.mu.Lock()
	delete(s.live, c)
	s.mu.Unlock()
	s.m.links.Dec()
	s.links.Done()
}

// Run sequences until ctx ends or the log fails. Then it closes every
// link (after delivering what it owes them) with 1012 and closes the log.
func (s *Sequencer) Run(ctx context.Context) error {
	go s.readLoop()
	batch := make([]event, 0, 256)
	for {
		select {
		case <-ctx.Done():
			return s.shutdown(nil)
		case ev := <-s.in:
			batch = append(batch[:0], ev)
		}
		n := len(batch[0].frames)
	drain:
		for n < maxBatch {
			select {
			case ev := <-s.in:
				batch = append(batch, ev)
				n += len(ev.frames)
			default:
				break drain
			}
		}
		err := s.apply(batch)
		clear(batch) // do not pin frames until the slot is reused
		if err != nil {
			return s.shutdown(err)
		}
	}
}

// apply runs one batch: state changes in order, one log sync, then output.
func (s *Sequencer) apply(batch []event) error {
	frames := 0
	for _, ev := range batch {
		frames += len(ev.frames)
		s.handle(ev)
	}
	if frames > 0 {
		s.m.batch.Observe(float64(frames))
	}
	if s.st.Pending() {
		start := time.Now()
		if err := s.st.Sync(); err != nil {
			// Deliver nothing of this batch: the relayer stops and a
			// restart replays whatever really reached the disk.
			return fmt.Errorf("sequencer: log write failed, stopping: %w", err)
		}
		s.m.fsync.Observe(time.Since(start).Seconds())
		s.markAge(s.st.Size())
	}
	// Gauges first, so whoever sees this batch's output sees them too.
	s.updateGauges()
	for _, c := range s.touched {
		c.deliver(c.staged)
		clear(c.staged)
		c.staged, c.stagedBytes = c.staged[:0], 0
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	s.dispatchReads()
	s.maybeCompact()
	return nil
}

func (s *Sequencer) updateGauges() {
	s.m.rooms.Set(float64(len(s.rooms)))
	s.m.subs.Set(float64(s.nsubs))
	s.m.members.Set(float64(s.nmembers))
	s.m.logBytes.Set(float64(s.st.Size()))
}

func (s *Sequencer) shutdown(cause error) error {
	s.ready.Store(false)
	close(s.stopped)
	code, reason := websocket.StatusServiceRestart, "relayer restarting"
	if cause != nil {
		code, reason = websocket.StatusInternalError, "relayer storage failure"
	}
	s.mu.Lock()
	s.closing = true
	for c := range s.live {
		// Flush even after a log failure: everything queued was on
		// disk before it was queued.
		c.close(code, reason, true, dropShutdown)
	}
	s.mu.Unlock()
	for _, inst := range s.insts {
		if inst.grace != nil {
			inst.grace.Stop()
		}
	}
	<-s.rd.done
	if s.reader != nil {
		s.reader.Close()
	}
	if err := s.st.Close(); err != nil {
		return errors.Join(cause, fmt.Errorf("close log: %w", err))
	}
	return cause
}

// WaitLinks waits until every link handler has returned, or ctx ends and
// then cuts the remaining connections.
func (s *Sequencer) WaitLinks(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.links.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.live)
	for c := range s.live {
		c.kill()
	}
	s.mu.Unlock()
	<-done
	return fmt.Errorf("%d relay links did not close in time and were cut", n)
}

// stage queues b for c; it is delivered after the batch's sync.
func (s *Sequencer) stage(c *conn, b []byte) {
	if len(c.staged) == 0 {
		s.touched = append(s.touched, c)
	}
	c.staged = append(c.staged, b)
	c.stagedBytes += len(b)
}

// broadcast stages b for every subscriber of r whose link is synced,
// except skip, and reports how many got it.
func (s *Sequencer) broadcast(r *room, b []byte, skip *instance) int {
	n := 0
	for inst := range r.subs {
		if inst != skip && inst.link != nil && inst.synced && inst.catching[r] == 0 {
			s.stage(inst.link, b)
			n++
		}
	}
	return n
}

func (s *Sequencer) room(name string) *room {
	r := s.rooms[name]
	if r == nil {
		r = newRoom(name)
		s.rooms[name] = r
	}
	return r
}

func (s *Sequencer) gcRoom(r *room) {
	if r.idle() {
		delete(s.rooms, r.name)
	}
}

func (s *Sequencer) handle(ev event) {
	switch ev.kind {
	case evOpen:
		c := ev.conn
		inst := s.insts[c.inst]
		if inst == nil {
			inst = &instance{id: c.inst, rooms: map[*room]struct{}{}}
			s.insts[c.inst] = inst
		}
		if old := inst.link; old != nil {
			old.log.Info("relay link replaced by a newer link of the same instance")
			old.close(websocket.StatusPolicyViolation, "replaced by a newer link of the same instance", false, dropReplaced)
		}
		if inst.grace != nil {
			inst.grace.Stop()
			inst.grace = nil
		}
		inst.gen++
		inst.link, inst.synced = c, false
		inst.syncParts, inst.parts = nil, 0
		inst.catching = nil
	case evClosed:
		inst := s.insts[ev.conn.inst]
		if inst == nil || inst.link != ev.conn {
			return // replaced already
		}
		inst.link, inst.synced = nil, false
		inst.catching = nil
		gen := inst.gen
		inst.grace = time.AfterFunc(s.cfg.PresenceGrace, func() {
			s.send(event{kind: evGrace, inst: inst, gen: gen})
		})
	case evGrace:
		inst := ev.inst
		if s.insts[inst.id] != inst || inst.link != nil || inst.gen != ev.gen {
			return // it came back in time
		}
		inst.grace = nil
		s.log.Info("instance did not reconnect within the presence grace; removing its members", "instance", inst.id, "rooms", len(inst.rooms))
		for r := range inst.rooms {
			s.unsubscribe(inst, r)
		}
		delete(s.insts, inst.id)
	case evRead:
		s.read(ev.job)
	case evFrames:
		ev.conn.applied(ev.bytes)
		inst := s.insts[ev.conn.inst]
		if inst == nil || inst.link != ev.conn {
			// A replaced link's last words: its instance re-sends
			// what matters after its sync on the new link.
			return
		}
		for _, f := range ev.frames {
			s.frame(inst, f)
		}
	}
}

func (s *Sequencer) frame(inst *instance, f *link.Frame) {
	switch f.T {
	case link.OpSync:
		for _, rs := range f.Rooms {
			inst.parts += 1 + len(rs.Members)
		}
		if inst.parts > maxSyncEntries {
			inst.link.log.Warn("relay link sync over its bound; closing it", "entries", inst.parts, "limit", maxSyncEntries)
			inst.syncParts, inst.parts = nil, 0
			inst.link.close(websocket.StatusPolicyViolation, "sync too large", false, dropProtocol)
			return
		}
		if f.More {
			inst.syncParts = append(inst.syncParts, f.Rooms...)
			return
		}
		states := append(inst.syncParts, f.Rooms...)
		inst.syncParts, inst.parts = nil, 0
		s.sync(inst, states)
	case link.OpSub:
		for _, rs := range f.Rooms {
			if err := protocol.ValidName(rs.Room, maxRoomBytes); err != nil {
				inst.link.log.Warn("sub of an invalid room ignored", "err", err)
				continue
			}
			s.subscribe(inst, s.room(rs.Room), rs)
		}
	case link.OpUnsub:
		if r := s.rooms[f.Room]; r != nil {
			s.unsubscribe(inst, r)
		}
	case link.OpJoin:
		s.join(inst, f)
	case link.OpLeave:
		s.leave(inst, f)
	case link.OpPub:
		s.publish(inst, f)
	case link.OpFetch:
		s.fetch(inst, f)
	default:
		// Tolerated so that a newer gateway can talk to an older relayer.
		inst.link.log.Warn("unknown link op ignored", "op", f.T)
	}
}

// sync makes the relayer's view of inst exactly what it lists.
func (s *Sequencer) sync(inst *instance, states []link.RoomState) {
	inst.synced = true
	want := make(map[*room]link.RoomState, len(states))
	order := make([]*room, 0, len(states))
	for _, rs := range states {
		if err := protocol.ValidName(rs.Room, maxRoomBytes); err != nil {
			inst.link.log.Warn("sync: invalid room ignored", "err", err)
			continue
		}
		r := s.room(rs.Room)
		if w, dup := want[r]; dup {
			// A room split over parts: the members of all.
			w.Members = slices.Concat(w.Members, rs.Members)
			want[r] = w
			continue
		}
		order = append(order, r)
		want[r] = rs
	}
	for r := range inst.rooms {
		if _, ok := want[r]; !ok {
			s.unsubscribe(inst, r)
		}
	}
	for _, r := range order {
		s.subscribe(inst, r, want[r])
	}
}

// subscribe subscribes inst to r, makes its members there exactly
// rs.Members and answers with subscribed. Presence changes go to the other
// subscribers only: inst learns the whole list from the answer.
func (s *Sequencer) subscribe(inst *instance, r *room, rs link.RoomState) {
	if _, ok := r.subs[inst]; !ok {
		r.subs[inst] = struct{}{}
		s.nsubs++
	}
	inst.rooms[r] = struct{}{}
	cur := r.presence[inst]
	want := make(map[string]protocol.Member, len(rs.Members))
	for _, m := range rs.Members {
		if !validMember(&m) {
			inst.link.log.Warn("member with an invalid id or nick ignored", "room", r.name)
			continue
		}
		m.Instance = inst.id
		want[m.ID] = m
	}
	for id, m := range cur {
		if _, ok := want[id]; !ok {
			s.removeMember(r, inst, id, m, inst)
		}
	}
	for _, m := range rs.Members {
		m.Instance = inst.id
		if w, ok := want[m.ID]; !ok || w != m {
			continue // invalid, or a duplicate id superseded later in the list
		}
		if cur := r.presence[inst]; cur == nil || cur[m.ID] != m {
			s.putMember(r, inst, m, inst)
		}
	}
	s.answerSubscribed(inst, r, rs)
}

// answerSubscribed answers a subscription with its catch-up: at once from
// the ring, or, when it reaches further back, once the log is read.
func (s *Sequencer) answerSubscribed(inst *instance, r *room, rs link.RoomState) {
	delete(inst.catching, r)
	oldest := s.oldest(r, s.cutoff())
	from := link.CatchUpFrom(r.last, rs.Since, rs.Resume, rs.Tail, s.cfg.HistoryLimit)
	gap := (rs.Since > 0 || rs.Resume) && rs.Since+1 < oldest
	if ringFirst := r.first(); from+1 < ringFirst && oldest < ringFirst {
		it := &readItem{room: r, gap: gap, lo: max(from+1, oldest), hi: ringFirst - 1, back: true}
		// No more than the budget can take, at minMsgBytes each: the
		// offsets and the reader's slots of a long retention are memory.
		if n := uint64(s.cfg.QueueBytes / minMsgBytes); it.hi-it.lo >= n {
			it.lo, it.gap = it.hi-n+1, true
		}
		it.offs = r.disk.offsets(it.lo, it.hi)
		if inst.catching == nil {
			inst.catching = map[*room]uint64{}
		}
		inst.catching[r] = s.queueRead(inst.link, it).id
		return
	}
	msgs := r.msgs(r.index(from), len(r.ring), s.msgsBuf[:0])
	s.stageSubscribed(inst, r, msgs, gap)
	clear(msgs)
	s.msgsBuf = msgs[:0]
}

func (s *Sequencer) stageSubscribed(inst *instance, r *room, msgs [][]byte, gap bool) {
	f := link.Frame{T: link.OpSubscribed, Room: r.name, Seq: r.last, First: s.oldest(r, s.cutoff()), Gap: gap, Members: r.members()}
	if d := time.Until(s.settleUntil); d > 0 {
		f.Settle = int64((d + time.Millisecond - 1) / time.Millisecond)
	}
	s.stageWithMsgs(inst, &f, msgs)
}

// stageWithMsgs stages f for inst with msgs spliced in (link.AppendWithMsgs).
func (s *Sequencer) stageWithMsgs(inst *instance, f *link.Frame, msgs [][]byte) {
	b, err := link.AppendWithMsgs(nil, f, msgs)
	if err != nil {
		inst.link.log.Error("cannot encode "+f.T, "room", f.Room, "err", err)
		return
	}
	s.stage(inst.link, b)
}

func (s *Sequencer) unsubscribe(inst *instance, r *room) {
	if _, ok := r.subs[inst]; ok {
		delete(r.subs, inst)
		s.nsubs--
	}
	delete(inst.catching, r)
	for id, m := range r.presence[inst] {
		s.removeMember(r, inst, id, m, inst)
	}
	delete(inst.rooms, r)
	s.gcRoom(r)
}

// putMember adds or updates m and tells r's subscribers except skip.
func (s *Sequencer) putMember(r *room, inst *instance, m protocol.Member, skip *instance) {
	ms := r.presence[inst]
	if ms == nil {
		ms = map[string]protocol.Member{}
		r.presence[inst] = ms
	}
	if _, ok := ms[m.ID]; !ok {
		s.nmembers++
	}
	ms[m.ID] = m
	s.presence(r, protocol.PresenceJoin, m, skip)
}

func (s *Sequencer) removeMember(r *room, inst *instance, id string, m protocol.Member, skip *instance) {
	ms := r.presence[inst]
	delete(ms, id)
	s.nmembers--
	if len(ms) == 0 {
		delete(r.presence, inst)
	}
	s.presence(r, protocol.PresenceLeave, m, skip)
}

func (s *Sequencer) presence(r *room, event string, m protocol.Member, skip *instance) {
	s.broadcast(r, link.AppendMember(nil, link.OpPresence, r.name, event, &m), skip)
}

// join tells every subscriber of the room, the joining instance included:
// its own replica of the room's presence is kept by the same frames.
func (s *Sequencer) join(inst *instance, f *link.Frame) {
	if err := protocol.ValidName(f.Room, maxRoomBytes); err != nil || f.Member == nil || !validMember(f.Member) {
		inst.link.log.Warn("invalid join ignored", "room", f.Room)
		return
	}
	m := *f.Member
	m.Instance = inst.id
	r := s.room(f.Room)
	inst.rooms[r] = struct{}{}
	if cur, ok := r.presence[inst][m.ID]; ok && cur == m {
		return // a repeated join changes nothing
	}
	s.putMember(r, inst, m, nil)
}

func (s *Sequencer) leave(inst *instance, f *link.Frame) {
	r := s.rooms[f.Room]
	if r == nil || f.Member == nil {
		return
	}
	m, ok := r.presence[inst][f.Member.ID]
	if !ok {
		return
	}
	s.removeMember(r, inst, m.ID, m, nil)
	if _, sub := r.subs[inst]; !sub && r.presence[inst] == nil {
		delete(inst.rooms, r)
		s.gcRoom(r)
	}
}

func validMember(m *protocol.Member) bool {
	return m.ID != "" && len(m.ID) <= maxFieldBytes && utf8.ValidString(m.ID) &&
		len(m.Nick) <= maxFieldBytes && utf8.ValidString(m.Nick)
}

func (s *Sequencer) nack(inst *instance, mid, code, format string, args ...any) {
	b, err := link.Append(nil, &link.Frame{T: link.OpNack, MID: mid, Code: code, Error: fmt.Sprintf(format, args...)})
	if err == nil {
		s.stage(inst.link, b)
	}
}

// publish sequences one message. A publisher need not be subscribed.
func (s *Sequencer) publish(inst *instance, f *link.Frame) {
	if f.MID == "" || len(f.MID) > maxFieldBytes || !utf8.ValidString(f.MID) {
		s.nack(inst, f.MID, protocol.CodeBadRequest, "pub needs a mid of 1 to %d bytes of UTF-8", maxFieldBytes)
		return
	}
	if f.Msg == nil {
		s.nack(inst, f.MID, protocol.CodeBadRequest, "pub without msg")
		return
	}
	if len(f.Sess) > maxFieldBytes || !utf8.ValidString(f.Sess) {
		s.nack(inst, f.MID, protocol.CodeBadRequest, "pub's sess must be at most %d bytes of UTF-8", maxFieldBytes)
		return
	}
	m := *f.Msg
	if err := protocol.ValidName(m.Room, maxRoomBytes); err != nil {
		s.nack(inst, f.MID, protocol.CodeBadRoom, "room %v", err)
		return
	}
	switch {
	case m.Text == "":
		s.nack(inst, f.MID, protocol.CodeBadRequest, "message must not be empty")
		return
	case len(m.Text) > maxTextBytes:
		s.nack(inst, f.MID, protocol.CodeTooLarge, "message is %d bytes; the relayer's limit is %d", len(m.Text), maxTextBytes)
		return
	case !utf8.ValidString(m.Text) || !utf8.ValidString(m.From) || !utf8.ValidString(m.UID) || !utf8.ValidString(m.ID):
		s.nack(inst, f.MID, protocol.CodeBadRequest, "message fields must be valid UTF-8")
		return
	case len(m.From) > maxFieldBytes || len(m.UID) > maxFieldBytes || len(m.ID) > maxFieldBytes:
		s.nack(inst, f.MID, protocol.CodeBadRequest, "from, uid and id must be at most %d bytes", maxFieldBytes)
		return
	}
	r := s.room(m.Room)
	key := keyOf(inst.id, f.MID, f.Sess, m.ID)
	seq, ok := r.mids[key]
	if !ok {
		seq, ok = s.recent.get(key, r.name)
	}
	if ok {
		s.m.dedup.Inc()
		s.stage(inst.link, link.AppendAck(nil, r.name, f.MID, seq))
		return
	}
	// Timestamps never go backwards within a room, even if the clock does.
	m.Seq, m.TS = r.last+1, max(s.cfg.Now().UnixMilli(), r.lastTS)
	r.last, r.lastTS = m.Seq, m.TS
	frame, js := link.MsgFrame(&m)
	rec := store.AppendSessionRecord(s.scratch[:0], f.MID, inst.id, f.Sess, js)
	off := s.st.End()
	s.st.Append(rec)
	s.scratch = rec
	s.retain(r, entry{seq: m.Seq, key: key, js: js, size: store.RecordSize(rec), off: off})
	s.indexed(r, m.Seq, off, m.TS)
	s.m.msgsIn.Inc()
	s.m.msgsOut.Add(float64(s.broadcast(r, frame, nil)))
	s.stage(inst.link, link.AppendAck(nil, r.name, f.MID, m.Seq))
}

func (s *Sequencer) fetch(inst *instance, f *link.Frame) {
	limit := f.Limit
	if limit <= 0 || limit > maxFetch {
		limit = maxFetch
	}
	ans := link.Frame{T: link.OpFetched, Req: f.Req, Room: f.Room, First: 1}
	if inst.link.owes() > s.cfg.QueueBytes {
		// A fetch of a few bytes asks for up to a thousand messages: a
		// link that already owes its bound gets a refusal instead, or
		// one message of fetches could stage gigabytes in one batch.
		ans.Code, ans.Error = protocol.CodeUnavailable, "the relayer's output to this instance is over LINK_QUEUE_BYTES; fetch again later"
		b, err := link.Append(nil, &ans)
		if err == nil {
			s.stage(inst.link, b)
		}
		s.m.fetchesRefused.Inc()
		return
	}
	var msgs [][]byte
	if r := s.rooms[f.Room]; r != nil {
		oldest := s.oldest(r, s.cutoff())
		ans.First = oldest
		lo, hi := link.SeqWindow(f.After, f.Before, r.last, oldest, limit)
		if ringFirst := r.first(); lo < ringFirst && lo <= hi {
			// Partly or wholly older than the ring: read from the log.
			dhi := min(hi, ringFirst-1)
			it := &readItem{room: r, lo: lo, hi: dhi, offs: r.disk.offsets(lo, dhi), back: f.After == 0,
				fetch: &ans, tail: r.msgs(r.index(dhi), r.index(hi), nil)}
			s.queueRead(inst.link, it)
			return
		}
		msgs = r.window(f.After, f.Before, limit, s.msgsBuf[:0])
	}
	s.stageWithMsgs(inst, &ans, msgs)
	clear(msgs)
	if msgs != nil {
		s.msgsBuf = msgs[:0]
	}
}

// maybeCompact rewrites the log to what it must keep (see kept) once it is
// past COMPACT_BYTES and at least half of it would go, so a kept set
// larger than the threshold does not cause a compaction after every batch.
// It copies the kept records from the log while the sequencer waits: its
// cost grows with the retention (RETENTION_BYTES), not with the traffic.
func (s *Sequencer) maybeCompact() {
	size := s.st.Size()
	if size < s.nextCheck || s.reads > 0 {
		// With reads out, the next batch tries again: a compaction
		// moves every record the reader may be reading.
		return
	}
	cut := s.cutoff()
	if size <= 2*(size-cut+s.liveBytes) {
		s.nextCheck = size + s.cfg.CompactBytes/2
		return
	}
	if s.reader == nil {
		if s.reopen(); s.reader == nil {
			s.nextCheck = size + s.cfg.CompactBytes
			return
		}
	}
	start := time.Now()
	kept := s.kept(cut)
	moved := make([]int64, len(kept))
	var readErr error
	err := s.st.CompactChecked(s.retained(kept, moved, &readErr), func() error { return readErr })
	if err != nil {
		// Either the old log is intact, and compaction is tried again
		// after more growth, or the directory could not be synced after
		// the rename, and the log has failed: the next Sync stops the
		// relayer, before anything more is acknowledged.
		s.log.Error("log compaction failed", "err", err)
		s.nextCheck = size + s.cfg.CompactBytes
		return
	}
	s.moved(cut, kept, moved)
	// What a compaction keeps (retained messages, the window's keys) must
	// not make the next batch compact again: the log grows first.
	s.nextCheck = max(s.cfg.CompactBytes, s.st.Size()+s.cfg.CompactBytes/2)
	s.m.logBytes.Set(float64(s.st.Size()))
	s.log.Info("log compacted", "before_bytes", size, "after_bytes", s.st.Size(), "messages", len(kept),
		"took", time.Since(start).Round(time.Millisecond))
}

// retained yields what a compacted log holds: the records at the offsets
// kept (ascending, so in the order they were written: the order of
// publishing), read back from the log, then a key-only record for every
// publish in the de-duplication window, oldest first, whether or not a
// room retains its message. Replay adds the messages to the window in the
// log's order, which is not the order they were published in once the log
// of an older relayer compacted it room by room, and the key-only records
// then move the window's keys to its newest end in their true order: it
// forgets the same publishes the live window would have (those a room
// still retains are recognised by the room's ring too, but only until the
// room moves on). moved receives each kept record's new offset; a read
// that fails ends the records and is left in readErr.
func (s *Sequencer) retained(kept, moved []int64, readErr *error) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		var buf []byte
		var off int64
		sc := s.reader.Scanner()
		for i, o := range kept {
			p, err := sc.Record(o)
			if err != nil {
				*readErr = err
				return
			}
			moved[i] = off
			off += store.RecordSize(p)
			if !yield(p) {
				return
			}
		}
		for k, rs := range s.recent.all {
			buf = k.appendKeyRecord(buf[:0], rs.room, rs.seq)
			if !yield(buf) {
				return
			}
		}
	}
}
