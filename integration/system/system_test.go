package system

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	user "github.com/wschat/wschat/services/user/app"
)

// The original proof of concept's end-to-end test, unchanged on the wire:
// two seed clients, one per instance, join "Room 1"; the first says
// "Hi there"; the first frame the second receives is that message.
func TestSeedClientsAcrossInstances(t *testing.T) {
	r := startRelayer(t, nil)
	a := startUser(t, "user-a", r, nil)
	b := startUser(t, "user-b", r, nil)

	c1 := dial(t, a.Addr, "") // the original clients dial ws://host:port
	c2 := dial(t, b.Addr, "")
	c1.send(map[string]any{"type": "join-room", "room": "Room 1"})
	c2.send(map[string]any{"type": "join-room", "room": "Room 1"})
	// Seed clients get no join acknowledgement; wait until both
	// instances count the membership (the join reached the relayer).
	waitFor(t, 10*time.Second, "both joins", func() bool {
		return metric(a.Addr, "wschat_user_memberships") == 1 && metric(b.Addr, "wschat_user_memberships") == 1
	})

	c1.send(map[string]any{"type": "chat", "room": "Room 1", "message": "Hi there"})
	for _, c := range []*client{c2, c1} {
		f := c.next()
		if f.Type != "chat" || f.Room != "Room 1" || f.Message != "Hi there" {
			t.Fatalf("first frame: want the chat message, got %s", f.Raw)
		}
	}
	// Nothing else was sent to a seed client (no acks, no presence).
	if f, err := c2.read(300 * time.Millisecond); err == nil {
		t.Fatalf("seed client got an extra frame: %s", f.Raw)
	}

	// Bad JSON gets an error frame and the connection stays usable.
	c2.sendRaw([]byte(`{"type":"chat",`))
	if f := c2.next(); f.Type != "error" || f.Code != "bad_json" {
		t.Fatalf("want a bad_json error, got %s", f.Raw)
	}
	c2.send(map[string]any{"type": "chat", "room": "Room 1", "message": "still here"})
	if f := c1.next(); f.Message != "still here" {
		t.Fatalf("want the second message, got %s", f.Raw)
	}
}

func TestStandaloneInstanceIsAChat(t *testing.T) {
	u := startUser(t, "solo", nil, nil)
	alice, w := hello(t, u.Addr, "alice")
	if w.Instance != "solo" {
		t.Fatalf("welcome instance = %q", w.Instance)
	}
	bob, _ := hello(t, u.Addr, "bob")
	alice.join("lobby", nil)
	bob.join("lobby", nil)
	alice.send(map[string]any{"type": "chat", "room": "lobby", "message": "hello bob", "id": "a1"})
	// The sender gets its ack and its own message, in either order.
	for _, f := range []frame{alice.expectNot("presence"), alice.expectNot("presence")} {
		if f.Type == "ack" && (f.ID != "a1" || f.Seq != 1) || f.Type == "chat" && f.Seq != 1 || f.Type != "ack" && f.Type != "chat" {
			t.Fatalf("alice got %s", f.Raw)
		}
	}
	got := bob.chats("lobby", 1)[0]
	if got.Message != "hello bob" || got.From != "alice" || got.Seq != 1 || got.ID != "a1" {
		t.Fatalf("bob got %s", got.Raw)
	}

	// Several rooms per connection; leaving one stops its traffic only.
	bob.join("other", nil)
	alice.join("other", nil)
	bob.send(map[string]any{"type": "leave", "room": "lobby", "id": "l1"})
	if f := bob.expectNot("presence"); f.Type != "left" || f.ID != "l1" || f.Room != "lobby" {
		t.Fatalf("leave: %s", f.Raw)
	}
	if p := alice.presence(); p.Event != "leave" || p.Member.Nick != "bob" || p.Room != "lobby" {
		t.Fatalf("alice: want bob's leave of lobby, got %s", p.Raw)
	}
	alice.send(map[string]any{"type": "chat", "room": "lobby", "message": "gone?", "id": "a2"})
	alice.send(map[string]any{"type": "chat", "room": "other", "message": "still here", "id": "a3"})
	if f := bob.chats("other", 1)[0]; f.Message != "still here" {
		t.Fatalf("bob got %s after leaving lobby", f.Raw)
	}
}

