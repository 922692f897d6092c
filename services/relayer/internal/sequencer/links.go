package sequencer

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
)

// Link is where the sequencer's output to one ws-user instance goes: a
// connection of the link server, or a test's recorder. The sequencer calls
// it from its own goroutine, and must not wait on it: Deliver and Close
// queue, they do not write.
type Link interface {
	// Deliver queues frames (whole link frames, in order) after what the
	// link owes its peer, and reports how many bytes it owed before them.
	// The sequencer calls it only once the batch that made the frames is
	// on disk. After Close it drops them.
	Deliver(frames [][]byte) (owed int)
	// Owes reports the bytes queued that the peer has not taken yet.
	Owes() int
	// Close ends the link with code and reason: after what it owes when
	// flush is set, else dropping that. why labels the link's end in the
	// metrics. Only the first Close of a link counts.
	Close(code CloseCode, reason string, flush bool, why Drop)
}

// CloseCode is the WebSocket close status a link ends with (RFC 6455,
// section 7.4): the sequencer names the ones it uses, the link server
// sends them.
type CloseCode uint16

const (
	ClosePolicyViolation CloseCode = 1008 // a sync over its bound; a newer link of the instance
	CloseInternalError   CloseCode = 1011 // the log failed
	CloseServiceRestart  CloseCode = 1012 // the relayer is stopping
	CloseTryAgainLater   CloseCode = 1013 // output over QueueBytes
)

// Drop says why a link ended: the label of link_drops_total.
type Drop string

// The reasons the sequencer ends a link; the link server has its own.
const (
	DropSlow     Drop = "slow"     // output buffer over LINK_QUEUE_BYTES
	DropReplaced Drop = "replaced" // a newer link of the same instance arrived
	DropProtocol Drop = "protocol" // a frame the link cannot carry
	DropShutdown Drop = "shutdown" // the relayer is stopping
)

// Input is one open link as the sequencer knows it. The link's reader
// hands it what the link reads with Frames and says that the link ended
// with Closed, both from that one goroutine.
type Input struct {
	s    *Sequencer
	out  Link
	inst string
	log  *slog.Logger

	inflight atomic.Int64  // bytes read, not yet applied by the sequencer
	drained  chan struct{} // capacity 1: the sequencer applied some

	staged      [][]byte // Run-owned: frames of the current batch
	stagedBytes int      // Run-owned: their size
}

// ValidInstance checks an instance id before a link of it is opened.
func ValidInstance(id string) error { return protocol.ValidName(id, maxFieldBytes) }

func (s *Sequencer) newInput(inst string, out Link, log *slog.Logger) *Input {
	return &Input{s: s, out: out, inst: inst, log: log, drained: make(chan struct{}, 1)}
}

// Open starts a link of instance inst whose output goes to out; log
// carries the link's attributes. It reports false once the sequencer has
// stopped: the caller then ends the link with CloseServiceRestart itself.
func (s *Sequencer) Open(inst string, out Link, log *slog.Logger) (*Input, bool) {
	in := s.newInput(inst, out, log)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, false
	}
	s.live[in] = struct{}{}
	s.mu.Unlock()
	if !s.send(event{kind: evOpen, in: in}) {
		s.forget(in)
		return nil, false
	}
	return in, true
}

// forget removes in from the links that shutdown closes.
func (s *Sequencer) forget(in *Input) {
	s.mu.Lock()
	delete(s.live, in)
	s.mu.Unlock()
}

// Frames hands the sequencer the frames of one link message of n bytes.
// It returns once no more than InflightBytes of the link's input wait to
// be applied (with ctx's error if ctx ends first), so that a fast peer
// queues in its own buffers, not here. A stopped sequencer drops them: it
// closes the link itself, after delivering what it owes.
func (in *Input) Frames(ctx context.Context, frames []*link.Frame, n int64) error {
	in.inflight.Add(n)
	if !in.s.send(event{kind: evFrames, in: in, frames: frames, bytes: n}) {
		return nil
	}
	// Past the bound (by at most the message that crossed it) the reader
	// waits. A stopped sequencer applies nothing more: the reader then goes
	// on reading and dropping, as the close handshake needs.
	for in.inflight.Load() > in.s.cfg.InflightBytes {
		select {
		case <-in.drained:
		case <-ctx.Done():
			return ctx.Err()
		case <-in.s.stopped:
			return nil
		}
	}
	return nil
}

// applied is the sequencer's receipt for n bytes of the link's input.
func (in *Input) applied(n int64) {
	in.inflight.Add(-n)
	select {
	case in.drained <- struct{}{}:
	default:
	}
}

// Closed says the link ended: its instance's members stay for the
// presence grace, in case it reconnects.
func (in *Input) Closed() {
	in.s.forget(in)
	in.s.send(event{kind: evClosed, in: in})
}

// owes reports how much output the link has that its peer has not taken:
// what the current batch staged and what earlier ones queued unsent.
func (in *Input) owes() int { return in.out.Owes() + in.stagedBytes }

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

// stage queues b for in; it is delivered after the batch's sync.
func (s *Sequencer) stage(in *Input, b []byte) {
	if len(in.staged) == 0 {
		s.touched = append(s.touched, in)
	}
	in.staged = append(in.staged, b)
	in.stagedBytes += len(b)
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

// deliver hands in's staged frames to its link, the only way output
// reaches one; apply calls it once the batch is on disk.
func (s *Sequencer) deliver(in *Input) {
	// A link is too slow when output it already had is still unsent: one
	// batch's answer alone (a large resync) must not condemn it, or its
	// reconnect would meet the same answer forever.
	if owed := in.out.Deliver(in.staged); owed > s.cfg.QueueBytes {
		in.log.Warn("relay link output buffer over the limit; closing the link (it will reconnect and catch up)",
			"queued_bytes", owed+in.stagedBytes, "limit", s.cfg.QueueBytes)
		in.out.Close(CloseTryAgainLater, "relayer output buffer for this link is full", false, DropSlow)
	}
	clear(in.staged)
	in.staged, in.stagedBytes = in.staged[:0], 0
}
