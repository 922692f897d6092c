package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// room is one subscribed room: its delivery (an ordered consumer from where
// the hub is) and its presence watch, both stopped by cancel. b.mu guards
// its fields.
type room struct {
	name    string
	members map[string]protocol.Member // this instance's, for its presence key
	cancel  context.CancelFunc
	seen    *seenHead // raised by the delivery, which has its own lock
}

// seenHead returns the seen head of a subscribed room; a fresh one, which
// knows nothing, for a room that is not.
func (b *Bus) seenHead(name string) *seenHead {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r := b.rooms[name]; r != nil {
		return r.seen
	}
	return &seenHead{}
}

// stop ends the room's delivery and watch. b.mu must be held.
func (r *room) stop() {
	if r.cancel != nil {
		r.cancel()
		r.cancel = nil
	}
}

// Subscribe implements bus.Bus: the answer (Handler.Subscribed) and then
// the room's messages come from the room's own goroutine.
func (b *Bus) Subscribe(in bus.Interest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[in.Room]
	if r == nil {
		r = &room{name: in.Room, seen: &seenHead{}}
		b.rooms[in.Room] = r
	}
	r.members = map[string]protocol.Member{}
	for _, m := range in.Members {
		m.Instance = b.cfg.Instance
		r.members[m.ID] = m
	}
	r.stop()
	if b.stream == nil || !b.ready.Load() {
		return // the next sync subscribes it, from the hub's State
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	b.putPresenceLocked(r)
	go b.deliver(ctx, in, r.seen)
}

// Unsubscribe implements bus.Bus.
func (b *Bus) Unsubscribe(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rooms[name]
	if r == nil {
		return
	}
	r.stop()
	delete(b.rooms, name)
	delete(b.known, name)
	r.members = nil
	b.putPresenceLocked(r)
}

// Join implements bus.Bus.
func (b *Bus) Join(name string, m protocol.Member) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r := b.rooms[name]; r != nil {
		m.Instance = b.cfg.Instance
		r.members[m.ID] = m
		b.putPresenceLocked(r)
	}
}

// Leave implements bus.Bus.
func (b *Bus) Leave(name, memberID string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r := b.rooms[name]; r != nil {
		delete(r.members, memberID)
		b.putPresenceLocked(r)
	}
}

// deliver answers a subscription and then hands the room's messages to
// the hub, in order, until ctx ends: one ordered consumer of the room's
// subjects, started at the first message the interest is owed.
func (b *Bus) deliver(ctx context.Context, in bus.Interest, seen *seenHead) {
	stream, kv, epoch, err := b.state()
	if err != nil {
		return // down: the next sync subscribes the room again
	}
	fail := func(what string, err error) {
		if ctx.Err() == nil {
			b.lost("subscription of room "+in.Room+": "+what, err)
		}
	}
	members, err := b.watchPresence(ctx, kv, in.Room)
	if err != nil {
		fail("presence", err)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	// The stream's last sequence before the room's head: whatever the
	// room gets later is stored after it.
	info, err := stream.Info(rctx)
	if err != nil {
		fail("stream info", err)
		return
	}
	last, lastS, err := b.head(rctx, stream, in.Room)
	if err != nil {
		fail("head", err)
		return
	}
	first, firstS, err := b.first(rctx, stream, in.Room, last)
	if err != nil {
		fail("first", err)
		return
	}
	from := link.CatchUpFrom(last, in.Since, in.Resume, in.Tail, b.cfg.HistoryLimit)
	if b.cfg.CatchUpMax > 0 && last-from > uint64(b.cfg.CatchUpMax) {
		// An answer is held in memory whole: past the bound, the newest
		// part, and the hub tells its members the rest is a gap (they
		// page back for it with history).
		from = last - uint64(b.cfg.CatchUpMax)
	}
	start := max(info.State.LastSeq, lastS) + 1
	if firstS == 0 {
		from = last // none kept: nothing to catch up with
	}
	if from < last {
		if start, err = b.startOf(rctx, stream, in.Room, from+1, first, firstS); err != nil {
			fail("catch-up start", err)
			return
		}
	}
	cons, err := b.consumer(ctx, stream, in.Room, start)
	if err != nil {
		fail("consumer", err)
		return
	}
	sub := bus.Subscription{Room: in.Room, Seq: last, First: first, Members: members, Epoch: epoch, Msgs: []protocol.Message{}}
	answered := false
	answer := func() {
		answered = true
		b.h.Subscribed(sub)
	}
	if from >= last && ctx.Err() == nil {
		answer()
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		if ctx.Err() != nil {
			return
		}
		md, err := msg.Metadata()
		if err != nil {
			return
		}
		seq, err := seqOf(msg.Subject())
		if err != nil {
			return
		}
		seen.raise(epoch, seq, md.Sequence.Stream)
		m, err := decode(in.Room, seq, msg.Data(), md.Timestamp)
		if err != nil {
			b.log.Warn("nats: undecodable message skipped", "room", in.Room, "err", err)
			return
		}
		if !answered {
			if seq <= from {
				return
			}
			sub.Msgs = append(sub.Msgs, m)
			// At the head, or at the end of what is kept (the rest
			// went to the stream's limits meanwhile).
			if seq >= last || md.NumPending == 0 {
				answer()
			}
			return
		}
		b.h.Message(&m)
	}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		// The ordered consumer makes itself anew after most failures (a
		// server gone, missed heartbeats), from where it was; not without
		// its stream.
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			fail("delivery", err)
		}
	}))
	if err != nil {
		fail("consume", err)
		return
	}
	<-ctx.Done()
	cc.Stop()
}