// Concurrent senders on three instances: every member everywhere sees the
// same messages in the same order, numbered without gaps.
func TestPerRoomOrderIsIdenticalEverywhere(t *testing.T) {
	r := startRelayer(t, nil)
	env := map[string]string{"RATE_PER_SEC": "1000", "RATE_BURST": "1000"}
	users := []*proc{startUser(t, "u1", r, env), startUser(t, "u2", r, env), startUser(t, "u3", r, env)}
	const perSender = 60
	var members, senders []*client
	for i, u := range users {
		for j := range 2 {
			c, _ := hello(t, u.Addr, fmt.Sprintf("m%d-%d", i, j))
			c.join("order", nil)
			members = append(members, c)
		}
		s, _ := hello(t, u.Addr, fmt.Sprintf("sender%d", i))
		s.join("order", nil)
		senders = append(senders, s)
	}
	var wg sync.WaitGroup
	for i, s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range perSender {
				s.send(map[string]any{"type": "chat", "room": "order", "message": fmt.Sprintf("s%d-%d", i, k), "id": fmt.Sprint(k)})
			}
		}()
	}
	wg.Wait()
	total := perSender * len(senders)
	var want []string
	for i, c := range append(members, senders...) {
		got := c.chats("order", total)
		var seqs []string
		for k, f := range got {
			if k > 0 && f.Seq != got[k-1].Seq+1 {
				t.Fatalf("%s: seq %d after %d", c.name, f.Seq, got[k-1].Seq)
			}
			seqs = append(seqs, fmt.Sprintf("%d:%s", f.Seq, f.Message))
		}
		if i == 0 {
			want = seqs
			continue
		}
		if !slices.Equal(seqs, want) {
			t.Fatalf("%s saw a different order than %s", c.name, members[0].name)
		}
	}
	// Each sender's own messages keep its sending order.
	for i := range senders {
		last := -1
		for _, s := range want {
			var si, k int
			if _, err := fmt.Sscanf(s[strings.Index(s, ":")+1:], "s%d-%d", &si, &k); err == nil && si == i {
				if k != last+1 {
					t.Fatalf("sender %d: message %d after %d", i, k, last)
				}
				last = k
			}
		}
	}
}

// A client reads some messages, disconnects, misses some, and reconnects
// to another instance asking for everything after the last seq it saw.
func TestHistoryAndRecoveryAcrossInstances(t *testing.T) {
	// No history on disk beyond the rings: the relayer keeps 40 messages.
	r := startRelayer(t, map[string]string{"HISTORY_LIMIT": "40", "RETENTION_BYTES": "0"})
	env := map[string]string{"HISTORY_SIZE": "5", "RATE_PER_SEC": "1000", "RATE_BURST": "1000"}
	a := startUser(t, "user-a", r, env)
	b := startUser(t, "user-b", r, env)

	talker, _ := hello(t, a.Addr, "talker")
	talker.join("news", nil)
	reader, _ := hello(t, a.Addr, "reader")
	reader.join("news", nil)
	say := func(from, to int) {
		for k := from; k < to; k++ {
			talker.send(map[string]any{"type": "chat", "room": "news", "message": fmt.Sprint("n", k), "id": fmt.Sprint(k)})
		}
		talker.chats("news", to-from)
	}
	say(0, 10)
	seen := reader.chats("news", 10)
	lastSeen := seen[len(seen)-1].Seq
	reader.conn.Close(websocket.StatusNormalClosure, "")

	say(10, 22) // 12 missed: more than b's cache of 5, so b fetches from the relayer

	// A fresh join gets the last HISTORY_SIZE messages.
	fresh, _ := hello(t, b.Addr, "fresh")
	j := fresh.join("news", nil)
	if len(j.History) != 5 || j.History[4].Text != "n21" || j.Seq != 22 {
		t.Fatalf("fresh join history: %+v (seq %d)", j.History, j.Seq)
	}

	back, _ := hello(t, b.Addr, "reader")
	j = back.join("news", map[string]any{"since": lastSeen})
	if j.Recovered == nil || !*j.Recovered {
		t.Fatalf("recovery: want recovered=true, got %s", j.Raw)
	}
	if len(j.History) != 12 {
		t.Fatalf("recovered %d messages, want 12: %s", len(j.History), j.Raw)
	}
	for k, m := range j.History {
		if m.Seq != lastSeen+1+uint64(k) || m.Text != fmt.Sprint("n", 10+k) {
			t.Fatalf("recovered message %d: %+v", k, m)
		}
	}
	// Live traffic continues right after the recovered messages.
	say(22, 23)
	if f := back.chats("news", 1)[0]; f.Seq != 23 {
		t.Fatalf("first live message after recovery has seq %d, want 23", f.Seq)
	}

	// Paging back through history.
	back.send(map[string]any{"type": "history", "room": "news", "before": 10, "limit": 4, "id": "h1"})
	h := back.expect("history")
	if len(h.Messages) != 4 || h.Messages[0].Seq != 6 || h.Messages[3].Seq != 9 || h.ID != "h1" {
		t.Fatalf("history page: %s", h.Raw)
	}

	// Too old: the relayer keeps 40 messages.
	say(23, 60)
	late, _ := hello(t, b.Addr, "late")
	j = late.join("news", map[string]any{"since": 2})
	if j.Recovered == nil || *j.Recovered {
		t.Fatalf("want recovered=false for a too old since, got %s", j.Raw)
	}
	if n := len(j.History); n == 0 || j.History[n-1].Seq != 60 {
		t.Fatalf("unrecoverable join should still carry the latest history: %s", j.Raw)
	}
}

