package fault

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// verdict is what the checker found in one scenario run; the counts are of
// acknowledged messages (lost, duplicated, reordered) and of sequence
// numbers that stood for two different messages.
type verdict struct {
	acked      int
	lost       int
	duplicated int
	reordered  int
	reused     int
	problems   []string // the first examples, for the test's log
}

// maxProblems bounds the examples a verdict keeps.
const maxProblems = 20

func (v *verdict) problem(format string, args ...any) {
	if len(v.problems) < maxProblems {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

func (v *verdict) clean() bool { return v.lost+v.duplicated+v.reordered+v.reused == 0 }

// stream is one member's view of one room, as the checker takes it.
type stream struct {
	member string
	seed   bool
	base   uint64 // joined.seq of the first join (extended members)
	got    []received
}

// ack is one acknowledgement: message key, room, seq, when it arrived.
type ack struct {
	key, room string
	seq       uint64
	at        time.Time
}

// epochs are the times at which the relayer came back with a new log
// epoch (docs/architecture.md): sequence numbers start over, so a message
// is named by (epoch, seq), its epoch read from its sequencing time and an
// ack's from when it arrived.
type epochs []time.Time

func (e epochs) of(t time.Time) int {
	n := 0
	for _, b := range e {
		if !t.Before(b) {
			n++
		}
	}
	return n
}

type pos struct {
	epoch int
	seq   uint64
}

// key names a message across members: the sender's id (unique per
// sender and kept by its re-sends), else its text.
func key(m protocol.Message) string {
	if m.ID != "" {
		return m.ID
	}
	return "text:" + m.Text
}

// check verifies one room's streams against the acknowledgements:
//   - a sequence number stands for one message, whoever received it
//     (else reused);
//   - no member receives a message twice, whether at one seq or two
//     (else duplicated);
//   - each member receives seqs in increasing order (else reordered);
//   - each acknowledged message is received by every member that was in
//     the room when it was sequenced, and under its acknowledged seq
//     (else lost). An extended member is in the room from its first join
//     on, across its reconnects (it recovers with since); after the log
//     started over, from the first message of the new epoch it got. A seed
//     member, which does not recover, is in it from the first to the last
//     message of each connection.
//
// It adds to v and returns nothing: a verdict spans the scenario's rooms.
func check(v *verdict, room string, ep epochs, streams []stream, acks []ack) {
	canon := map[pos]string{}
	for _, s := range streams {
		for _, g := range s.got {
			p, k := pos{ep.of(time.UnixMilli(g.msg.TS)), g.msg.Seq}, key(g.msg)
			if prev, ok := canon[p]; !ok {
				canon[p] = k
			} else if prev != k {
				v.reused++
				v.problem("%s: seq %d (epoch %d) is %s for %s, %s for another member", room, p.seq, p.epoch, k, s.member, prev)
			}
		}
	}
	// Where each epoch after the first begins: an extended member that was
	// in the room when the log started over owes the new epoch from there.
	epochStart := map[int]uint64{}
	for p := range canon {
		if first, ok := epochStart[p.epoch]; p.epoch > 0 && (!ok || p.seq < first) {
			epochStart[p.epoch] = p.seq
		}
	}
	ackAt := map[string]pos{}
	for _, a := range acks {
		p := pos{ep.of(a.at), a.seq}
		ackAt[a.key] = p
		if k, ok := canon[p]; ok && k != a.key {
			v.problem("%s: %s acknowledged as seq %d (epoch %d), which members got as %s", room, a.key, p.seq, p.epoch, k)
		}
	}

	lost, dup, reord := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, s := range streams {
		count := map[string]int{}
		var prev pos
		covered := map[int][][2]uint64{} // epoch -> (from, to] ranges
		extend := func(p pos, newRange bool) {
			rs := covered[p.epoch]
			if newRange || len(rs) == 0 {
				from := p.seq - 1
				if !s.seed && p.epoch > 0 {
					from = epochStart[p.epoch] - 1
				}
				covered[p.epoch] = append(rs, [2]uint64{from, p.seq})
				return
			}
			rs[len(rs)-1][1] = max(rs[len(rs)-1][1], p.seq)
		}
		if !s.seed {
			covered[0] = [][2]uint64{{s.base, s.base}}
		}
		lastConn := 0
		at := map[string]pos{}
		for i, g := range s.got {
			k := key(g.msg)
			p := pos{ep.of(time.UnixMilli(g.msg.TS)), g.msg.Seq}
			if q, ok := at[k]; ok && g.restart && q == p {
				// Shown again where it was, by a start-over's history
				// (a message the new log kept): the client replaced
				// what it held of the room, nothing came twice.
				continue
			}
			at[k] = p
			count[k]++
			if count[k] == 2 {
				dup[k] = true
				v.problem("%s: %s got %s twice (seq %d, epoch %d the second time)", room, s.member, k, p.seq, p.epoch)
			}
			if i > 0 && count[k] == 1 && (p.epoch < prev.epoch || p.epoch == prev.epoch && p.seq <= prev.seq) {
				reord[k] = true
				v.problem("%s: %s got seq %d (epoch %d) after seq %d (epoch %d)", room, s.member, p.seq, p.epoch, prev.seq, prev.epoch)
			}
			extend(p, s.seed && g.conn != lastConn)
			lastConn, prev = g.conn, p
		}
		for _, a := range acks {
			p := ackAt[a.key]
			if count[a.key] > 0 {
				continue
			}
			for _, r := range covered[p.epoch] {
				if p.seq > r[0] && p.seq <= r[1] {
					lost[a.key] = true
					v.problem("%s: %s never got %s (acknowledged as seq %d, epoch %d)", room, s.member, a.key, p.seq, p.epoch)
					break
				}
			}
		}
	}
	v.lost += len(lost)
	v.duplicated += len(dup)
	v.reordered += len(reord)
}

// summary is one run's row of docs/reliability.md's table.
type summary struct {
	scenario   string
	verdict    verdict
	closed     map[string]int // close code -> connections
	flaps      int
	served     time.Duration // from the fault to every sender served again
	startOvers int
}

func (s summary) closedText() string {
	n := 0
	var parts []string
	for _, code := range slices.Sorted(maps.Keys(s.closed)) {
		n += s.closed[code]
		parts = append(parts, fmt.Sprintf("%s×%d", code, s.closed[code]))
	}
	if n == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%s)", n, strings.Join(parts, ", "))
}

// row is the summary as a Markdown table row: scenario, acknowledged,
// lost, duplicated, reordered, seqs reused, clients closed, presence
// flaps, served again.
func (s summary) row() string {
	v := s.verdict
	return fmt.Sprintf("| %s | %d | %d | %d | %d | %d | %s | %d | %.1f s |",
		s.scenario, v.acked, v.lost, v.duplicated, v.reordered, v.reused, s.closedText(), s.flaps, s.served.Seconds())
}
