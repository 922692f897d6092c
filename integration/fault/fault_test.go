package fault

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wschat/wschat/integration/dockerstack"
)

// The traffic of every scenario: senders on each replica, a few more
// members, seed clients that only receive; each sender says one message
// per tick, alternating between the rooms.
const (
	replicas          = 3
	sendersPerReplica = 2
	seedClients       = 2
	tick              = 100 * time.Millisecond
	ackedBeforeFault  = 60 // acknowledged messages before the fault
	ackedAfterServed  = 60 // and after every sender is served again
	scenarioLimit     = 6 * time.Minute
	servedAgainLimit  = 150 * time.Second
	settleLimit       = 90 * time.Second
	spreadTries       = 40
	longEnv, runsEnv  = "WSCHAT_FAULT_LONG", "WSCHAT_FAULT_RUNS"
	reportEnv         = "WSCHAT_FAULT_REPORT"
	longRuns          = 3
)

var rooms = []string{"alpha", "beta"}

// scenario is one fault and what must hold besides the checker's verdict.
type scenario struct {
	name string
	long bool // only with WSCHAT_FAULT_LONG=1
	// split runs the relay link on a network of its own (see cutOff).
	split bool
	// quiet: no client connection may be closed and no member still
	// connected may leave anyone's presence (the fault is the relay tier's
	// alone; clients have no reason to notice it).
	quiet bool
	// inject causes the fault, calls down once it is in place (the time
	// until served again counts from there), and lets it end; it returns
	// the time the relayer came back with a new log epoch, if it did.
	inject func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time
}

var scenarios = []scenario{
	{name: "relayer SIGKILL", quiet: true, inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		killAndRestart(ctx, t, s, s.Relayer(), down)
		return time.Time{}
	}},
	{name: "ws-user SIGKILL", inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		killAndRestart(ctx, t, s, s.User("ws-user-2"), down)
		return time.Time{}
	}},
	{name: "relayer paused 15 s", quiet: true, inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		freeze(ctx, t, s.Relayer(), 15*time.Second, down)
		return time.Time{}
	}},
	{name: "relayer paused 40 s", long: true, quiet: true, inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		freeze(ctx, t, s.Relayer(), 40*time.Second, down)
		return time.Time{}
	}},
	{name: "ws-user cut off from the relayer", split: true, inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		cutOff(ctx, t, s, s.User("ws-user-1"), down)
		return time.Time{}
	}},
	{name: "log truncated", inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		return damageLog(ctx, t, s, truncated, down)
	}},
	{name: "log torn tail", inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		return damageLog(ctx, t, s, tornTail, down)
	}},
	{name: "log flipped bytes", inject: func(ctx context.Context, t *testing.T, s *dockerstack.Stack, down func()) time.Time {
		return damageLog(ctx, t, s, flipped, down)
	}},
}

// TestFaults runs every scenario: the fast ones always, the long ones and
// repeated runs with WSCHAT_FAULT_LONG=1 (docs/reliability.md).
func TestFaults(t *testing.T) {
	dockerstack.Need(t)
	long := os.Getenv(longEnv) == "1"
	runs := 1
	if long {
		runs = longRuns
	}
	if v := os.Getenv(runsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			t.Fatalf("%s=%q: want a number of runs from 1 to 100", runsEnv, v)
		}
		runs = n
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			if sc.long && !long {
				t.Skipf("a long scenario: set %s=1", longEnv)
			}
			for i := 1; i <= runs; i++ {
				t.Run(fmt.Sprintf("run %d", i), func(t *testing.T) { runScenario(t, sc) })
			}
		})
	}
}

// runScenario starts a stack and the clients, keeps traffic flowing,
// injects the fault, waits until every sender is served again, lets
// traffic go on, settles, and checks.
func runScenario(t *testing.T, sc scenario) {
	s := dockerstack.NewWith(t, replicas, dockerstack.Options{Split: sc.split})
	ctx, w, all, senders, quiet := startTraffic(t, s)
	var ep epochs
	if newEpoch := sc.inject(ctx, t, s, func() { w.markFault() }); !newEpoch.IsZero() {
		ep = append(ep, newEpoch)
	}
	served := servedThenAcked(ctx, t, w, all, senders, w.faultTime(), "")
	quiet.Store(true)
	settle(ctx, t, w, all, senders[0])

	judge(t, sc.name, w, all, ep, served, sc.quiet)
}

// startTraffic connects the clients to s (startClients) and starts the
// pacer, within scenarioLimit, and returns once ackedBeforeFault chats
// were acknowledged. The pacer runs until the end of the test: once new
// messages stop (quiet), it still re-sends what reconnected clients must
// say again.
func startTraffic(t *testing.T, s *dockerstack.Stack) (ctx context.Context, w *world, all, senders []*client, quiet *atomic.Bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scenarioLimit)
	t.Cleanup(cancel)
	w = newWorld()
	all, senders = startClients(ctx, t, w, s)
	t.Cleanup(func() {
		for _, c := range all {
			c.close()
		}
	})
	done := make(chan struct{})
	quiet = new(atomic.Bool)
	var pacer sync.WaitGroup
	pacer.Go(func() { pace(ctx, senders, quiet, done) })
	t.Cleanup(func() {
		close(done)
		pacer.Wait()
	})
	waitFor(ctx, t, w, all, 90*time.Second, fmt.Sprintf("%d acknowledged before the fault", ackedBeforeFault),
		func() bool { return acked(all) >= ackedBeforeFault })
	return ctx, w, all, senders, quiet
}

