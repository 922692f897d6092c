package system

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wschat/wschat/integration/browser"
	"github.com/wschat/wschat/services/protocol"
)

// balancer is a round-robin reverse proxy that skips backends that refuse
// connections: in-process, it plays nginx's part.
type balancer struct {
	mu       sync.Mutex
	backends []string
	refuse   bool
	next     atomic.Uint64
}

func (b *balancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	backends := append([]string(nil), b.backends...)
	refuse := b.refuse
	b.mu.Unlock()
	if refuse {
		http.Error(w, "refusing connections", http.StatusServiceUnavailable)
		return
	}
	start := b.next.Add(1)
	for i := range backends {
		target := backends[(int(start)+i)%len(backends)]
		failed := false
		p := &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(&url.URL{Scheme: "http", Host: target})
				pr.Out.Host = pr.In.Host
			},
			ErrorHandler: func(http.ResponseWriter, *http.Request, error) { failed = true },
		}
		p.ServeHTTP(w, r)
		if !failed {
			return
		}
	}
	http.Error(w, "no backend", http.StatusBadGateway)
}

func (b *balancer) remove(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, a := range b.backends {
		if a == addr {
			b.backends = append(b.backends[:i], b.backends[i+1:]...)
			return
		}
	}
}

// The chat page in a real browser, two people on two instances behind a
// load balancer, one instance stopped under one of them.
func TestBrowserChatAcrossInstances(t *testing.T) {
	if browser.Chromium() == "" {
		t.Skip("no chromium installed (apt-get install chromium); .ci/run installs it")
	}
	r := startRelayer(t, nil)
	users := map[string]*proc{}
	lb := &balancer{}
	for _, id := range []string{"alpha", "beta", "gamma"} {
		users[id] = startUser(t, id, r, nil)
		lb.backends = append(lb.backends, users[id].Addr)
	}
	front := httptest.NewServer(lb)
	defer front.Close()
	browser.Scenario(t, browser.Target{
		BaseURL: front.URL,
		Kill: func(instance string) error {
			u := users[instance]
			if u == nil {
				return errors.New("unknown instance " + instance)
			}
			lb.remove(u.Addr)
			go u.Stop()
			return nil
		},
		Artifacts: artifactsDir(t),
		Refuse: func(on bool) {
			lb.mu.Lock()
			lb.refuse = on
			lb.mu.Unlock()
		},
	})
}

// The chat page re-sends unacknowledged chats after a reconnect, and they
// are sequenced once: its instance, cut off from the relayer, held them,
// and sends them too once its link heals.
func TestBrowserResendAfterReconnect(t *testing.T) {
	if browser.Chromium() == "" {
		t.Skip("no chromium installed (apt-get install chromium); .ci/run installs it")
	}
	r := startRelayer(t, map[string]string{"LINK_PING_INTERVAL": "200ms"})
	fast := map[string]string{"RELAY_PING_INTERVAL": "200ms", "RELAY_RECONNECT_MIN": "50ms", "RELAY_RECONNECT_MAX": "300ms"}
	link := startProxy(t, r.Addr)
	a := startUserVia(t, "user-a", link.Addr(), fast)
	b := startUser(t, "user-b", r, fast)
	front := startProxy(t, a.Addr) // the page's connection to user-a, to drop
	lb := &balancer{backends: []string{front.Addr()}}
	srv := httptest.NewServer(lb)
	defer srv.Close()
	browser.ResendScenario(t, browser.ResendTarget{
		BaseURL: srv.URL,
		Cut: func() {
			link.freeze()
			waitFor(t, 10*time.Second, "user-a to see its relay link down", func() bool { return httpStatus(a.Addr, "/readyz") == 503 })
		},
		Drop: func() {
			lb.mu.Lock()
			lb.backends = []string{b.Addr}
			lb.mu.Unlock()
			front.close()
		},
		Heal: func(room, marker string) {
			link.thaw()
			waitFor(t, 15*time.Second, "user-a's relay link back", func() bool { return httpStatus(a.Addr, "/readyz") == 200 })
			w, _ := hello(t, a.Addr, "witness")
			w.join(room, nil)
			w.send(map[string]any{"type": "chat", "room": room, "message": marker, "id": "w1"})
		},
	})
}

func artifactsDir(t *testing.T) string {
	return fmt.Sprintf("%s/%s", t.TempDir(), t.Name())
}

// The page on a deployment that requires tokens: it signs in through its
// token hook (here the development endpoint), its messages carry the
// token's user, and it refreshes its token in-band when told it expires.
func TestBrowserSignsInWithAToken(t *testing.T) {
	if browser.Chromium() == "" {
		t.Skip("no chromium installed (apt-get install chromium); .ci/run installs it")
	}
	r := startRelayer(t, nil)
	// Tokens of 10 s, noticed at half their life: the page refreshes
	// within seconds.
	key := rand.Text()
	u := startUser(t, "solo", r, map[string]string{"AUTH_MODE": "required", "AUTH_HMAC_SECRET": rand.Text() + rand.Text(),
		"DEV_MODE": "true", "AUTH_DEV_TOKENS": "true", "AUTH_DEV_TOKEN_TTL": "10s", "API_KEY": key})
	front := httptest.NewServer(&balancer{backends: []string{u.Addr}})
	defer front.Close()
	browser.TokenScenario(t, front.URL, "alice", "lobby", func() bool {
		return strings.Contains(u.Log(), `"msg":"token refreshed","service":"ws-user","instance":"solo"`)
	})
	// What the room holds: both messages as alice's, the token's user.
	code, body := api(t, u.Addr, "GET", "/api/v1/rooms/lobby/messages", key, "")
	raw, _ := json.Marshal(body["messages"])
	var msgs []protocol.Message
	if err := json.Unmarshal(raw, &msgs); code != http.StatusOK || err != nil || len(msgs) != 2 {
		t.Fatalf("the room's history: %d %s, want the page's two messages", code, raw)
	}
	for _, m := range msgs {
		if m.From != "alice" || m.User != "alice" {
			t.Fatalf("the page's message %+v: want from alice, user alice", m)
		}
	}
}
