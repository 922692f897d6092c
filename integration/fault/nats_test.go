package fault

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

const (
	// natsPublishTimeout is the replicas' NATS_PUBLISH_TIMEOUT: without
	// quorum a chat is refused after it.
	natsPublishTimeout = 3 * time.Second
	// natsStream is the replicas' NATS_STREAM (the default).
	natsStream = "wschat"
	// recheckTail is how many messages before the quorum loss a newcomer
	// recovers, per room, once it is back.
	recheckTail = 50
)

// The relay tier on three NATS nodes (the stream at 3 replicas) under
// steady traffic, as in the other scenarios:
//   - one node SIGKILLed: every sender is served on (chats sent while
//     the stream elects a new leader may be refused as unavailable), no
//     client is closed; it restarts, rejoins, and the stream has all
//     three replicas caught up;
//   - then two nodes SIGKILLed, quorum gone: every sender's chats are
//     refused as unavailable (after NATS_PUBLISH_TIMEOUT), none is
//     acknowledged; the nodes restart and new chats are acknowledged again;
//   - at the end, the checker over everything: every acknowledged message
//     reached every member once and in order; no refused chat (never sent
//     again by its client) was ever delivered; a newcomer recovers the
//     messages acknowledged before the quorum loss, at their seqs.
func TestNATSNodeLoss(t *testing.T) {
	dockerstack.Need(t)
	s := dockerstack.NewWith(t, replicas, dockerstack.Options{NATS: true, UserEnv: map[string]string{
		"NATS_PUBLISH_TIMEOUT": natsPublishTimeout.String(),
	}})
	ctx, w, all, senders, quiet := startTraffic(t, s)

	// One node down: the two others are a quorum.
	closedBefore := closes(all)
	killNATS(ctx, t, s, 2)
	faultAt := w.markFault()
	served := servedThenAcked(ctx, t, w, all, senders, faultAt, " with nats-2 down")
	startNATS(ctx, t, s, 2)
	waitStreamCurrent(ctx, t, s)
	if n := closes(all) - closedBefore; n != 0 {
		t.Errorf("%d client connections closed while one NATS node was down, want none", n)
	}
	// A publish waits for the stream's leader: when the killed node led
	// it, the election (seconds) may outlast NATS_PUBLISH_TIMEOUT, and
	// the chats of that while are refused, as unavailable, never lost.
	oneDown := refusals(all, faultAt, time.Now())
	for id, code := range oneDown {
		if code != protocol.CodeUnavailable {
			t.Errorf("%s refused with %s while one node was down, want %s", id, code, protocol.CodeUnavailable)
		}
	}
	t.Logf("one node down: every sender served again %.1f s after the kill (%d chats refused meanwhile); nats-2 back and caught up",
		served.Seconds(), len(oneDown))

	// Two nodes down: no quorum. One node of three commits nothing, so
	// a chat sent after the second kill may not be acknowledged until the
	// nodes are back.
	killNATS(ctx, t, s, 2)
	killNATS(ctx, t, s, 3)
	lostAt := time.Now()
	marks := lastAcked(all, lostAt)
	waitFor(ctx, t, w, all, 4*natsPublishTimeout+30*time.Second, "every sender refused as unavailable", func() bool {
		for _, c := range senders {
			if len(refusals([]*client{c}, lostAt, time.Now())) == 0 {
				return false
			}
		}
		return true
	})
	// Quorum is back as soon as the second node runs, before its
	// healthcheck says so: a chat may be acknowledged from then on.
	restartAt := time.Now()
	startNATS(ctx, t, s, 2)
	startNATS(ctx, t, s, 3)
	backAt := time.Now()
	refused := refusals(all, lostAt, backAt)
	for id, code := range refused {
		if code != protocol.CodeUnavailable {
			t.Errorf("%s refused with %s during the quorum loss, want %s", id, code, protocol.CodeUnavailable)
		}
	}
	for _, c := range all {
		c.read(func() {
			for id, a := range c.acks {
				if a.sentAt.After(lostAt) && a.at.Before(restartAt) {
					t.Errorf("%s: %s (sent %s after the quorum loss) acknowledged without a quorum", c.name, id, a.sentAt.Sub(lostAt))
				}
			}
		})
	}
	servedBack := servedThenAcked(ctx, t, w, all, senders, backAt, " with the quorum back")
	waitStreamCurrent(ctx, t, s)
	quiet.Store(true)
	settle(ctx, t, w, all, senders[0])
	t.Logf("quorum lost for %.1f s: %d chats refused (all %s); served again %.1f s after the restart",
		backAt.Sub(lostAt).Seconds(), len(refused), protocol.CodeUnavailable, servedBack.Seconds())

	// Refused chats were not said again (the client drops them): none may
	// have been delivered, then or later.
	refused = refusals(all, time.Time{}, time.Now())
	for _, c := range all {
		c.read(func() {
			for _, room := range rooms {
				for _, g := range c.views[room].got {
					if code, ok := refused[g.msg.ID]; ok {
						t.Errorf("%s got %s (seq %d), which was refused (%s)", c.name, g.msg.ID, g.msg.Seq, code)
					}
				}
			}
		})
	}
	recheck(ctx, t, s, marks)
	judge(t, "NATS: one node SIGKILL, then two", w, all, nil, served, false)
}

