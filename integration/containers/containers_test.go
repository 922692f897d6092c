package containers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

// spreadMembers joins members (nicks prefix-1, prefix-2, ...) through nginx
// until every replica in want has at least perReplica of them, or fails
// after a bounded number of tries. It returns them by replica.
func spreadMembers(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, prefix, room string, want []string, perReplica int) map[string][]*member {
	t.Helper()
	by := map[string][]*member{}
	full := func() bool {
		for _, id := range want {
			if len(by[id]) < perReplica {
				return false
			}
		}
		return true
	}
	// nginx picks a replica at random per connection: 60 tries leave a
	// chance of about 1e-9 that one of three replicas is missed.
	for i := 1; i <= 60 && !full(); i++ {
		m := join(ctx, t, nt, s.WSURL, fmt.Sprintf("%s-%d", prefix, i), room)
		by[m.instance()] = append(by[m.instance()], m)
	}
	if !full() {
		t.Fatalf("connections by replica after 60 tries: %v, want %d on each of %v", counts(by), perReplica, want)
	}
	return by
}

// busyRoom spreads perReplica members over each of the three replicas in
// room (closed at the end of the test) and starts traffic from one sender
// per replica; closing stop ends it, and done is closed when it has.
func busyRoom(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, s *dockerstack.Stack, prefix, room string, perReplica int) (
	by map[string][]*member, members []*member, stop chan struct{}, done <-chan struct{},
) {
	t.Helper()
	by = spreadMembers(ctx, t, nt, s, prefix, room, []string{"ws-user-1", "ws-user-2", "ws-user-3"}, perReplica)
	members = allMembers(by)
	t.Cleanup(func() {
		for _, m := range members {
			m.close()
		}
	})
	senders := []*member{by["ws-user-1"][0], by["ws-user-2"][0], by["ws-user-3"][0]}
	stop = make(chan struct{})
	return by, members, stop, traffic(ctx, senders, 60*time.Millisecond, 2000, stop)
}

func counts(by map[string][]*member) map[string]int {
	n := map[string]int{}
	for id, ms := range by {
		n[id] = len(ms)
	}
	return n
}

func allMembers(by map[string][]*member) []*member {
	var all []*member
	for _, id := range slices.Sorted(maps.Keys(by)) {
		all = append(all, by[id]...)
	}
	return all
}

// traffic makes the senders say one message each every period until stop
// is closed or all rounds were sent.
func traffic(ctx context.Context, senders []*member, period time.Duration, rounds int, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(period)
		defer tick.Stop()
		for range rounds {
			for _, m := range senders {
				m.say(ctx)
			}
			select {
			case <-tick.C:
			case <-stop:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return done
}

// acked counts acknowledged messages over members.
func acked(members []*member) int {
	n := 0
	for _, m := range members {
		m.log.mu.Lock()
		n += len(m.log.acks)
		m.log.mu.Unlock()
	}
	return n
}

// waitAcked waits until the members together have n acknowledgements.
func waitAcked(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, members []*member, n int, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := nt.WaitFor(ctx, func() bool {
		for _, m := range members {
			if m.failed() {
				return true
			}
		}
		return acked(members) >= n
	})
	for _, m := range members {
		if err := m.failureErr(); err != nil {
			t.Fatalf("%s: %s gave up: %v", what, m.name, err)
		}
	}
	if err != nil {
		t.Fatalf("%s: %d acknowledgements after 60s, want %d", what, acked(members), n)
	}
}

func (m *member) failed() bool { return m.failureErr() != nil }

// settle waits until no member has a message in flight, then sends one
// last message from m and waits until every member has received it; it
// returns its seq. Members that gave up fail the test.
func settle(ctx context.Context, t *testing.T, nt *dockerstack.Notifier, from *member, members []*member) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Messages still in flight would be sequenced after the last one.
	err := nt.WaitFor(ctx, func() bool {
		for _, m := range members {
			m.log.mu.Lock()
			n := m.log.inFlight()
			m.log.mu.Unlock()
			if n > 0 && !m.failed() {
				return false
			}
		}
		return true
	})
	for _, m := range members {
		if err := m.failureErr(); err != nil {
			t.Fatalf("%s gave up: %v", m.name, err)
		}
	}
	if err != nil {
		t.Fatalf("messages still unacknowledged after 60s: %v", err)
	}
	from.mu.Lock()
	id := fmt.Sprintf("%s-%d", from.name, from.n+1)
	from.mu.Unlock()
	from.say(ctx)
	var last uint64
	err = from.log.waitFor(ctx, func() bool {
		seq, ok := from.log.acks[id]
		last = seq
		return ok
	})
	if err != nil {
		from.log.mu.Lock()
		errs := slices.Clone(from.log.errs)
		from.log.mu.Unlock()
		t.Fatalf("last message %s not acknowledged: %v (errors: %v)", id, err, errs)
	}
	for _, m := range members {
		if err := m.log.waitFor(ctx, func() bool { return m.log.lastSeq() >= last }); err != nil {
			m.log.mu.Lock()
			got := m.log.lastSeq()
			m.log.mu.Unlock()
			t.Fatalf("%s: has seq %d, want %d: %v (failure: %v)", m.name, got, last, err, m.failureErr())
		}
	}
	return last
}

func (m *member) failureErr() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failure
}

