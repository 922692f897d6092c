package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// copyFiles makes the named files of directory to what they are in from
// (removed where from has none).
func copyFiles(t *testing.T, from, to string, names ...string) {
	t.Helper()
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(from, name))
		if errors.Is(err, os.ErrNotExist) {
			os.Remove(filepath.Join(to, name))
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// aliceAndSeedInHall has alice (extended) and a seed client join hall on
// instance a.
func aliceAndSeedInHall(t *testing.T, a *proc) (alice, seed *client) {
	t.Helper()
	alice, _ = hello(t, a.Addr, "alice")
	alice.join("hall", nil)
	seed = dial(t, a.Addr, "")
	seed.send(map[string]any{"type": "join-room", "room": "hall"})
	waitFor(t, 10*time.Second, "both members", func() bool { return metric(a.Addr, "wschat_user_memberships") == 2 })
	return alice, seed
}

// joinCaughtUp has c join room with since, again while the instance
// answers unavailable (it has not caught up with the relay: it cannot
// tell yet), as a client does, and returns the answer.
func joinCaughtUp(t *testing.T, c *client, room string, since uint64) frame {
	t.Helper()
	var answer frame
	tries := 0
	waitFor(t, 15*time.Second, c.name+"'s join to be answered", func() bool {
		tries++
		c.send(map[string]any{"type": "join", "room": room, "id": fmt.Sprint("j", tries), "since": since})
		answer = c.expectNot("presence")
		return answer.Type != "error" || answer.Code != "unavailable"
	})
	return answer
}

// A client keys the messages of a room by seq, as the page does and
// docs/protocol.md tells clients to. When the relayer comes back with
// fewer messages than it acknowledged, under whatever epoch, the numbers
// past what it kept are handed out again: the client must learn of it
// (its connection closed with 1012, its join answered with a lower seq)
// before a message reaches it under a number it holds for another one —
// which it would silently drop as one it already has.
func TestClientHoldingSeqsMissesNothingAfterTheRelayerLostMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		// lose takes messages the relayer acknowledged from its stopped
		// data directory dir; backup holds the directory as it was after
		// the first three messages. It returns the seq the room is left at.
		lose func(t *testing.T, dir, backup string) uint64
	}{
		{"log cut inside its last record", func(t *testing.T, dir, backup string) uint64 {
			path := filepath.Join(dir, "wschat.log")
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, st.Size()-3); err != nil {
				t.Fatal(err)
			}
			return 4
		}},
		// Nothing the relayer can see is wrong: it keeps its epoch, and
		// only the instance can tell the room went back.
		{"data directory restored from an older copy", func(t *testing.T, dir, backup string) uint64 {
			copyFiles(t, backup, dir, "wschat.log", "EPOCH", "ACKED")
			return 3
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, backup := t.TempDir(), t.TempDir()
			r := startRelayer(t, map[string]string{"DATA_DIR": dir})
			a := startUser(t, "user-a", r, nil)
			alice, seed := aliceAndSeedInHall(t, a)
			held := map[uint64]string{} // alice's messages, by seq
			for k := 1; k <= 5; k++ {
				alice.send(map[string]any{"type": "chat", "room": "hall", "message": fmt.Sprint("old ", k), "id": fmt.Sprint(k)})
				f := alice.chats("hall", 1)[0]
				held[f.Seq] = f.Message
				if k == 3 { // acknowledged and synced: the directory is consistent
					copyFiles(t, dir, backup, "wschat.log", "EPOCH", "ACKED")
				}
			}
			for k := 1; k <= 5; k++ {
				seed.next()
			}

			r.Stop()
			waitFor(t, 10*time.Second, "the instance to see the link down", func() bool {
				return metric(a.Addr, "wschat_user_relay_link_up") == 0
			})
			kept := tc.lose(t, dir, backup)
			startRelayer(t, map[string]string{"DATA_DIR": dir, "PORT": portOf(r.Addr)})
			// Once the instance has the room's resync answer, a join with
			// a since past what it has is answered (before, it is
			// unavailable).
			bob, _ := hello(t, a.Addr, "bob")
			if f := joinCaughtUp(t, bob, "hall", 6); f.Type != "joined" || f.Seq != kept {
				t.Fatalf("bob's join after the relayer lost messages: %s, want joined at seq %d", f.Raw, kept)
			}

			// Alice was told: her connection is closed (a ping gets no
			// pong), she joins again with since, sees a lower seq than
			// she holds and starts the room over, as a client must.
			wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = alice.conn.Write(wctx, websocket.MessageText, []byte(`{"type":"ping","id":"p1"}`)) // fails once closed
			cancel()
			f, err := alice.read(10 * time.Second)
			for err == nil && (f.Type == "presence" || f.Type == "ack") {
				f, err = alice.read(10 * time.Second)
			}
			if err == nil {
				t.Logf("alice still connected, holding seqs 1-5: %s", f.Raw)
			} else {
				var ce websocket.CloseError
				if !errors.As(err, &ce) || ce.Code != websocket.StatusServiceRestart {
					t.Fatalf("alice: %v, want a 1012 close", err)
				}
				alice, _ = hello(t, a.Addr, "alice")
				j := alice.join("hall", map[string]any{"since": 5})
				if j.Seq >= 5 {
					t.Fatalf("alice's join with since 5: %s, want a seq below 5", j.Raw)
				}
				clear(held)
				for _, m := range j.History {
					held[m.Seq] = m.Text
				}
			}

			seed.send(map[string]any{"type": "chat", "room": "hall", "message": "new 1"})
			for {
				f := alice.next()
				if f.Type != "chat" {
					continue // acks, presence, pong, a history_gap
				}
				if had, ok := held[f.Seq]; ok && had != f.Message {
					t.Fatalf("alice holds seq %d as %q; %q came under the same number and a client drops it as seen", f.Seq, had, f.Message)
				}
				held[f.Seq] = f.Message
				if f.Message == "new 1" {
					break
				}
			}
			// The seed client goes on. (After a new epoch the instance's
			// resync brings the room's retained messages again, and it
			// gets them again first.)
			f = seed.next()
			for f.Message != "new 1" {
				f = seed.next()
			}
			if f.Seq != kept+1 {
				t.Fatalf("seed client after the relayer lost messages: %s, want new 1 at seq %d", f.Raw, kept+1)
			}
		})
	}
}