// killNATS SIGKILLs node i and waits until it is gone.
func killNATS(ctx context.Context, t *testing.T, s *dockerstack.Stack, i int) {
	t.Helper()
	ctr := s.NATS(i)
	s.Kill(ctx, ctr)
	waitExited(ctx, t, ctr)
}

// startNATS starts node i again on its volume and waits until it is
// healthy (the image's healthcheck).
func startNATS(ctx context.Context, t *testing.T, s *dockerstack.Stack, i int) {
	t.Helper()
	ctr := s.NATS(i)
	if err := ctr.Start(ctx); err != nil {
		t.Fatalf("start nats-%d again: %v", i, err)
	}
	err := poll(ctx, 60*time.Second, fmt.Sprintf("nats-%d healthy", i), func() (bool, error) {
		code, _, err := dockerstack.Exec(ctx, ctr, "wget", "-q", "-O", "/dev/null", dockerstack.NATSHealthURL)
		return err == nil && code == 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// jsz is what the monitoring endpoint /jsz tells of the streams.
type jsz struct {
	AccountDetails []struct {
		StreamDetail []struct {
			Name    string `json:"name"`
			Cluster struct {
				Leader   string `json:"leader"`
				Replicas []struct {
					Name    string        `json:"name"`
					Current bool          `json:"current"`
					Offline bool          `json:"offline"`
					Lag     uint64        `json:"lag"`
					Active  time.Duration `json:"active"`
				} `json:"replicas"`
			} `json:"cluster"`
		} `json:"stream_detail"`
	} `json:"account_details"`
}

// caughtUp is how far behind its leader a replica may be and count as
// caught up: under traffic a follower is always a message or two behind
// (JetStream then says current:false for an instant).
const caughtUp = 50

// waitStreamCurrent waits until the stream has a leader and both other
// replicas online and caught up, as the leader reports them.
func waitStreamCurrent(ctx context.Context, t *testing.T, s *dockerstack.Stack) {
	t.Helper()
	var last []string
	err := poll(ctx, 90*time.Second, "the stream's three replicas caught up", func() (bool, error) {
		last = last[:0]
		for i := 1; i <= dockerstack.NATSNodes; i++ {
			ok, state := streamState(ctx, s.NATS(i), fmt.Sprintf("nats-%d", i))
			if ok {
				return true, nil
			}
			last = append(last, state)
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%v: %s", err, strings.Join(last, "; "))
	}
}

// streamState reads the stream's cluster state from node name's /jsz:
// true when the node leads it and both other replicas are caught up.
func streamState(ctx context.Context, node *testcontainers.DockerContainer, name string) (bool, string) {
	code, out, err := dockerstack.Exec(ctx, node, "wget", "-q", "-O", "-", "http://127.0.0.1:8222/jsz?accounts=true&streams=true")
	if err != nil || code != 0 {
		return false, fmt.Sprintf("%s: jsz: exit %d %v", name, code, err)
	}
	// The exec output may carry a byte or two before the JSON.
	if i := strings.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	var j jsz
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		return false, fmt.Sprintf("%s: jsz: %v", name, err)
	}
	for _, a := range j.AccountDetails {
		for _, st := range a.StreamDetail {
			if st.Name != natsStream {
				continue
			}
			c := st.Cluster
			ok := c.Leader == name && len(c.Replicas) == dockerstack.NATSNodes-1
			for _, r := range c.Replicas {
				ok = ok && !r.Offline && (r.Current || r.Lag <= caughtUp) && r.Active < 5*time.Second
			}
			return ok, fmt.Sprintf("%s: leader %q, replicas %+v", name, c.Leader, c.Replicas)
		}
	}
	return false, name + ": no stream " + natsStream
}

// closes counts the connections the servers ended, over clients.
func closes(all []*client) int {
	n := 0
	for _, c := range all {
		c.read(func() { n += len(c.closes) })
	}
	return n
}

// refusals are the chats refused between from and to, by id: the error
// frame's code.
func refusals(all []*client, from, to time.Time) map[string]string {
	out := map[string]string{}
	for _, c := range all {
		c.read(func() {
			for id, code := range c.refused {
				if at, ok := c.refusedAt[id]; ok && !at.Before(from) && at.Before(to) {
					out[id] = code
				}
			}
		})
	}
	return out
}

// mark is one acknowledged message of a room before the quorum loss.
type mark struct {
	id  string
	seq uint64
}

// lastAcked are, per room, the last recheckTail messages acknowledged
// before at.
func lastAcked(all []*client, at time.Time) map[string][]mark {
	out := map[string][]mark{}
	for _, c := range all {
		c.read(func() {
			for id, a := range c.acks {
				if a.at.Before(at) {
					out[a.room] = append(out[a.room], mark{id, a.seq})
				}
			}
		})
	}
	for room, ms := range out {
		slices.SortFunc(ms, func(a, b mark) int { return int(a.seq) - int(b.seq) })
		out[room] = ms[max(0, len(ms)-recheckTail):]
	}
	return out
}

// recheck has a newcomer recover, per room, from just before marks: each
// message acknowledged then is there, at its seq, once.
func recheck(ctx context.Context, t *testing.T, s *dockerstack.Stack, marks map[string][]mark) {
	t.Helper()
	for _, room := range rooms {
		ms := marks[room]
		if len(ms) == 0 {
			t.Errorf("%s: nothing acknowledged before the quorum loss", room)
			continue
		}
		since := ms[0].seq - 1
		var j protocol.Joined
		// A join answered unavailable (the recovery's fetch timed out in a
		// cluster still settling after the outage) is made again, as the
		// answer tells a client to.
		err := poll(ctx, 60*time.Second, "a newcomer's recovery join in "+room, func() (bool, error) {
			c, _, err := dockerstack.Hello(ctx, s.WSURL, "newcomer-"+room)
			if err != nil {
				return false, err
			}
			defer c.CloseNow()
			if err := dockerstack.Send(ctx, c, protocol.Inbound{Type: protocol.TypeJoin, Room: room, ID: "j", Since: &since}); err != nil {
				return false, err
			}
			err = dockerstack.ReadType(ctx, c, protocol.TypeJoined, &j)
			if err != nil && strings.Contains(err.Error(), `"code":"unavailable"`) {
				t.Logf("%s: %v; joining again", room, err)
				return false, nil
			}
			return err == nil, err
		})
		if err != nil {
			t.Fatal(err)
		}
		at := map[string][]uint64{}
		for _, m := range j.History {
			at[m.ID] = append(at[m.ID], m.Seq)
		}
		for _, m := range ms {
			if got := at[m.id]; len(got) != 1 || got[0] != m.seq {
				t.Errorf("%s: a newcomer recovering since %d finds %s at seqs %v, want once at %d (recovered %s)", room, since, m.id, got, m.seq, recovered(j))
			}
		}
	}
}