// watchPresence starts watching the room's presence keys and returns the
// members they hold now; changes go to the hub as presence events until
// ctx ends.
func (b *Bus) watchPresence(ctx context.Context, kv jetstream.KeyValue, name string) ([]protocol.Member, error) {
	w, err := kv.Watch(ctx, token(name)+".*")
	if err != nil {
		return nil, err
	}
	self := token(b.cfg.Instance)
	byInst := map[string]map[string]protocol.Member{}
	apply := func(e jetstream.KeyValueEntry) (joined, left []protocol.Member) {
		inst := e.Key()[strings.IndexByte(e.Key(), '.')+1:]
		now := map[string]protocol.Member{}
		if e.Operation() == jetstream.KeyValuePut {
			var ms []protocol.Member
			if json.Unmarshal(e.Value(), &ms) == nil {
				for _, m := range ms {
					now[m.ID] = m
				}
			}
		}
		was := byInst[inst]
		for id, m := range now {
			if _, ok := was[id]; !ok {
				joined = append(joined, m)
			}
		}
		for id, m := range was {
			if _, ok := now[id]; !ok {
				left = append(left, m)
			}
		}
		if len(now) == 0 {
			delete(byInst, inst)
		} else {
			byInst[inst] = now
		}
		return joined, left
	}
	for e := range w.Updates() {
		if e == nil {
			break // the initial values are in
		}
		apply(e)
	}
	var members []protocol.Member
	for _, ms := range byInst {
		members = slices.AppendSeq(members, maps.Values(ms))
	}
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					continue
				}
				joined, left := apply(e)
				if strings.HasSuffix(e.Key(), "."+self) {
					continue // this instance's members are the hub's own news
				}
				for _, m := range joined {
					b.h.Presence(name, protocol.PresenceJoin, m)
				}
				for _, m := range left {
					b.h.Presence(name, protocol.PresenceLeave, m)
				}
			}
		}
	}()
	return members, nil
}

// startOf returns the stream sequence of room's message seq, or of its
// oldest kept one (first, at firstS) when seq is not kept any more.
func (b *Bus) startOf(ctx context.Context, stream jetstream.Stream, room string, seq, first, firstS uint64) (uint64, error) {
	if seq <= first {
		return firstS, nil
	}
	m, err := stream.GetLastMsgForSubject(ctx, b.msgSubject(room, seq))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return firstS, nil
	case err != nil:
		return 0, err
	}
	return m.Sequence, nil
}

// consumer returns an ordered consumer of room's messages from the
// stream sequence start on.
func (b *Bus) consumer(ctx context.Context, stream jetstream.Stream, room string, start uint64) (jetstream.Consumer, error) {
	return stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{b.roomFilter(room)},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		InactiveThreshold: consumerIdle,
	})
}

// consumerIdle is how long the server keeps a consumer nobody pulls from.
// Stopping an ordered consumer does not delete it: a fetch's, or a
// subscription's after a resubscription, would count against the
// stream's MaxConsumers for nats.go's default of five minutes. Twice the
// client's pull expiry (30 s), so that a live one never lapses.
const consumerIdle = time.Minute