func TestPresenceAcrossInstances(t *testing.T) {
	r := startRelayer(t, nil)
	a := startUser(t, "user-a", r, nil)
	b := startUser(t, "user-b", r, nil)

	alice, _ := hello(t, a.Addr, "alice")
	alice.join("hall", nil)
	bob, bw := hello(t, b.Addr, "bob")
	j := bob.join("hall", nil)
	nicks := map[string]string{}
	for _, m := range j.Members {
		nicks[m.Nick] = m.Instance
	}
	if nicks["alice"] != "user-a" || nicks["bob"] != "user-b" || len(nicks) != 2 {
		t.Fatalf("bob's joined members: %+v", j.Members)
	}
	p := alice.expect("presence")
	if p.Event != "join" || p.Member.Nick != "bob" || p.Member.Instance != "user-b" || p.Member.ID != bw.ID {
		t.Fatalf("alice: want bob's join, got %s", p.Raw)
	}

	// Instance b stops: bob is told to reconnect elsewhere, and alice sees
	// him leave within the relayer's grace period.
	stopped := time.Now()
	go b.Stop()
	if code, _ := bob.closeStatus(10 * time.Second); code != websocket.StatusServiceRestart {
		t.Fatalf("bob's close code = %d, want 1012", code)
	}
	p = alice.expect("presence")
	if p.Event != "leave" || p.Member.ID != bw.ID {
		t.Fatalf("alice: want bob's leave, got %s", p.Raw)
	}
	if d := time.Since(stopped); d > 5*time.Second {
		t.Fatalf("leave took %v", d)
	}
}

// An instance cut off from the relayer without a word (no FIN, no close
// frame): its members leave everyone else's presence within a bounded time,
// and when the network heals its members are back and have missed nothing.
func TestCutOffInstanceLeavesPresenceAndCatchesUp(t *testing.T) {
	r := startRelayer(t, map[string]string{"LINK_PING_INTERVAL": "200ms", "PRESENCE_GRACE": "300ms"})
	a := startUser(t, "user-a", r, map[string]string{"RATE_PER_SEC": "1000", "RATE_BURST": "1000"})
	px := startProxy(t, r.Addr)
	b := startUserVia(t, "user-b", px.Addr(), map[string]string{"RELAY_PING_INTERVAL": "200ms"})

	alice, _ := hello(t, a.Addr, "alice")
	alice.join("hall", nil)
	alice.join("quiet", nil)
	bob, bw := hello(t, b.Addr, "bob")
	bob.join("hall", nil)
	bob.join("quiet", nil) // a room without messages until the cut
	// bob's presence in both rooms, whatever the order.
	bobs := func(event string) {
		t.Helper()
		for range 2 {
			if p := alice.presence(); p.Event != event || p.Member.ID != bw.ID {
				t.Fatalf("alice: want bob's %s, got %s", event, p.Raw)
			}
		}
	}
	bobs("join")
	alice.send(map[string]any{"type": "chat", "room": "hall", "message": "before", "id": "0"})
	if f := bob.chats("hall", 1)[0]; f.Message != "before" {
		t.Fatalf("bob got %s", f.Raw)
	}

	px.freeze()
	cut := time.Now()
	bobs("leave")
	// Two missed pings, the grace period, and slack for a loaded machine.
	if d := time.Since(cut); d > 5*time.Second {
		t.Fatalf("bob left alice's presence after %v", d)
	}
	t.Logf("cut-off instance left presence after %v", time.Since(cut))
	for k := 1; k <= 5; k++ {
		alice.send(map[string]any{"type": "chat", "room": "hall", "message": fmt.Sprint("during ", k), "id": fmt.Sprint(k)})
	}
	alice.chats("hall", 5)
	// More than the history a new subscription gets (HISTORY_SIZE, 50):
	// bob's instance was subscribed, and is owed every one.
	for k := 1; k <= 60; k++ {
		alice.send(map[string]any{"type": "chat", "room": "quiet", "message": fmt.Sprint("quiet ", k), "id": fmt.Sprint("q", k)})
	}
	alice.chats("quiet", 60)
	// A client that saw seq 6 of hall elsewhere gets unavailable from the
	// cut-off instance, not a room that went back in time.
	waitFor(t, 10*time.Second, "user-b to see its link down", func() bool { return httpStatus(b.Addr, "/readyz") == 503 })
	carol, _ := hello(t, b.Addr, "carol")
	carol.send(map[string]any{"type": "join", "room": "hall", "id": "j1", "since": 6})
	if f := carol.expect("error"); f.Code != "unavailable" || f.ID != "j1" {
		t.Fatalf("carol's join with since 6 on the cut-off instance: %s", f.Raw)
	}

	px.thaw()
	bobs("join")
	// The two rooms' catch-ups come in the order of the resync, which
	// does not order rooms.
	got := bob.chatsIn(map[string]int{"hall": 5, "quiet": 60})
	for k, f := range got["hall"] {
		if f.Message != fmt.Sprint("during ", k+1) || f.Seq != uint64(k+2) {
			t.Fatalf("bob's catch-up message %d: %s", k, f.Raw)
		}
	}
	for k, f := range got["quiet"] {
		if f.Message != fmt.Sprint("quiet ", k+1) || f.Seq != uint64(k+1) {
			t.Fatalf("bob's catch-up message %d in the room that had none: %s", k, f.Raw)
		}
	}
	// Caught up, the instance answers carol's join again.
	carol.send(map[string]any{"type": "join", "room": "hall", "id": "j2", "since": 6})
	if f := carol.expect("joined"); f.Seq != 6 || f.Recovered == nil || !*f.Recovered || len(f.History) != 0 {
		t.Fatalf("carol's join with since 6 after the catch-up: %s", f.Raw)
	}
}

