package sequencer

import (
	"slices"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// instance is a ws-user as the sequencer knows it; it outlives its links
// for PRESENCE_GRACE.
type instance struct {
	id     string
	link   *Input // nil while disconnected
	synced bool   // link has sent its sync: live traffic may flow to it
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
	in     *Input
	frames []*link.Frame
	bytes  int64 // of the link message the frames came in
	inst   *instance
	gen    uint64
	job    *readJob
}

func (s *Sequencer) handle(ev event) {
	switch ev.kind {
	case evOpen:
		in := ev.in
		inst := s.insts[in.inst]
		if inst == nil {
			inst = &instance{id: in.inst, rooms: map[*room]struct{}{}}
			s.insts[in.inst] = inst
		}
		if old := inst.link; old != nil {
			old.log.Info("relay link replaced by a newer link of the same instance")
			old.out.Close(ClosePolicyViolation, "replaced by a newer link of the same instance", false, DropReplaced)
		}
		if inst.grace != nil {
			inst.grace.Stop()
			inst.grace = nil
		}
		inst.gen++
		inst.link, inst.synced = in, false
		inst.syncParts, inst.parts = nil, 0
		inst.catching = nil
	case evClosed:
		inst := s.insts[ev.in.inst]
		if inst == nil || inst.link != ev.in {
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
		ev.in.applied(ev.bytes)
		inst := s.insts[ev.in.inst]
		if inst == nil || inst.link != ev.in {
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
			inst.link.out.Close(ClosePolicyViolation, "sync too large", false, DropProtocol)
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