// judge checks, once the clients have settled, every room's streams
// against the acknowledgements (check) and reports the run's row; any
// defect fails the test. quiet as in scenario.
func judge(t *testing.T, name string, w *world, all []*client, ep epochs, served time.Duration, quiet bool) {
	t.Helper()
	sum := summary{scenario: name, served: served, closed: map[string]int{}}
	for _, room := range rooms {
		var streams []stream
		var acks []ack
		for _, c := range all {
			c.read(func() {
				v := c.views[room]
				streams = append(streams, stream{member: c.name, seed: c.seed, base: v.base, got: slices.Clone(v.got)})
				for id, a := range c.acks {
					if a.room == room {
						acks = append(acks, ack{key: id, room: room, seq: a.seq, at: a.at})
					}
				}
				sum.startOvers += v.startOvers
			})
		}
		sum.verdict.acked += len(acks)
		check(&sum.verdict, room, ep, streams, acks)
	}
	var flapSeen []string
	for _, c := range all {
		c.read(func() {
			for _, code := range c.closes {
				sum.closed[code]++
			}
			for _, f := range flaps(w, c.leaves) {
				sum.flaps++
				if len(flapSeen) < 3 {
					flapSeen = append(flapSeen, f)
				}
			}
		})
	}
	report(t, sum)
	if len(flapSeen) > 0 {
		t.Logf("presence flaps, e.g.:\n  %s", strings.Join(flapSeen, "\n  "))
	}

	for _, p := range sum.verdict.problems {
		t.Error(p)
	}
	if !sum.verdict.clean() {
		// What the members named in the problems did, to find the cause.
		for _, c := range all {
			if !slices.ContainsFunc(sum.verdict.problems, func(p string) bool { return strings.Contains(p, " "+c.name+" ") }) {
				continue
			}
			c.read(func() { t.Logf("%s's trace:\n  %s", c.name, strings.Join(c.trace, "\n  ")) })
		}
		t.Errorf("acknowledged messages: %d lost, %d duplicated, %d reordered; %d seqs reused",
			sum.verdict.lost, sum.verdict.duplicated, sum.verdict.reordered, sum.verdict.reused)
	}
	if quiet && (sum.closedText() != "0" || sum.flaps != 0) {
		t.Errorf("clients closed: %s, presence flaps: %d; want none (the fault is the relay tier's); flaps: %q", sum.closedText(), sum.flaps, flapSeen)
	}
}

// flapGrace: a leave about a member whose connection ended at most this
// long after the leave arrived is that connection's own, not a flap. The
// leave and the end reach the two clients in either order: a start-over's
// 1012 (up to 71 ms apart under -race in 36 runs), or a join the instance
// refused and undid (the member's client then closes and joins again).
const flapGrace = time.Second

// flaps are the leaves that are flaps: about a member whose connection
// stayed open, or ended more than flapGrace later.
func flaps(w *world, leaves []leave) []string {
	var out []string
	for _, l := range leaves {
		if at, ok := w.endedAt(l.uid); ok && at.Sub(l.at) <= flapGrace {
			continue
		}
		out = append(out, l.what)
	}
	return out
}

// startClients connects extended clients through nginx until each replica
// has sendersPerReplica senders (the others stay as members who only
// read), then the seed clients, and waits until all have joined.
func startClients(ctx context.Context, t *testing.T, w *world, s *dockerstack.Stack) (all, senders []*client) {
	t.Helper()
	per := map[string]int{}
	full := func() bool {
		for i := 1; i <= replicas; i++ {
			if per[fmt.Sprintf("ws-user-%d", i)] < sendersPerReplica {
				return false
			}
		}
		return true
	}
	for i := 1; i <= spreadTries && !full(); i++ {
		c := newClient(w, s.WSURL, fmt.Sprintf("x%d", i), rooms, false, false)
		if err := c.start(ctx); err != nil {
			t.Fatal(err)
		}
		var inst string
		c.read(func() { inst = c.instance })
		if per[inst] < sendersPerReplica {
			per[inst]++
			c.sender = true
			senders = append(senders, c)
		}
		all = append(all, c)
	}
	if !full() {
		t.Fatalf("senders by replica after %d connections: %v, want %d on each", spreadTries, per, sendersPerReplica)
	}
	for i := 1; i <= seedClients; i++ {
		c := newClient(w, s.WSURL, fmt.Sprintf("seed%d", i), rooms, true, false)
		if err := c.start(ctx); err != nil {
			t.Fatal(err)
		}
		all = append(all, c)
	}
	waitFor(ctx, t, w, all, 60*time.Second, "every client joined", func() bool {
		for _, c := range all {
			ready := false
			c.read(func() { ready = c.ready })
			if !ready {
				return false
			}
		}
		return true
	})
	return all, senders
}