// A relayer that comes back with a new log (its data directory lost)
// numbers every room from 1 again. Extended clients, who hold positions in
// the old numbers, are closed to start over, and their join then shows the
// lower seq; seed clients go on receiving the new numbers.
func TestRelayerWithANewLogRestartsNumbering(t *testing.T) {
	r := startRelayer(t, map[string]string{"DATA_DIR": t.TempDir()})
	a := startUser(t, "user-a", r, nil)
	alice, seed := aliceAndSeedInHall(t, a)
	for k := 1; k <= 3; k++ {
		alice.send(map[string]any{"type": "chat", "room": "hall", "message": fmt.Sprint("old ", k), "id": fmt.Sprint(k)})
	}
	alice.chats("hall", 3)
	for k := 1; k <= 3; k++ {
		if f := seed.next(); f.Seq != uint64(k) {
			t.Fatalf("seed client: %s", f.Raw)
		}
	}

	r.Stop()
	startRelayer(t, map[string]string{"DATA_DIR": t.TempDir(), "PORT": portOf(r.Addr)})
	if code, reason := alice.closeStatus(15 * time.Second); code != websocket.StatusServiceRestart {
		t.Fatalf("alice: closed with %v %q, want 1012", code, reason)
	}
	// Until the resync answers hall, a join with since is unavailable (the
	// instance cannot tell yet); like a client, alice joins again then.
	alice2, _ := hello(t, a.Addr, "alice")
	if joined := joinCaughtUp(t, alice2, "hall", 3); joined.Type != "joined" || joined.Seq != 0 {
		t.Fatalf("alice's join with since 3 after the relayer's new log: %s", joined.Raw)
	}
	alice2.send(map[string]any{"type": "chat", "room": "hall", "message": "new 1", "id": "n1"})
	if f := alice2.chats("hall", 1)[0]; f.Seq != 1 {
		t.Fatalf("alice's first message in the new numbering: %s", f.Raw)
	}
	if f := seed.next(); f.Message != "new 1" || f.Seq != 1 {
		t.Fatalf("seed client after the relayer's new log: %s", f.Raw)
	}
}

// The relayer restarts while messages flow: every acknowledged message is
// delivered exactly once, in order, sequence numbers continue, and the
// history is still there afterwards.
func TestRelayerRestartLosesNothingAcknowledged(t *testing.T) {
	dir := t.TempDir()
	r := startRelayer(t, map[string]string{"DATA_DIR": dir})
	env := map[string]string{"RATE_PER_SEC": "1000", "RATE_BURST": "1000"}
	a := startUser(t, "user-a", r, env)
	b := startUser(t, "user-b", r, env)
	sender, _ := hello(t, a.Addr, "sender")
	sender.join("stream", nil)
	receiver, _ := hello(t, b.Addr, "receiver")
	receiver.join("stream", nil)

	const n = 150
	acked := map[string]uint64{}
	errored := map[string]bool{}
	// collect reads the sender's answers until want messages are settled.
	collect := func(want int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for len(acked)+len(errored) < want {
			f, err := sender.read(time.Until(deadline))
			if err != nil {
				t.Fatalf("sender: %v (acked %d, errored %d of %d)", err, len(acked), len(errored), want)
			}
			switch f.Type {
			case "ack":
				acked[f.ID] = f.Seq
			case "error":
				errored[f.ID] = true
			}
		}
	}
	send := func(from, to int) {
		for k := from; k < to; k++ {
			sender.send(map[string]any{"type": "chat", "room": "stream", "message": fmt.Sprint("m", k), "id": fmt.Sprint(k)})
		}
	}
	send(0, n/3)
	collect(n / 3) // some are acknowledged before the restart ...
	send(n/3, n/2) // ... and some are in flight during it
	r.Stop()
	send(n/2, 2*n/3) // ... and some are sent while it is down
	startRelayer(t, map[string]string{"DATA_DIR": dir, "PORT": portOf(r.Addr)})
	send(2*n/3, n)
	collect(n)

	var got []frame
	for len(got) < len(acked) {
		got = append(got, receiver.chats("stream", 1)...)
	}
	seen := map[string]bool{}
	for k, f := range got {
		if k > 0 && f.Seq != got[k-1].Seq+1 {
			t.Fatalf("receiver: seq %d after %d", f.Seq, got[k-1].Seq)
		}
		if seen[f.ID] {
			t.Fatalf("receiver: message %s delivered twice", f.ID)
		}
		seen[f.ID] = true
		if acked[f.ID] != f.Seq {
			t.Fatalf("receiver: message %s has seq %d, its ack said %d", f.ID, f.Seq, acked[f.ID])
		}
	}
	if f, err := receiver.read(300 * time.Millisecond); err == nil && f.Type == "chat" {
		t.Fatalf("receiver got an unacknowledged message: %s", f.Raw)
	}
	// The history survived: a newcomer sees the newest messages with the
	// sequence numbers their senders were given.
	late, _ := hello(t, b.Addr, "late")
	j := late.join("stream", map[string]any{"since": 0})
	if len(j.History) != len(acked) || j.Seq != got[len(got)-1].Seq {
		t.Fatalf("history after restart: %d messages up to seq %d, want %d up to %d", len(j.History), j.Seq, len(acked), got[len(got)-1].Seq)
	}
	t.Logf("acked %d, refused %d, across a relayer restart", len(acked), len(errored))
}