func logsOf(members []*member) map[string]*roomLog {
	logs := map[string]*roomLog{}
	for _, m := range members {
		logs[m.name] = m.log
	}
	return logs
}

// backends are the relay tiers the end-to-end tests run against, each
// test once per backend (subtests named after them): the relayer, and a
// three-node NATS JetStream cluster (docker-compose.yml's nats profile).
var backends = []struct {
	name string
	opts dockerstack.Options
}{
	{"relayer", dockerstack.Options{}},
	{"nats", dockerstack.Options{NATS: true}},
}

// onEveryBackend runs test on a stack of its own with replicas ws-user
// replicas, once per backend.
func onEveryBackend(t *testing.T, replicas int, test func(t *testing.T, s *dockerstack.Stack)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			dockerstack.Need(t)
			test(t, dockerstack.NewWith(t, replicas, b.opts))
		})
	}
}

// Clients land on every replica and one room works across all of them,
// for extended and seed clients alike.
func TestClientsSpreadOverReplicasShareARoom(t *testing.T) {
	onEveryBackend(t, 3, testClientsSpreadOverReplicasShareARoom)
}

func testClientsSpreadOverReplicasShareARoom(t *testing.T, s *dockerstack.Stack) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const room = "lobby"

	nt := dockerstack.NewNotifier()
	by := spreadMembers(ctx, t, nt, s, "alice", room, []string{"ws-user-1", "ws-user-2", "ws-user-3"}, 1)
	members := allMembers(by)
	t.Cleanup(func() {
		for _, m := range members {
			m.close()
		}
	})

	// Seed clients (the proof of concept's dialect), on "/" as it used.
	// They get no welcome and no joined: each one knows it is in the room
	// once its own first message comes back.
	type seed struct {
		c    *websocket.Conn
		log  *roomLog
		name string
	}
	var seeds []*seed
	for i := 1; i <= 2; i++ {
		c, _, err := dockerstack.Dial(ctx, s.WSURL, "/")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		sd := &seed{c: c, log: newRoomLog(nt), name: fmt.Sprintf("seed-%d", i)}
		if err := dockerstack.Send(ctx, c, protocol.Inbound{Type: protocol.TypeJoinRoom, Room: room}); err != nil {
			t.Fatal(err)
		}
		hi := "hi from " + sd.name
		if err := dockerstack.Send(ctx, c, protocol.Inbound{Type: protocol.TypeChat, Room: room, Message: hi}); err != nil {
			t.Fatal(err)
		}
		var first protocol.Message
		for first.Text != hi {
			if err := dockerstack.ReadType(ctx, c, protocol.TypeChat, &first); err != nil {
				t.Fatalf("%s: %v", sd.name, err)
			}
		}
		sd.log.base = first.Seq
		go func() {
			for {
				_, b, err := c.Read(ctx)
				if err != nil {
					return
				}
				var f struct {
					Type string `json:"type"`
					protocol.Message
				}
				if err := json.Unmarshal(b, &f); err != nil || (f.Type != protocol.TypeChat && f.Type != protocol.TypeError) {
					sd.log.update(func() { sd.log.errs = append(sd.log.errs, "seed got a non-seed frame: "+string(b)) })
					continue
				}
				if f.Type == protocol.TypeChat {
					sd.log.update(func() { sd.log.msgs = append(sd.log.msgs, f.Message) })
				}
			}
		}()
		seeds = append(seeds, sd)
	}

	// Everyone talks: each member and each seed client says 10 messages.
	for round := range 10 {
		for _, m := range members {
			m.say(ctx)
		}
		for _, sd := range seeds {
			if err := dockerstack.Send(ctx, sd.c, protocol.Inbound{Type: protocol.TypeChat, Room: room, Message: fmt.Sprintf("%s says %d", sd.name, round)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Seed clients get no acks: their last message coming back tells
	// they have nothing in flight.
	for _, sd := range seeds {
		lastText := fmt.Sprintf("%s says %d", sd.name, 9)
		err := sd.log.waitFor(ctx, func() bool {
			return slices.ContainsFunc(sd.log.msgs, func(m protocol.Message) bool { return m.Text == lastText })
		})
		if err != nil {
			t.Fatalf("%s never got its own last message back: %v", sd.name, err)
		}
	}
	last := settle(ctx, t, nt, members[0], members)
	for _, sd := range seeds {
		if err := sd.log.waitFor(ctx, func() bool { return sd.log.lastSeq() >= last }); err != nil {
			t.Fatalf("%s did not get seq %d: %v", sd.name, last, err)
		}
	}

	logs := logsOf(members)
	for _, sd := range seeds {
		logs[sd.name] = sd.log
	}
	canon := checkLogs(t, last, logs)
	for _, sd := range seeds {
		sd.log.mu.Lock()
		if len(sd.log.errs) > 0 {
			t.Errorf("%s: %v", sd.name, sd.log.errs)
		}
		sd.log.mu.Unlock()
	}
	// Every message said after the last seed joined reached everyone:
	// 10 per member, 10 per seed, and the settling one.
	wantTexts := 10*(len(members)+len(seeds)) + 1
	var lastSeedBase uint64
	for _, sd := range seeds {
		lastSeedBase = max(lastSeedBase, sd.log.base)
	}
	if got := int(last - lastSeedBase); got < wantTexts {
		t.Errorf("%d messages after the last seed joined, want at least %d", got, wantTexts)
	}
	t.Logf("%d members on %v and %d seed clients agree on %d messages", len(members), counts(by), len(seeds), len(canon))
}

// A ws-user replica crashes under traffic: its clients reconnect through
// nginx to the survivors and recover what they missed; nobody loses an
// acknowledged message or sees one twice.
func TestReplicaCrashUnderTraffic(t *testing.T) {
	onEveryBackend(t, 3, testReplicaCrashUnderTraffic)
}

func testReplicaCrashUnderTraffic(t *testing.T, s *dockerstack.Stack) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const room = "crash"
	const victim = "ws-user-2"

	nt := dockerstack.NewNotifier()
	by, members, stop, done := busyRoom(ctx, t, nt, s, "m", room, 2)

	waitAcked(ctx, t, nt, members, 40, "before the crash")
	s.Kill(ctx, s.User(victim))
	// Traffic goes on until the victim's clients are back and talking.
	victims := by[victim]
	ackedBefore := acked(victims)
	waitAcked(ctx, t, nt, victims, ackedBefore+20, "after the crash")
	close(stop)
	<-done

	last := settle(ctx, t, nt, by["ws-user-1"][0], members)
	checkLogs(t, last, logsOf(members))
	for _, m := range victims {
		m.mu.Lock()
		inst, closes := slices.Clone(m.instances), slices.Clone(m.closes)
		m.mu.Unlock()
		if len(inst) < 2 || inst[len(inst)-1] == victim {
			t.Errorf("%s: connections went to %v, want a reconnect away from %s", m.name, inst, victim)
		}
		t.Logf("%s: replicas %v, connections ended: %v", m.name, inst, closes)
	}
	for _, m := range members {
		m.mu.Lock()
		inst := slices.Clone(m.instances)
		m.mu.Unlock()
		if !slices.Contains(victims, m) && len(inst) != 1 {
			t.Errorf("%s: a client of a surviving replica reconnected: %v", m.name, inst)
		}
	}
	t.Logf("%d messages, %d acknowledged, %d clients", last, acked(members), len(members))
}

// The relayer restarts (a new container on the same data volume) under
// traffic: clients recover everything, sequence numbers go on without
// reuse, and the history from before the restart is still there.
func TestRelayerRestartUnderTraffic(t *testing.T) {
	dockerstack.Need(t)
	s := dockerstack.New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const room = "restart"

	nt := dockerstack.NewNotifier()
	by, members, stop, done := busyRoom(ctx, t, nt, s, "r", room, 1)

	waitAcked(ctx, t, nt, members, 40, "before the restart")
	s.RestartRelayer(ctx)
	waitAcked(ctx, t, nt, members, acked(members)+40, "after the restart")
	close(stop)
	<-done

	last := settle(ctx, t, nt, by["ws-user-1"][0], members)
	canon := checkLogs(t, last, logsOf(members))

	// A newcomer asks for the whole room: every message, including those
	// sequenced before the restart, comes from the relayer's volume.
	c, _, err := dockerstack.Hello(ctx, s.WSURL, "newcomer")
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	zero := uint64(0)
	if err := dockerstack.Send(ctx, c, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j", Since: &zero}); err != nil {
		t.Fatal(err)
	}
	var j protocol.Joined
	if err := dockerstack.ReadType(ctx, c, protocol.TypeJoined, &j); err != nil {
		t.Fatal(err)
	}
	if j.Recovered == nil || !*j.Recovered || j.Seq < last {
		t.Fatalf("newcomer joined at seq %d (recovered %v), want at least %d, recovered", j.Seq, j.Recovered, last)
	}
	for i, msg := range j.History {
		want := uint64(i + 1)
		if msg.Seq != want {
			t.Fatalf("newcomer history[%d] has seq %d, want %d", i, msg.Seq, want)
		}
		if c, ok := canon[msg.Seq]; ok && (c.ID != msg.ID || c.Text != msg.Text) {
			t.Errorf("history seq %d is %q, the clients saw %q", msg.Seq, msg.Text, c.Text)
		}
	}
	if uint64(len(j.History)) != j.Seq {
		t.Errorf("newcomer got %d messages of history, want all %d", len(j.History), j.Seq)
	}
	t.Logf("%d messages across the restart, %d acknowledged", last, acked(members))
}

// A replica started later gets new connections through nginx without
// nginx being restarted, and a stopped one gets none, without errors.
func TestScaleUpAndDown(t *testing.T) {
	dockerstack.Need(t)
	s := dockerstack.New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if s.StartUser(ctx, "ws-user-4") == nil {
		t.FailNow()
	}
	reached := func(want string, tries int) (int, []string) {
		var seen []string
		for i := 1; i <= tries; i++ {
			c, w, err := dockerstack.Hello(ctx, s.WSURL, fmt.Sprintf("probe-%d", i))
			if err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
			c.Close(websocket.StatusNormalClosure, "")
			seen = append(seen, w.Instance)
			if w.Instance == want {
				return i, seen
			}
		}
		return 0, seen
	}
	// nginx re-resolves ws-user every 2 s; at 1/4 per try, 80 tries fail
	// to reach the new replica with a chance of about 1e-10 once it is seen.
	deadline := time.Now().Add(30 * time.Second)
	var n int
	var seen []string
	for n == 0 && time.Now().Before(deadline) {
		n, seen = reached("ws-user-4", 80)
	}
	if n == 0 {
		t.Fatalf("ws-user-4 never reached through nginx; connections went to %v", seen)
	}
	t.Logf("new replica reached after %d connections", n)

	// Scale down: clients of the stopped replica are told to go elsewhere
	// (1012), and new connections only reach the others.
	var onTwo *websocket.Conn
	for i := 0; i < 60 && onTwo == nil; i++ {
		c, w, err := dockerstack.Hello(ctx, s.WSURL, "leaving")
		if err != nil {
			t.Fatal(err)
		}
		if w.Instance == "ws-user-2" {
			onTwo = c
		} else {
			c.CloseNow()
		}
	}
	if onTwo == nil {
		t.Fatal("no connection reached ws-user-2 in 60 tries")
	}
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := onTwo.Read(ctx); err != nil {
				closed <- err
				return
			}
		}
	}()
	s.Stop(ctx, s.User("ws-user-2"))
	select {
	case err := <-closed:
		if got := websocket.CloseStatus(err); got != websocket.StatusServiceRestart {
			t.Errorf("client of the stopped replica: %v, want close status 1012", err)
		}
	case <-ctx.Done():
		t.Fatal("client of the stopped replica was never closed")
	}
	for i := 1; i <= 30; i++ {
		start := time.Now()
		c, w, err := dockerstack.Hello(ctx, s.WSURL, fmt.Sprintf("after-%d", i))
		if err != nil {
			t.Fatalf("connection %d after the stop: %v", i, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
		if w.Instance == "ws-user-2" {
			t.Fatalf("connection %d reached the stopped replica", i)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("connection %d took %s", i, d)
		}
	}
}

// With no replica left nginx answers at once with a short error instead
// of hanging, and recovers when a replica is back.
func TestNoReplicaCleanError(t *testing.T) {
	dockerstack.Need(t)
	s := dockerstack.New(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var wg sync.WaitGroup
	for _, id := range []string{"ws-user-1", "ws-user-2"} {
		ctr := s.User(id)
		wg.Go(func() {
			grace := 15 * time.Second
			if err := ctr.Stop(ctx, &grace); err != nil {
				t.Errorf("stop %s: %v", id, err)
			}
		})
	}
	wg.Wait()

	// Within nginx's DNS cache (2 s) and after it: both must be quick.
	for i := range 5 {
		start := time.Now()
		_, resp, err := dockerstack.Dial(ctx, s.WSURL, "/ws")
		d := time.Since(start)
		if err == nil {
			t.Fatalf("attempt %d: WebSocket connected with no replica up", i)
		}
		if resp == nil || (resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusBadGateway) {
			t.Fatalf("attempt %d: %v, want an HTTP 503 or 502 answer", i, err)
		}
		if d > 5*time.Second {
			t.Errorf("attempt %d: the error took %s", i, d)
		}
		t.Logf("attempt %d: %d in %s", i, resp.StatusCode, d.Round(time.Millisecond))
	}
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.HTTPURL+"/", nil)
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "unavailable") {
		t.Errorf("GET / with no replica: %d %q, want 503 with a short error", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("GET / with no replica took %s", d)
	}

	// A replica comes back: nginx finds it without a restart.
	if s.StartUser(ctx, "ws-user-3") == nil {
		t.FailNow()
	}
	var lastErr error
	for i := 0; i < 50; i++ {
		c, w, err := dockerstack.Hello(ctx, s.WSURL, "back")
		if err == nil {
			c.Close(websocket.StatusNormalClosure, "")
			if w.Instance != "ws-user-3" {
				t.Errorf("reached %s, want ws-user-3", w.Instance)
			}
			return
		}
		lastErr = err
		// nginx may still hold the "no such name" answer for up to 2 s:
		// retry with a pause, as a client would.
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	t.Fatalf("no connection after the replica came back: %v", lastErr)
}
