package natsbus

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// pubQueue is this instance's publishes to one room, sent one at a time,
// in order, by one goroutine (sendAll) while it has any.
type pubQueue struct {
	room string
	wake chan struct{} // capacity 1: the cluster is back

	// Guarded by b.mu.
	items   []pub
	running bool // sendAll runs
	sent    bool // items[0] went to the cluster at least once

	// Owned by sendAll: what this instance knows of the room's head.
	roomHead
}

// roomHead is what an instance knows of a room's last message, in the
// numbering of one stream (epoch): its number and stream sequence (known
// false: ask the cluster), and the revision and number it last wrote to
// the room's key in the heads bucket (0: read the key first). A queue that
// empties leaves it in Bus.known for the room's next publish. If another
// instance published since, the cluster refuses the publish (wrong last
// sequence) or the update (wrong revision) and the instance reads them
// again; the room's delivery (seenHead) usually tells it first.
type roomHead struct {
	epoch            string
	known            bool
	last, lastS      uint64
	headRev, headVal uint64
}

// seenHead is the newest message of a room that the room's delivery
// handed on: a publisher whose own head is older takes it instead of
// being refused by the cluster first. Its own lock: raised by the
// delivery's callback, read by the room's sendAll.
type seenHead struct {
	mu          sync.Mutex
	epoch       string
	last, lastS uint64
}

func (h *seenHead) raise(epoch string, last, lastS uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.epoch != epoch {
		h.epoch, h.last, h.lastS = epoch, 0, 0
	}
	if last > h.last {
		h.last, h.lastS = last, lastS
	}
}

// newer returns the seen head when it is of epoch and past last.
func (h *seenHead) newer(epoch string, last uint64) (seq, sseq uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.epoch != epoch || h.last <= last {
		return 0, 0, false
	}
	return h.last, h.lastS, true
}

type pub struct {
	mid, id string // id: the publish's Nats-Msg-Id
	m       protocol.Message
	since   time.Time
}

func (q *pubQueue) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Publish implements bus.Bus.
//
// A publish that went to the cluster is never refused: without an answer
// it may be stored yet (a proposal the cluster commits once it has its
// quorum back), so it is sent again, with its id, until the cluster
// answers, and acknowledged then. One still waiting for its answer after
// PublishTimeout marks the cluster unavailable: until it is answered, new
// publishes, and those queued behind unsent, are refused as unavailable —
// none of them reached the cluster.
func (b *Bus) Publish(mid, session string, m protocol.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	full := func() bool { return b.pending >= b.cfg.PendingMax }
	if full() && !b.waiters.Await(&b.mu, b.cfg.PublishWait, full, b.refusingLocked) || b.refusingLocked() {
		return bus.ErrUnavailable
	}
	b.pending++
	id := "m/" + token(b.cfg.Instance) + "/" + mid
	if session != "" && m.ID != "" {
		// The client's own key: its re-send through another instance is
		// the same publish.
		id = "c/" + token(m.Room) + "/" + token(session) + "/" + token(m.ID)
	}
	q := b.pubs[m.Room]
	if q == nil {
		q = &pubQueue{room: m.Room, wake: make(chan struct{}, 1), roomHead: b.known[m.Room]}
		b.pubs[m.Room] = q
	}
	q.items = append(q.items, pub{mid: mid, id: id, m: m, since: time.Now()})
	if !q.running {
		q.running = true
		go b.sendAll(q)
	}
	return nil
}

// refusingLocked: new publishes are refused, as the cluster has not
// answered one in time (stuck) or the bus stopped. Lock should be held.
func (b *Bus) refusingLocked() bool {
	select {
	case <-b.stopped:
		return true
	default:
		return b.stuck > 0
	}
}

// settledLocked counts n publishes, answered or refused, out of pending,
// and lets waiting publishers in once pending is at the low-water mark of
// PendingMax. Lock should be held.
func (b *Bus) settledLocked(n int) {
	b.pending -= n
	if b.waiters.Waiting() && bus.LowWater(b.pending, b.cfg.PendingMax) {
		b.waiters.Wake()
	}
}