func portOf(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

// A member that stops reading is closed once writes to it make no
// progress for WRITE_TIMEOUT; its full queue does not close it (that is
// how members that do read are spared a backlog, below), and the room goes
// on for the member that keeps up.
func TestMemberThatStopsReadingIsClosed(t *testing.T) {
	u := startUser(t, "solo", nil, map[string]string{"SEND_QUEUE": "64", "WRITE_TIMEOUT": "1s",
		"RATE_PER_SEC": "100000", "RATE_BURST": "100000"})
	slow := dialNoRead(t, u.Addr, "/ws")
	slow.send(map[string]any{"type": "hello", "nick": "slow"})
	slow.send(map[string]any{"type": "join", "room": "busy"})
	fast, _ := hello(t, u.Addr, "fast")
	fast.join("busy", nil)
	waitFor(t, 5*time.Second, "both members", func() bool { return metric(u.Addr, "wschat_user_memberships") == 2 })
	// A seed client that is not a member publishes: it gets no echo.
	talker := dial(t, u.Addr, "/")
	big := strings.Repeat("x", 4000)
	sent := 0
	waitFor(t, 60*time.Second, "the member that stopped reading to be closed", func() bool {
		for range 20 {
			talker.send(map[string]any{"type": "chat", "room": "busy", "message": big})
			sent++
		}
		fast.chats("busy", 20)
		return metric(u.Addr, "wschat_user_write_timeouts_total") >= 1
	})
	go slow.pump()
	slow.closeStatus(30 * time.Second)
	// The room went on at full speed for the member that keeps up.
	for range 20 {
		talker.send(map[string]any{"type": "chat", "room": "busy", "message": "after"})
	}
	if got := fast.chats("busy", 20); got[19].Message != "after" {
		t.Fatalf("fast member: %s", got[19].Raw)
	}
	if drops := metric(u.Addr, "wschat_user_queue_drops_total"); drops != 0 {
		t.Fatalf("queue drops = %v, want none: a full queue closes no one", drops)
	}
	t.Logf("closed after %d messages of %d bytes", sent, len(big))
}

// An instance cut off from the relay while its clients keep publishing
// gets, when the network heals, the room's missed messages in one resync
// answer and its own held publishes sequenced at once: a backlog many
// times its SEND_QUEUE. Its members, which read normally, are not closed:
// each gets every message once, in order, seed and extended alike.
func TestBacklogAfterACutReachesEveryReader(t *testing.T) {
	r := startRelayer(t, nil)
	fast := map[string]string{"RATE_PER_SEC": "100000", "RATE_BURST": "100000"}
	a := startUser(t, "user-a", r, fast)
	px := startProxy(t, r.Addr)
	b := startUserVia(t, "user-b", px.Addr(), map[string]string{"SEND_QUEUE": "8",
		"RATE_PER_SEC": "100000", "RATE_BURST": "100000"})
	alice, _ := hello(t, a.Addr, "alice")
	alice.join("storm", nil)
	var members []*client
	for _, nick := range []string{"ext1", "ext2"} {
		c, _ := hello(t, b.Addr, nick)
		c.join("storm", nil)
		members = append(members, c)
	}
	seed := dial(t, b.Addr, "/")
	seed.name = "seed"
	seed.send(map[string]any{"type": "join-room", "room": "storm"})
	members = append(members, seed)
	waitFor(t, 10*time.Second, "user-b's members", func() bool { return metric(b.Addr, "wschat_user_memberships") == 3 })

	px.freeze()
	waitFor(t, 20*time.Second, "user-b to see its link down", func() bool { return httpStatus(b.Addr, "/readyz") == 503 })
	const fromA, fromB = 400, 60
	want := map[string]bool{}
	for k := range fromA {
		alice.send(map[string]any{"type": "chat", "room": "storm", "message": fmt.Sprint("a ", k), "id": fmt.Sprint(k)})
		want[fmt.Sprint("a ", k)] = true
	}
	for acks := 0; acks < fromA; {
		if f := alice.next(); f.Type == "ack" {
			acks++
		} else if f.Type != "chat" && f.Type != "presence" {
			t.Fatalf("alice: %s", f.Raw)
		}
	}
	// Held by user-b (RELAY_PENDING_MAX) until its link is back.
	talker := dial(t, b.Addr, "/")
	for k := range fromB {
		talker.send(map[string]any{"type": "chat", "room": "storm", "message": fmt.Sprint("b ", k)})
		want[fmt.Sprint("b ", k)] = true
	}
	px.thaw()
	for _, c := range members {
		got := c.chats("storm", fromA+fromB)
		seen := map[string]bool{}
		for k, f := range got {
			if f.Seq != uint64(k+1) || !want[f.Message] || seen[f.Message] {
				t.Fatalf("%s: message %d is seq %d %q", c.name, k, f.Seq, f.Message)
			}
			seen[f.Message] = true
		}
	}
	if drops := metric(b.Addr, "wschat_user_queue_drops_total"); drops != 0 {
		t.Fatalf("queue drops = %v, want none", drops)
	}
	if metric(b.Addr, "wschat_user_fell_behind_total") <= 0 {
		t.Fatal("no member fell behind: the backlog did not overflow a queue, the test shows nothing")
	}
}

func TestBadInputGetsErrorsAndHurtsNoOne(t *testing.T) {
	u := startUser(t, "solo", nil, map[string]string{"MAX_FRAME_BYTES": "1024", "MAX_MESSAGE_BYTES": "512", "MAX_ROOMS": "2"})
	bystander, _ := hello(t, u.Addr, "bystander")
	bystander.join("calm", nil)
	c, _ := hello(t, u.Addr, "mallory")
	c.join("calm", nil)

	cases := []struct {
		frame string
		code  string
	}{
		{`not json`, "bad_json"},
		{`{"type":`, "bad_json"},
		{`[1,2]`, "bad_json"},
		{`{"type":"shout","id":"x1"}`, "unknown_type"},
		{`{"room":"calm"}`, "unknown_type"},
		{`{"type":"join","room":"","id":"x2"}`, "bad_room"},
		{`{"type":"join","room":"a\u0000b","id":"x3"}`, "bad_room"},
		{`{"type":"join","room":" padded","id":"x4"}`, "bad_room"},
		{`{"type":"chat","room":"calm","message":"","id":"x5"}`, "bad_request"},
		{"{\"type\":\"chat\",\"room\":\"calm\",\"message\":\"caf\xe9\",\"id\":\"x12\"}", "bad_request"},
		{"{\"type\":\"join\",\"room\":\"R\xff\",\"id\":\"x13\"}", "bad_request"},
		{`{"type":"chat","room":"calm","message":"` + strings.Repeat("y", 600) + `","id":"x6"}`, "too_large"},
		{`{"type":"chat","room":"elsewhere","message":"hi","id":"x7"}`, "not_joined"},
		{`{"type":"hello","nick":"again","id":"x8"}`, "hello_first"},
		{`{"type":"join","room":"calm","id":"x9"}`, "already_joined"},
		{`{"type":"leave","room":"nowhere","id":"x10"}`, "not_joined"},
	}
	for _, tc := range cases {
		c.sendRaw([]byte(tc.frame))
		f := c.expect("error")
		if f.Code != tc.code {
			t.Fatalf("frame %s: want code %s, got %s", tc.frame, tc.code, f.Raw)
		}
		if strings.Contains(tc.frame, `"id":"x`) && !strings.Contains(f.Raw, `"id":"x`) {
			t.Fatalf("frame %s: error does not name the offending id: %s", tc.frame, f.Raw)
		}
	}
	c.join("second", nil)
	c.send(map[string]any{"type": "join", "room": "third", "id": "x11"})
	if f := c.expect("error"); f.Code != "too_many_rooms" {
		t.Fatalf("third room: %s", f.Raw)
	}
	// Still usable after all of that.
	c.send(map[string]any{"type": "chat", "room": "calm", "message": "sorry", "id": "ok"})
	if f := bystander.chats("calm", 1)[0]; f.Message != "sorry" {
		t.Fatalf("bystander got %s", f.Raw)
	}
	// A frame over the limit closes the connection with 1009 ...
	c.sendRaw([]byte(`{"type":"chat","room":"calm","message":"` + strings.Repeat("z", 2000) + `"}`))
	if code, _ := c.closeStatus(5 * time.Second); code != websocket.StatusMessageTooBig {
		t.Fatalf("oversize frame: close code %d, want 1009", code)
	}
	// ... and everyone else carries on.
	other, _ := hello(t, u.Addr, "other")
	other.join("calm", nil)
	other.send(map[string]any{"type": "chat", "room": "calm", "message": "fine", "id": "o1"})
	if f := bystander.chats("calm", 1)[0]; f.Message != "fine" {
		t.Fatalf("bystander got %s", f.Raw)
	}
}

func TestInvalidConfigFailsBeforeListening(t *testing.T) {
	for _, env := range []map[string]string{
		{"PORT": "99999"},
		{"RELAYER_URL": "http://relayer:3001"},
		{"RELAYER_URL": "ws://relayer:3001"}, // no secret
		{"SEND_QUEUE": "0"},
		{"JOIN_TIMEOUT": "0s"},
		{"MAX_FRAME_BYTES": "lots"},
		{"MEMORY_RECLAIM_QUIET": "-1s"},
		{"PRESENCE_DELAY": "2s"},
		{"MEMORY_RECLAIM_MIN_BYTES": "4096"},
		{"DEDUP_WINDOW": "-1"},
		{"RATE_LIMIT_CLOSE_AFTER": "-1s"},
		{"FRAME_READ_TIMEOUT": "-1s"},
		{"MAX_CONNS_PER_ADDR": "-1"},
		{"TRUSTED_PROXIES": "10.0.0.0/33"},
	} {
		err := user.Run(t.Context(), []string{"ws-user"}, func(k string) string { return env[k] }, nilWriter{}, nilWriter{})
		if err == nil || !strings.Contains(err.Error(), "config") {
			t.Errorf("env %v: want a config error, got %v", env, err)
		}
	}
}

type nilWriter struct{}

func (nilWriter) Write(p []byte) (int, error) { return len(p), nil }

func TestHTTPEndpointsAndOrigins(t *testing.T) {
	r := startRelayer(t, nil)
	u := startUser(t, "user-a", r, map[string]string{"ALLOWED_ORIGINS": "chat.example.com"})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/": 200, "/nope": 404} {
		if got := httpStatus(u.Addr, path); got != want {
			t.Errorf("GET %s = %d, want %d", path, got, want)
		}
	}
	resp, err := http.Get("http://" + u.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("page CSP = %q", csp)
	}

	// Readiness follows the relay link.
	r.Stop()
	waitFor(t, 10*time.Second, "readyz to fail without a relayer", func() bool { return httpStatus(u.Addr, "/readyz") == 503 })
	startRelayer(t, map[string]string{"PORT": portOf(r.Addr)})
	waitFor(t, 10*time.Second, "readyz to recover", func() bool { return httpStatus(u.Addr, "/readyz") == 200 })

	// Cross-site WebSocket hijacking: a foreign page's Origin is refused.
	for origin, ok := range map[string]bool{"https://evil.example": false, "https://chat.example.com": true, "": true} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, resp, err := websocket.Dial(ctx, "ws://"+u.Addr+"/ws", &websocket.DialOptions{HTTPHeader: h})
		cancel()
		if ok != (err == nil) {
			t.Errorf("origin %q: dial error %v", origin, err)
		}
		if !ok && (resp == nil || resp.StatusCode != http.StatusForbidden) {
			t.Errorf("origin %q: want 403", origin)
		}
		if conn != nil {
			conn.CloseNow()
		}
	}
}

