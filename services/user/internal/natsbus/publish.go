package natsbus

import (
	"context"
	"errors"
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

	// Owned by sendAll: the room's last message as this instance knows it,
	// its number and stream sequence (known false: ask the cluster).
	known bool
	last  uint64
	lastS uint64
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

// Publish implements bus.Bus. A publish the cluster cannot store within
// PublishTimeout is refused (Nack, unavailable).
func (b *Bus) Publish(mid, session string, m protocol.Message) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending >= b.cfg.PendingMax {
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
		q = &pubQueue{room: m.Room, wake: make(chan struct{}, 1)}
		b.pubs[m.Room] = q
	}
	q.items = append(q.items, pub{mid: mid, id: id, m: m, since: time.Now()})
	if !q.running {
		q.running = true
		go b.sendAll(q)
	}
	return nil
}

// sendAll publishes q's items in order until none is left.
func (b *Bus) sendAll(q *pubQueue) {
	for {
		b.mu.Lock()
		if len(q.items) == 0 {
			q.running = false
			delete(b.pubs, q.room)
			b.mu.Unlock()
			return
		}
		p := q.items[0]
		b.mu.Unlock()
		seq, err := b.send(q, &p)
		b.mu.Lock()
		q.items = q.items[1:]
		b.pending--
		b.mu.Unlock()
		if err != nil {
			b.h.Nack(p.mid, err)
			continue
		}
		b.h.Ack(p.mid, q.room, seq)
	}
}

// send publishes p as the room's next message, retrying on a conflict
// with another publisher at once and on the cluster's failures until
// PublishTimeout from p's arrival; it returns p's number in the room.
func (b *Bus) send(q *pubQueue, p *pub) (uint64, *protocol.Error) {
	deadline := p.since.Add(b.cfg.PublishTimeout)
	backoff := 50 * time.Millisecond
	for {
		stream, _, _, err := b.state()
		if err == nil {
			var seq uint64
			if seq, err = b.try(q, p, stream); err == nil {
				return seq, nil
			}
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
				apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
				q.known = false // another instance published first
				continue
			}
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
				b.lost("publish to room "+q.room, err) // the stream is gone
			}
			if errors.Is(err, nats.ErrMaxPayload) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
				return 0, protocol.Errorf(protocol.CodeBadRequest, "message too large for the NATS cluster: %v", err)
			}
			q.known = false
		}
		if time.Now().After(deadline) {
			b.log.Warn("nats: publish not stored in time; refused", "room", q.room, "err", err)
			return 0, protocol.Errorf(protocol.CodeUnavailable, "the NATS cluster did not store the message within %s: %v", b.cfg.PublishTimeout, err)
		}
		t := time.NewTimer(min(backoff, time.Until(deadline)+time.Millisecond))
		select {
		case <-t.C:
		case <-q.wake:
			t.Stop()
		}
		backoff = min(2*backoff, time.Second)
	}
}

// try publishes p once, numbered after the room's last message as q knows
// it (asking the cluster when it does not).
func (b *Bus) try(q *pubQueue, p *pub, stream jetstream.Stream) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
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
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(p.id), jetstream.WithExpectLastSequenceForSubject(q.lastS, b.roomFilter(q.room)))
	if err != nil {
		return 0, err
	}
	if ack.Duplicate {
		// Stored before (a re-send): its number is in its subject.
		q.known = false
		orig, err := stream.GetMsg(ctx, ack.Sequence)
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
	start := firstS
	if lo > first {
		m, err := stream.GetLastMsgForSubject(ctx, b.msgSubject(room, lo))
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, 0, err
		}
		if err == nil {
			start = m.Sequence
		}
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{b.roomFilter(room)},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    start,
	})
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
