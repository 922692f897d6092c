package sequencer

import (
	"fmt"
	"unicode/utf8"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

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