// An extended join that cannot be set up because the relayer is down is
// answered unavailable within JOIN_TIMEOUT and undone; a seed join, which
// gets no answer, keeps waiting and takes effect when the relayer is back.
func TestJoinWhileRelayerIsDown(t *testing.T) {
	r := startRelayer(t, nil)
	u := startUser(t, "user-a", r, map[string]string{"JOIN_TIMEOUT": "300ms"})
	r.Stop()
	waitFor(t, 10*time.Second, "readyz to fail without a relayer", func() bool { return httpStatus(u.Addr, "/readyz") == 503 })

	ext, _ := hello(t, u.Addr, "ext")
	ext.send(map[string]any{"type": "join", "room": "dark", "id": "j1"})
	if f := ext.expect("error"); f.Code != "unavailable" || f.ID != "j1" || f.Room != "dark" {
		t.Fatalf("join while the relayer is down: %s", f.Raw)
	}
	seed := dial(t, u.Addr, "/")
	seed.send(map[string]any{"type": "join-room", "room": "dark"})

	startRelayer(t, map[string]string{"PORT": portOf(r.Addr)})
	waitFor(t, 10*time.Second, "the seed join to take effect", func() bool { return metric(u.Addr, "wschat_user_memberships") == 1 })
	ext.join("dark", nil)
	ext.send(map[string]any{"type": "chat", "room": "dark", "message": "light", "id": "c1"})
	if got := seed.chats("dark", 1); got[0].Message != "light" {
		t.Fatalf("seed member got %s", got[0].Raw)
	}
}