// pace makes every sender take one step per tick until stop is closed,
// only re-sends once quiet is set.
func pace(ctx context.Context, senders []*client, quiet *atomic.Bool, stop <-chan struct{}) {
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		for _, c := range senders {
			c.step(ctx, quiet.Load())
		}
		select {
		case <-tk.C:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
	}
}

// acked counts acknowledged messages over clients.
func acked(all []*client) int {
	n := 0
	for _, c := range all {
		c.read(func() { n += len(c.acks) })
	}
	return n
}

// servedAgain is how long after the fault the last sender got its first
// acknowledgement of a message it sent after the fault; false while some
// sender has none yet.
// servedThenAcked waits until every sender has been served again since
// since, then for ackedAfterServed more acknowledgements, and returns how
// long the last sender waited; when names the moment in a failure.
func servedThenAcked(ctx context.Context, t *testing.T, w *world, all, senders []*client, since time.Time, when string) time.Duration {
	t.Helper()
	waitFor(ctx, t, w, all, servedAgainLimit, "every sender served again"+when,
		func() bool { _, ok := servedAgain(senders, since); return ok })
	served, _ := servedAgain(senders, since)
	target := acked(all) + ackedAfterServed
	waitFor(ctx, t, w, all, 90*time.Second, fmt.Sprintf("%d acknowledged after%s", ackedAfterServed, when),
		func() bool { return acked(all) >= target })
	return served
}

func servedAgain(senders []*client, faultAt time.Time) (time.Duration, bool) {
	var worst time.Duration
	for _, c := range senders {
		first := time.Duration(-1)
		c.read(func() {
			for _, a := range c.acks {
				if a.sentAt.After(faultAt) && (first < 0 || a.at.Sub(faultAt) < first) {
					first = a.at.Sub(faultAt)
				}
			}
		})
		if first < 0 {
			return 0, false
		}
		worst = max(worst, first)
	}
	return worst, true
}

// waitFor waits until cond holds, for at most limit; a client that gave
// up reconnecting fails the test at once. On a timeout explain, if given,
// says what was missing.
func waitFor(ctx context.Context, t *testing.T, w *world, all []*client, limit time.Duration, what string, cond func() bool, explain ...func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var gaveUp error
	err := w.n.WaitFor(ctx, func() bool {
		for _, c := range all {
			c.read(func() {
				if c.failure != nil {
					gaveUp = c.failure
				}
			})
		}
		return gaveUp != nil || cond()
	})
	if gaveUp != nil {
		t.Fatalf("%s: a client gave up: %v", what, gaveUp)
	}
	if err != nil {
		var why []string
		for _, f := range explain {
			why = append(why, f())
		}
		t.Fatalf("%s: not within %s (%d acknowledged) %s", what, limit, acked(all), strings.Join(why, "; "))
	}
}

// settle waits until no sender has a message awaiting its ack, then says
// a final message in each room and waits until every client has it: after
// that, nothing acknowledged can still be on its way.
func settle(ctx context.Context, t *testing.T, w *world, all []*client, from *client) {
	t.Helper()
	waitFor(ctx, t, w, all, settleLimit, "every message acknowledged or refused", func() bool {
		for _, c := range all {
			n := 0
			c.read(func() { n = len(c.pending) })
			if n > 0 {
				return false
			}
		}
		return true
	}, func() string {
		var out []string
		for _, c := range all {
			c.read(func() {
				for _, id := range slices.Sorted(maps.Keys(c.pending)) {
					ch := c.pending[id]
					out = append(out, fmt.Sprintf("%s pending in %s (connection %d of %d, ready %v)", id, ch.room, ch.conn, c.conns, c.ready))
				}
			})
		}
		return fmt.Sprintf("unacknowledged: %d, e.g. %v", len(out), out[:min(len(out), 10)])
	})
	for _, room := range rooms {
		var id string
		waitFor(ctx, t, w, all, settleLimit, "final message sent", func() bool {
			id = from.say(ctx, room)
			return id != ""
		})
		waitFor(ctx, t, w, all, settleLimit, fmt.Sprintf("final message of %s everywhere", room), func() bool {
			for _, c := range all {
				has := false
				c.read(func() {
					for _, g := range c.views[room].got {
						if g.msg.ID == id {
							has = true
						}
					}
				})
				if !has {
					return false
				}
			}
			return true
		})
	}
}

// report logs a run's row and appends it to $WSCHAT_FAULT_REPORT.
func report(t *testing.T, sum summary) {
	t.Helper()
	row := sum.row()
	t.Logf("%s (start-overs %d)", row, sum.startOvers)
	path := os.Getenv(reportEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("%s: %v", reportEnv, err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, row); err != nil {
		t.Errorf("%s: %v", reportEnv, err)
	}
}