// sendAll publishes q's items in order until none is left.
func (b *Bus) sendAll(q *pubQueue) {
	for {
		b.mu.Lock()
		if len(q.items) == 0 {
			q.running = false
			delete(b.pubs, q.room)
			// Kept while the room is subscribed (Unsubscribe forgets it);
			// not a head without a stored message (lastS 0), whose check
			// would only say that none of the room's is kept.
			if b.rooms[q.room] != nil && q.known && q.lastS > 0 {
				b.known[q.room] = q.roomHead
			}
			b.mu.Unlock()
			return
		}
		p := q.items[0]
		q.sent = false
		b.mu.Unlock()
		seq, err, done := b.send(q, &p)
		if !done {
			return // the bus stopped
		}
		b.mu.Lock()
		q.items = q.items[1:]
		b.settledLocked(1)
		b.mu.Unlock()
		if err != nil {
			b.h.Nack(p.mid, err)
			continue
		}
		b.h.Ack(p.mid, q.room, seq)
		b.recordHead(q, seq)
	}
}

// errUnavailable refuses a publish that never reached the cluster.
func (b *Bus) errUnavailable(err error) *protocol.Error {
	return protocol.Errorf(protocol.CodeUnavailable, "the NATS cluster is not storing messages (no quorum, or unreachable): %v", err)
}

// send publishes p as the room's next message: at once again after a
// conflict with another publisher, after a pause on the cluster's
// failures. It returns p's number in the room, or why it is refused; done
// is false when the bus stopped first.
func (b *Bus) send(q *pubQueue, p *pub) (seq uint64, refused *protocol.Error, done bool) {
	backoff := 50 * time.Millisecond
	stuck := false
	defer func() {
		if stuck {
			b.mu.Lock()
			b.stuck--
			b.mu.Unlock()
		}
	}()
	for {
		stream, _, epoch, err := b.state()
		if err == nil {
			if seq, err = b.try(q, p, stream, epoch); err == nil {
				return seq, nil, true
			}
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
				apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
				// Another instance published first, and most likely
				// recorded the head too: try numbers after its message
				// when the room's delivery has it, else asks the cluster.
				q.known, q.headRev = false, 0
				continue
			}
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
				b.lost("publish to room "+q.room, err) // the stream is gone
			}
			if errors.Is(err, nats.ErrMaxPayload) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
				q.known = false // not confirmed by this publish
				return 0, protocol.Errorf(protocol.CodeBadRequest, "message too large for the NATS cluster: %v", err), true
			}
			if errors.Is(err, errOriginalGone) {
				return 0, protocol.Errorf(protocol.CodeUnavailable, "%v", err), true
			}
			q.known = false
		}
		b.mu.Lock()
		sent := q.sent
		switch {
		case !sent && b.stuck > 0:
			// Another publish is waiting for the cluster: this one
			// never reached it.
			b.mu.Unlock()
			return 0, b.errUnavailable(err), true
		case time.Since(p.since) > b.cfg.PublishTimeout && !sent:
			b.mu.Unlock()
			b.log.Warn("nats: publish not sent in time; refused", "room", q.room, "err", err)
			return 0, b.errUnavailable(err), true
		case time.Since(p.since) > b.cfg.PublishTimeout && !stuck:
			stuck = true
			b.stuck++
			b.waiters.Wake() // waiting publishers refuse
			refused := b.refuseUnsentLocked()
			b.mu.Unlock()
			b.log.Warn("nats: publish not answered in time; refusing new ones until it is", "room", q.room, "err", err)
			for _, mid := range refused {
				b.h.Nack(mid, b.errUnavailable(err))
			}
		default:
			b.mu.Unlock()
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-q.wake:
			t.Stop()
		case <-b.stopped:
			t.Stop()
			return 0, nil, false
		}
		backoff = min(2*backoff, time.Second)
	}
}

// refuseUnsentLocked drops every queued publish behind each room's first
// (which sendAll owns) and returns their mids: none went to the cluster.
// Lock should be held.
func (b *Bus) refuseUnsentLocked() []string {
	var mids []string
	for _, q := range b.pubs {
		if len(q.items) > 1 {
			for _, p := range q.items[1:] {
				mids = append(mids, p.mid)
			}
			b.settledLocked(len(q.items) - 1)
			q.items = q.items[:1]
		}
	}
	return mids
}