// RELAY_FLUSH_DELAY and LINK_FLUSH_DELAY hold link output back so that
// more goes in one message: a chat's ack waits for both, and a burst
// still arrives whole and in order.
func TestLinkFlushDelays(t *testing.T) {
	const delay = 200 * time.Millisecond
	r := startRelayer(t, map[string]string{"LINK_FLUSH_DELAY": delay.String()})
	u := startUser(t, "user-a", r, map[string]string{"RELAY_FLUSH_DELAY": delay.String(), "RATE_PER_SEC": "1000", "RATE_BURST": "1000"})
	c, _ := hello(t, u.Addr, "patient")
	c.join("slow-link", nil)

	// The first chat's round trip also carries whatever the join left on
	// the links (presence); once its ack and echo are in, both links are
	// quiet, so the second chat's publish and ack each wait a full delay.
	chatAndAck := func(id string) time.Duration {
		start := time.Now()
		c.send(map[string]any{"type": "chat", "room": "slow-link", "message": id, "id": id})
		var took time.Duration
		// The ack and the echo come in either order.
		for acked, echoed := false, false; !acked || !echoed; {
			switch f := c.expectNot("presence"); f.Type {
			case "ack":
				acked, took = true, time.Since(start)
			case "chat":
				echoed = true
			default:
				t.Fatalf("unexpected %s", f.Raw)
			}
		}
		return took
	}
	chatAndAck("c0")
	if took := chatAndAck("c1"); took < 2*delay {
		t.Fatalf("ack after %v, want at least both links' delay, %v", took, 2*delay)
	}
	const n = 30
	for i := range n {
		c.send(map[string]any{"type": "chat", "room": "slow-link", "message": fmt.Sprint(i), "id": fmt.Sprint("b", i)})
	}
	for i, f := range c.chats("slow-link", n) {
		if f.Message != fmt.Sprint(i) {
			t.Fatalf("chat %d is %s", i, f.Raw)
		}
	}
}

