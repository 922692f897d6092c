package hub

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wschat/wschat/services/user/internal/wstest"
)

// churnClients is how many connections one round of the churn holds;
// churnWarmup rounds come before the baseline.
const (
	churnClients = 40
	churnWarmup  = 5
)

// churnRounds is the number of rounds: WSCHAT_CHURN_ROUNDS, 10 by default
// (400 connections, a second or two); set it to thousands for a soak.
func churnRounds(t *testing.T) int {
	s := os.Getenv("WSCHAT_CHURN_ROUNDS")
	if s == "" {
		return 10
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 100000 {
		t.Fatalf("WSCHAT_CHURN_ROUNDS=%q: want a number of rounds from 1 to 100000", s)
	}
	return n
}

// The heap may end above its baseline by HeapObjects 10 % + 2000 objects
// and HeapInuse 25 % + 2 MiB: pools, timers and the runtime's own records
// (it keeps one per goroutine ever alive at once, so a round with more
// than before adds some) move a little between two measurements, and
// level off (about 1,500 objects over thousands of rounds). A leak of what
// one connection holds — its client, queue, maps, socket — exceeds it
// within the short run's 400 connections.
const (
	heapObjectsSlack = 2000
	heapInuseSlack   = 2 << 20
)

// Connections come and go, join and leave rooms and chat, round after
// round: afterwards the hub is back where it started — no goroutine more
// (goleak), the heap within the slack above of its baseline — and once it is
// shut down, no goroutine of it is left at all.
func TestChurnReturnsToBaseline(t *testing.T) {
	before := goleak.IgnoreCurrent()
	rounds := churnRounds(t)
	t.Run("churn", func(t *testing.T) {
		h, srv := startHub(t, 20*time.Millisecond)
		addr := srv.Listener.Addr().String()
		settled := func() {
			t.Helper()
			wstest.WaitUntil(t, "every connection and room gone", func() bool {
				conns := connsOf(srv)
				h.mu.Lock()
				defer h.mu.Unlock()
				return conns.Len() == 0 && len(h.rooms) == 0 && conns.Writers() == 0
			})
		}
		// Warm-up rounds first: pools, maps and the runtime's caches
		// grow to the churn's size, and that is the baseline.
		for k := range churnWarmup {
			churnRound(t, addr, -1-k)
		}
		settled()
		baseline := goleak.IgnoreCurrent()
		base := heapNow()
		start := time.Now()
		for k := 1; k <= rounds; k++ {
			churnRound(t, addr, k)
		}
		settled()
		deadline := time.Now().Add(20 * time.Second)
		for err := goleak.Find(baseline); err != nil; err = goleak.Find(baseline) {
			if time.Now().After(deadline) {
				t.Fatalf("goroutines left after %d rounds of churn: %v", rounds, err)
			}
		}
		end := heapNow()
		t.Logf("%d rounds of %d connections in %v; heap objects %d → %d, in use %d → %d KiB",
			rounds, churnClients, time.Since(start).Round(time.Millisecond),
			base.HeapObjects, end.HeapObjects, base.HeapInuse>>10, end.HeapInuse>>10)
		if end.HeapObjects > base.HeapObjects+base.HeapObjects/10+heapObjectsSlack {
			t.Errorf("heap objects %d after the churn, baseline %d", end.HeapObjects, base.HeapObjects)
		}
		if end.HeapInuse > base.HeapInuse+base.HeapInuse/4+heapInuseSlack {
			t.Errorf("heap in use %d bytes after the churn, baseline %d", end.HeapInuse, base.HeapInuse)
		}
	})
	// The subtest's cleanup shut the hub down: nothing of it runs on.
	goleak.VerifyNone(t, before)
}

// heapNow measures the heap after collecting twice (the second frees
// what sync.Pools let go of in the first).
func heapNow() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// churnRound connects churnClients clients (every fourth a seed client),
// has each join two of five rooms, chat, leave one, and disconnect, half
// with a close frame and half by dropping the socket.
func churnRound(t *testing.T, addr string, k int) {
	t.Helper()
	cs := make([]*wstest.RawClient, churnClients)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Conn.Close()
			}
		}
	}()
	seed := func(i int) bool { return i%4 == 0 }
	for i := range cs {
		room := fmt.Sprint("room-", i%5)
		var early []string
		if seed(i) {
			early = []string{fmt.Sprintf(`{"type":"join-room","room":%q}`, room)}
		} else {
			early = []string{fmt.Sprintf(`{"type":"hello","nick":"n%d"}`, i),
				fmt.Sprintf(`{"type":"join","room":%q,"id":"j1"}`, room),
				`{"type":"join","room":"extra","id":"j2"}`}
		}
		c, err := wstest.DialConn(addr, early...)
		if err != nil {
			t.Fatalf("round %d, client %d: %v", k, i, err)
		}
		cs[i] = c
	}
	for i, c := range cs {
		if !seed(i) {
			// Joins are answered on goroutines of their own: either first.
			want := map[string]bool{`"id":"j1"`: true, `"id":"j2"`: true}
			for len(want) > 0 {
				f := c.Next(t)
				for w := range want {
					if strings.Contains(f, w) {
						delete(want, w)
					}
				}
			}
		}
	}
	for i, c := range cs {
		// A seed client's join gets no answer: its chat may come before
		// the join took effect, so it is not read back.
		c.Send(t, fmt.Sprintf(`{"type":"chat","room":"room-%d","message":"r%d c%d","id":"c"}`, i%5, k, i))
	}
	for i, c := range cs {
		if !seed(i) {
			c.Expect(t, fmt.Sprintf(`"r%d c%d"`, k, i))
			c.Send(t, `{"type":"leave","room":"extra","id":"l"}`)
			c.Expect(t, `"left"`)
		}
	}
	for i, c := range cs {
		if i%2 == 0 {
			// A close frame, masked with a zero key: code 1000.
			_, _ = c.Conn.Write([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8})
		}
		c.Conn.Close()
		cs[i] = nil
	}
}
