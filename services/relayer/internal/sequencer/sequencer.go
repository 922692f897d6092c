// Package sequencer is the core of ws-relayer: the single goroutine that
// owns every room, orders every message, writes it to the log and routes
// it to the instances subscribed to its room. It does no network I/O: the
// link server (package linkserver) opens links (Open), hands it what they
// read (Input.Frames) and carries its output to them (Link).
//
// Link readers hand decoded frames to the sequencer through one channel. It
// drains what is available (a batch), applies it in order, appends the new
// messages to the log and syncs once, and only then delivers the batch's
// output: nothing is acknowledged or delivered before it is durable, so a
// restart never reuses a sequence number anyone has seen.
//
// The files: sequencer.go the batch loop, links.go the links (Link, Input),
// instances.go the instances and the dispatch of their frames,
// subscriptions.go rooms' subscriptions and presence, publish.go publishes
// and fetches, disk.go history read back from the log, compact.go
// compaction and retention, room.go and dedup.go the data they share.
package sequencer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
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
	HistoryLimit  int           // messages kept in memory per room
	DedupWindow   int           // publishes remembered for de-duplication beyond the rings
	PresenceGrace time.Duration // how long a dropped instance's members stay
	QueueBytes    int           // per-link output limit
	// InflightBytes bounds what one link has read and the sequencer not
	// yet applied: past it (by at most the message that crossed it), the
	// link's reader waits (Input.Frames), so a fast peer queues in its own
	// buffers, not here. A sequencer stalled longer than the keepalive
	// loses its links meanwhile (their pongs wait unread). Zero means
	// 32 MiB.
	InflightBytes int64
	CompactBytes  int64 // compact the log once it is at least this big
	// RetentionBytes and RetentionAge bound the history kept beyond the
	// rings: messages in the last RetentionBytes of the log and younger
	// than RetentionAge (0: no age bound) survive compaction and are
	// served from the log. RetentionBytes 0 keeps only the rings.
	RetentionBytes int64
	RetentionAge   time.Duration
	// CommitDelay is how long a batch may wait for more input before its
	// log sync once nothing more is queued (0: not at all). An fsync costs
	// about as much for one message as for a hundred: at moderate rates a
	// short wait gathers more messages into each, for up to that much
	// latency (docs/benchmarks.md).
	CommitDelay time.Duration
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	Now         func() time.Time // message timestamps; time.Now when nil
}

// Sequencer is the relayer core. Drive it with Run; links come and go
// through Open. Run's goroutine owns all state but what mu guards and
// Input's counters; Open, Ready and Epoch may be called from any goroutine.
type Sequencer struct {
	cfg Config
	log *slog.Logger
	st  *store.Log
	m   *metrics

	in          chan event
	lingerTimer *time.Timer   // Run's, for the commit delay
	stopped     chan struct{} // closed when Run stops taking events
	ready       atomic.Bool

	mu      sync.Mutex // guards live and closing
	live    map[*Input]struct{}
	closing bool // Run has stopped: Open refuses

	// Owned by the Run goroutine.
	rooms     map[string]*room
	insts     map[string]*instance
	touched   []*Input
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
	batchReads map[*Input]*readJob // this batch's reads, by link
	readOrder  []*readJob          // the same, in order
	nextJob    uint64
	reads      int // jobs out with the reader
}

// New replays the log into memory and returns a sequencer that owns st
// from now on (Run closes it).
func New(cfg Config, st *store.Log) (*Sequencer, error) {
	if cfg.InflightBytes <= 0 {
		cfg.InflightBytes = 32 << 20
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
		in:         make(chan event, 1024),
		stopped:    make(chan struct{}),
		live:       map[*Input]struct{}{},
		rooms:      map[string]*room{},
		insts:      map[string]*instance{},
		recent:     newRecentPubs(cfg.DedupWindow),
		rd:         diskReader{wake: make(chan struct{}, 1), done: make(chan struct{})},
		batchReads: map[*Input]*readJob{},
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

// Epoch names the log (link.HeaderEpoch).
func (s *Sequencer) Epoch() string { return s.st.Epoch() }

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
		var until time.Time // the commit delay's end, once the queue ran dry
	drain:
		for n < maxBatch {
			select {
			case ev := <-s.in:
				batch = append(batch, ev)
				n += len(ev.frames)
			default:
				if s.cfg.CommitDelay <= 0 {
					break drain
				}
				if until.IsZero() {
					until = time.Now().Add(s.cfg.CommitDelay)
				}
				ev, ok := s.await(ctx, until)
				if !ok {
					break drain
				}
				batch = append(batch, ev)
				n += len(ev.frames)
			}
		}
		err := s.apply(batch)
		clear(batch) // do not pin frames until the slot is reused
		if err != nil {
			return s.shutdown(err)
		}
	}
}

// await waits until the deadline for the next event (Config.CommitDelay);
// false when none came (or ctx ended: the next select sees it).
func (s *Sequencer) await(ctx context.Context, deadline time.Time) (event, bool) {
	d := time.Until(deadline)
	if d <= 0 {
		return event{}, false
	}
	if s.lingerTimer == nil {
		s.lingerTimer = time.NewTimer(d)
	} else {
		s.lingerTimer.Reset(d)
	}
	select {
	case ev := <-s.in:
		s.lingerTimer.Stop()
		return ev, true
	case <-s.lingerTimer.C:
		return event{}, false
	case <-ctx.Done():
		s.lingerTimer.Stop()
		return event{}, false
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
	for _, in := range s.touched {
		s.deliver(in)
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
	code, reason := CloseServiceRestart, "relayer restarting"
	if cause != nil {
		code, reason = CloseInternalError, "relayer storage failure"
	}
	s.mu.Lock()
	s.closing = true
	for in := range s.live {
		// Flush even after a log failure: everything queued was on
		// disk before it was queued.
		in.out.Close(code, reason, true, DropShutdown)
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
