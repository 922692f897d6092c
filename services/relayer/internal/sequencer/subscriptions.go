package sequencer

import (
	"time"
	"unicode/utf8"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

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