// errOriginalGone answers a re-send whose first copy the stream no longer
// keeps: it was stored, its number is not known any more.
var errOriginalGone = errors.New("a re-send of a message the NATS stream stored but no longer keeps")

// try publishes p once to the stream of epoch, numbered after the room's
// last message as q knows it or its delivery saw it (asking the cluster
// when it knows neither).
func (b *Bus) try(q *pubQueue, p *pub, stream jetstream.Stream, epoch string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	if q.epoch != epoch {
		q.roomHead = roomHead{epoch: epoch} // another stream's numbers
	}
	// A message past q's head that the delivery saw is a head the cluster
	// has stored: numbered after it, unless someone published since.
	if last, lastS, ok := b.seenHead(q.room).newer(epoch, q.last); ok {
		q.last, q.lastS, q.known, q.headRev = last, lastS, true, 0
	}
	if !q.known {
		last, lastS, err := b.head(ctx, stream, q.room)
		if err != nil {
			return 0, err
		}
		q.last, q.lastS, q.known = last, lastS, true
	}
	b.mu.Lock()
	js := b.js
	b.mu.Unlock()
	m := p.m
	m.Seq, m.TS = 0, 0
	msg := &nats.Msg{Subject: b.msgSubject(q.room, q.last+1), Data: protocol.AppendMessage(nil, &m)}
	b.mu.Lock()
	q.sent = true
	b.mu.Unlock()
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(p.id), jetstream.WithExpectLastSequenceForSubject(q.lastS, b.roomFilter(q.room)))
	if err != nil {
		return 0, err
	}
	if ack.Duplicate {
		// Stored before (a re-send): its number is in its subject.
		q.known = false
		orig, err := stream.GetMsg(ctx, ack.Sequence)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, errOriginalGone
		}
		if err != nil {
			return 0, err
		}
		return seqOf(orig.Subject)
	}
	q.last, q.lastS = q.last+1, ack.Sequence
	return q.last, nil
}

// Fetch implements bus.Bus; the answer comes from a goroutine of its own.
func (b *Bus) Fetch(req uint64, room string, after, before uint64, limit int) {
	go func() {
		msgs, first, err := b.fetch(room, after, before, limit)
		if err != nil {
			b.h.Fetched(req, nil, 0, err)
			return
		}
		b.h.Fetched(req, msgs, first, nil)
	}()
}

func (b *Bus) fetch(room string, after, before uint64, limit int) ([]protocol.Message, uint64, error) {
	stream, _, _, err := b.state()
	if err != nil {
		return nil, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	last, _, err := b.head(ctx, stream, room)
	if err != nil {
		return nil, 0, err
	}
	first, firstS, err := b.first(ctx, stream, room, last)
	if err != nil {
		return nil, 0, err
	}
	limit = min(max(limit, 0), b.cfg.HistoryLimit)
	if limit == 0 {
		limit = b.cfg.HistoryLimit
	}
	lo, hi := link.SeqWindow(after, before, last, first, limit)
	msgs := []protocol.Message{}
	if lo > hi {
		return msgs, first, nil
	}
	start, err := b.startOf(ctx, stream, room, lo, first, firstS)
	if err != nil {
		return nil, 0, err
	}
	cons, err := b.consumer(ctx, stream, room, start)
	if err != nil {
		return nil, 0, err
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, 0, err
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, 0, err
		}
		seq, err := seqOf(msg.Subject())
		if err != nil {
			return nil, 0, err
		}
		if seq > hi {
			return msgs, first, nil // hi itself is no longer kept
		}
		if seq >= lo {
			md, err := msg.Metadata()
			if err != nil {
				return nil, 0, err
			}
			m, err := decode(room, seq, msg.Data(), md.Timestamp)
			if err != nil {
				return nil, 0, err
			}
			msgs = append(msgs, m)
		}
		if seq >= hi {
			return msgs, first, nil
		}
	}
}