// The relayer holds presence in memory: after its restart, the first
// instance to re-sync is answered without the members of the others, which
// have not re-synced yet. Members who stayed must not flap (leave, then
// join again when their instance syncs); a member who left while the
// relayer was down gets exactly one leave, within the relayer's
// PRESENCE_GRACE of its start (plus the hub's 250 ms sweep).
func TestRelayerRestartDoesNotFlapPresence(t *testing.T) {
	const grace = 3 * time.Second
	dir := t.TempDir()
	renv := map[string]string{"DATA_DIR": dir, "PRESENCE_GRACE": grace.String()}
	r := startRelayer(t, renv)
	a := startUser(t, "user-a", r, nil)
	// b reaches the relayer through a proxy, so that the test can make it
	// re-sync after a: the order in which a flap shows.
	px := startProxy(t, r.Addr)
	b := startUserVia(t, "user-b", px.Addr(), nil)

	alice, _ := hello(t, a.Addr, "alice")
	alice.join("hall", nil)
	bob, bw := hello(t, b.Addr, "bob")
	bob.join("hall", nil)
	carol, cw := hello(t, b.Addr, "carol")
	carol.join("hall", nil)
	for _, id := range []string{bw.ID, cw.ID} {
		if p := alice.presence(); p.Event != "join" || p.Member.ID != id {
			t.Fatalf("alice: want the join of %s, got %s", id, p.Raw)
		}
	}

	r.Stop()
	waitFor(t, 10*time.Second, "user-b to see its link down", func() bool { return httpStatus(b.Addr, "/readyz") == 503 })
	// carol really leaves while the relayer is down.
	carol.conn.Close(websocket.StatusNormalClosure, "bye")
	waitFor(t, 10*time.Second, "carol gone from user-b", func() bool { return metric(b.Addr, "wschat_user_memberships") == 1 })
	px.freeze()
	renv["PORT"] = portOf(r.Addr)
	r2 := startRelayer(t, renv)
	restarted := time.Now()
	// a re-syncs first: the relayer then knows alice alone.
	waitFor(t, 10*time.Second, "user-a to re-sync alone", func() bool {
		return metric(r2.Addr, "wschat_relayer_presence_members") == 1
	})
	px.thaw()
	waitFor(t, 10*time.Second, "user-b to re-sync", func() bool {
		return metric(r2.Addr, "wschat_relayer_presence_members") == 2
	})

	// Through to bob's message after both re-synced (the link is FIFO:
	// a flap's leave and join come before it), and to carol's leave:
	// nothing about bob, carol's leave once.
	bob.send(map[string]any{"type": "chat", "room": "hall", "message": "still here", "id": "b1"})
	sawChat, carolLeft := false, false
	deadline := time.Now().Add(grace + 10*time.Second)
	for !sawChat || !carolLeft {
		f, err := alice.read(time.Until(deadline))
		if err != nil {
			t.Fatalf("alice: %v (bob's message seen: %v, carol's leave seen: %v)", err, sawChat, carolLeft)
		}
		switch {
		case f.Type == "chat" && f.ID == "b1":
			sawChat = true
		case f.Type == "presence" && f.Member.ID == cw.ID && f.Event == "leave" && !carolLeft:
			carolLeft = true
			if d := time.Since(restarted); d > grace+5*time.Second {
				t.Fatalf("carol's leave came %v after the relayer's restart; its grace is %v", d, grace)
			}
			t.Logf("carol's leave came %v after the relayer's restart", time.Since(restarted).Round(time.Millisecond))
		default:
			t.Fatalf("alice: unexpected frame after the relayer's restart: %s", f.Raw)
		}
	}
	// And nothing more: bob's next message comes with no presence before it.
	bob.send(map[string]any{"type": "chat", "room": "hall", "message": "and now", "id": "b2"})
	if f := alice.next(); f.Type != "chat" || f.ID != "b2" {
		t.Fatalf("alice: want bob's second message, got %s", f.Raw)
	}
}
