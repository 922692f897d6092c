package containers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/dockerstack"
	"github.com/wschat/wschat/services/protocol"
)

// authAudience is the AUTH_AUDIENCE of the stack TestAuthenticationEndToEnd
// starts.
const authAudience = "wschat"

// TestAuthenticationEndToEnd runs two ws-user replicas with AUTH_MODE=required
// (an HMAC secret, an audience, a server API key, a 2 s expiry notice) and
// checks through nginx:
//  1. connections without a token, with an expired one (in the URL), a badly
//     signed one or one for another audience are refused with their error
//     and close codes; a room the token does not allow is forbidden while
//     the connection stays;
//  2. the token names the connection, whatever nick hello asks for, and the
//     name and user travel with its messages to the other replica;
//  3. an in-band refresh keeps a connection past its first token's expiry,
//     while one with the same token that does not refresh is closed then;
//  4. the server API, answered for the whole deployment by whichever
//     replica nginx picks: publish (received on both replicas as $system),
//     presence of both replicas, history, 401 without the key, and a
//     disconnect that closes the user's connections on both replicas and
//     revokes its older tokens, other users untouched;
//  5. no container logged the HMAC secret, the API key, the relay secret,
//     nor any token the test made.
//
// On every relay tier: the server API's calls and a disconnect travel
// through it.
func TestAuthenticationEndToEnd(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			dockerstack.Need(t)
			began := time.Now()
			secret := rand.Text() + rand.Text()
			apiKey := rand.Text()
			opts := b.opts
			opts.UserEnv = map[string]string{
				"AUTH_MODE":          "required",
				"AUTH_HMAC_SECRET":   secret,
				"AUTH_AUDIENCE":      authAudience,
				"API_KEY":            apiKey,
				"AUTH_EXPIRY_NOTICE": "2s",
			}
			s := dockerstack.NewWith(t, 2, opts)
			testAuthentication(t, s, secret, apiKey, time.Since(began))
		})
	}
}

func testAuthentication(t *testing.T, s *dockerstack.Stack, secret, apiKey string, started time.Duration) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	nt := dockerstack.NewNotifier()
	k := &minter{secret: []byte(secret)}
	api := &apiClient{base: s.HTTPURL, key: apiKey, hc: &http.Client{Timeout: 20 * time.Second}}
	inAnHour := time.Now().Add(time.Hour)

	// 1. Refusals, each with its error code and close code.
	expired := userClaims("eve", "Eve", time.Now().Add(-time.Hour))
	expired["iat"] = time.Now().Add(-2 * time.Hour).Unix()
	otherAudience := userClaims("eve", "Eve", inAnHour)
	otherAudience["aud"] = "another-app"
	for _, tc := range []struct {
		name      string
		query     string
		hello     *protocol.Inbound
		code      string
		closeCode int
	}{
		{"no token", "", &protocol.Inbound{Type: protocol.TypeHello, Nick: "eve"},
			protocol.CodeAuthRequired, protocol.CloseAuthRequired},
		{"expired token in the URL", "?token=" + url.QueryEscape(k.mint(t, expired)), nil,
			protocol.CodeTokenExpired, protocol.CloseTokenExpired},
		{"token of another secret in hello", "", &protocol.Inbound{Type: protocol.TypeHello, Nick: "eve",
			Token: k.mintWith(t, []byte(rand.Text()+rand.Text()), userClaims("eve", "Eve", inAnHour))},
			protocol.CodeTokenInvalid, protocol.CloseTokenInvalid},
		{"token for another audience in the URL", "?token=" + url.QueryEscape(k.mint(t, otherAudience)), nil,
			protocol.CodeTokenWrong, protocol.CloseTokenWrong},
	} {
		p := dialPeer(ctx, t, nt, s, tc.name, tc.query)
		if tc.hello != nil {
			p.send(ctx, t, *tc.hello)
		}
		refused(ctx, t, p, tc.code, tc.closeCode)
		if p.has(protocol.TypeWelcome) {
			t.Errorf("%s: welcomed before it was refused", tc.name)
		}
	}
	lobbyOnly := userClaims("fay", "Fay", inAnHour)
	lobbyOnly["rooms"] = map[string][]string{"join": {"lobby"}, "publish": {"lobby"}}
	fay := helloPeer(ctx, t, nt, s, "fay", k.mint(t, lobbyOnly), "", nil)
	fay.send(ctx, t, protocol.Inbound{Type: protocol.TypeJoin, Room: "secret", ID: "j-secret"})
	if e := expect(ctx, t, fay, protocol.TypeError, "the answer to join secret",
		func(e protocol.Error) bool { return e.ID == "j-secret" }); e.Code != protocol.CodeForbidden {
		t.Errorf("fay: join secret answered %+v, want %s", e, protocol.CodeForbidden)
	}
	fay.join(ctx, t, "lobby")
	fay.ping(ctx, t, "after-forbidden")

	// 2. The token names the connection: nick "bob" asked, "Ann" given.
	ann := helloPeer(ctx, t, nt, s, "ann", k.mint(t, userClaims("ann", "Ann", inAnHour)), "bob", nil)
	if ann.w.Nick != "Ann" || ann.w.User != "ann" {
		t.Errorf("ann asked for nick bob: welcomed as nick %q user %q, want Ann, ann", ann.w.Nick, ann.w.User)
	}
	bob := helloPeer(ctx, t, nt, s, "bob", k.mint(t, userClaims("bob", "Bob", inAnHour)), "",
		func(instance string) bool { return instance != ann.w.Instance })
	ann.join(ctx, t, "lobby")
	bob.join(ctx, t, "lobby")
	ann.send(ctx, t, protocol.Inbound{Type: protocol.TypeChat, Room: "lobby", Message: "hello from ann", ID: "ann-1"})
	ack := expect(ctx, t, ann, protocol.TypeAck, "ack of ann-1", func(a protocol.Ack) bool { return a.ID == "ann-1" })
	got := expect(ctx, t, bob, protocol.TypeChat, "ann's message", func(m protocol.Message) bool { return m.Text == "hello from ann" })
	if got.From != "Ann" || got.User != "ann" || got.Seq != ack.Seq {
		t.Errorf("bob (%s) got ann's message (from %s) as %+v, want from Ann, user ann, seq %d",
			bob.w.Instance, ann.w.Instance, got, ack.Seq)
	}

	// 3. A refreshed token keeps its connection past the first one's expiry.
	shortExp := time.Now().Add(5 * time.Second).Unix() // whole seconds: 4 to 5 s from now
	short := userClaims("dan", "Dan", time.Unix(shortExp, 0))
	shortTok := k.mint(t, short)
	kept := helloPeer(ctx, t, nt, s, "dan (refreshes)", shortTok, "", nil)
	lapsed := helloPeer(ctx, t, nt, s, "dan (does not refresh)", shortTok, "", nil)
	if kept.w.Expires != shortExp*1000 {
		t.Errorf("dan: welcome says the token expires at %d, want %d", kept.w.Expires, shortExp*1000)
	}
	if n := expect[protocol.Expiring](ctx, t, kept, protocol.TypeExpiring, "expiring", nil); n.Expires != shortExp*1000 {
		t.Errorf("dan: expiring at %d, want %d", n.Expires, shortExp*1000)
	}
	kept.send(ctx, t, protocol.Inbound{Type: protocol.TypeRefresh, ID: "r-1", Token: k.mint(t, userClaims("dan", "Dan", inAnHour))})
	if r := expect(ctx, t, kept, protocol.TypeRefreshed, "refreshed", func(r protocol.Refreshed) bool { return r.ID == "r-1" }); r.Expires != inAnHour.Unix()*1000 {
		t.Errorf("dan: refreshed until %d, want %d", r.Expires, inAnHour.Unix()*1000)
	}
	expect[protocol.Expiring](ctx, t, lapsed, protocol.TypeExpiring, "expiring", nil)
	refused(ctx, t, lapsed, protocol.CodeTokenExpired, protocol.CloseTokenExpired)
	if now := time.Now(); now.Unix() < shortExp {
		t.Errorf("dan: the connection that did not refresh was closed at %s, before its token's expiry %s",
			now.Format(time.RFC3339Nano), time.Unix(shortExp, 0).Format(time.RFC3339))
	}
	kept.ping(ctx, t, "after-expiry") // past the old expiry: still answered

	// 4. The server API, across both replicas.
	carlTok := k.mint(t, userClaims("carl", "Carl", inAnHour))
	var carls []*peer
	carlOn := map[string]int{}
	for i := 1; i <= 20 && len(carlOn) < 2; i++ {
		p := helloPeer(ctx, t, nt, s, fmt.Sprintf("carl-%d", i), carlTok, "", nil)
		p.join(ctx, t, "lobby")
		carls = append(carls, p)
		carlOn[p.w.Instance]++
	}
	if len(carlOn) < 2 {
		t.Fatalf("carl's connections by replica after 20 tries: %v, want both replicas", carlOn)
	}
	lobby := append([]*peer{fay, ann, bob}, carls...)
	lobbyOn := map[string]int{}
	for _, p := range lobby {
		lobbyOn[p.w.Instance]++
	}

	members := waitPresence(ctx, t, api, func(ms []protocol.Member) bool {
		on := map[string]bool{}
		users := map[string]bool{}
		for _, m := range ms {
			users[m.User] = true
			if m.User == "carl" {
				on[m.Instance] = true
			}
		}
		return len(on) == 2 && users["ann"] && users["bob"] && users["fay"]
	})
	for _, m := range members {
		if m.User == "$system" {
			t.Errorf("presence lists the API's own agent: %+v", m)
		}
	}

	// Without the key (or with another): 401, and nothing done.
	for _, c := range []struct{ method, path, key string }{
		{http.MethodPost, "/api/v1/rooms/lobby/messages", ""},
		{http.MethodPost, "/api/v1/rooms/lobby/messages", rand.Text()},
		{http.MethodGet, "/api/v1/rooms/lobby/presence", ""},
		{http.MethodGet, "/api/v1/rooms/lobby/messages", ""},
		{http.MethodPost, "/api/v1/users/carl/disconnect", ""},
	} {
		status, body := api.call(ctx, t, c.method, c.path, c.key, map[string]string{"message": "not authorised", "from": "ops"})
		var e struct{ Code string }
		_ = json.Unmarshal(body, &e)
		if status != http.StatusUnauthorized || e.Code != "unauthorized" {
			t.Errorf("%s %s with key %q: %d %s, want 401 unauthorized", c.method, c.path, redact(c.key), status, body)
		}
	}

	status, body := api.call(ctx, t, http.MethodPost, "/api/v1/rooms/lobby/messages", apiKey, map[string]string{"message": "from the API", "from": "ops"})
	var published struct {
		Room string
		Seq  uint64
	}
	if err := json.Unmarshal(body, &published); status != http.StatusOK || err != nil || published.Seq == 0 {
		t.Fatalf("publish: %d %s, want 200 with a seq", status, body)
	}
	for _, p := range lobby {
		m := expect(ctx, t, p, protocol.TypeChat, "the API's message", func(m protocol.Message) bool { return m.Text == "from the API" })
		if m.From != "ops" || m.User != "$system" || m.Seq != published.Seq || m.Room != "lobby" {
			t.Errorf("%s (%s): the API's message arrived as %+v, want from ops, user $system, seq %d", p.name, p.w.Instance, m, published.Seq)
		}
	}

	status, body = api.call(ctx, t, http.MethodGet, "/api/v1/rooms/lobby/messages?limit=10", apiKey, nil)
	var hist struct {
		Messages []protocol.Message
	}
	if err := json.Unmarshal(body, &hist); status != http.StatusOK || err != nil {
		t.Fatalf("history: %d %s, want 200", status, body)
	}
	if !slices.ContainsFunc(hist.Messages, func(m protocol.Message) bool {
		return m.Seq == published.Seq && m.Text == "from the API" && m.From == "ops" && m.User == "$system"
	}) {
		t.Errorf("history holds no seq %d from ops ($system): %s", published.Seq, body)
	}
	if !slices.ContainsFunc(hist.Messages, func(m protocol.Message) bool { return m.Seq == ack.Seq && m.User == "ann" }) {
		t.Errorf("history holds no seq %d of ann's: %s", ack.Seq, body)
	}
	if slices.ContainsFunc(hist.Messages, func(m protocol.Message) bool { return m.Text == "not authorised" }) {
		t.Errorf("a message posted without the key is in the history: %s", body)
	}

	status, body = api.call(ctx, t, http.MethodPost, "/api/v1/users/carl/disconnect", apiKey, nil)
	if status != http.StatusAccepted {
		t.Fatalf("disconnect carl: %d %s, want 202", status, body)
	}
	for _, p := range carls {
		refused(ctx, t, p, protocol.CodeDisconnected, protocol.CloseDisconnected)
	}
	for _, p := range []*peer{fay, ann, bob, kept} {
		p.ping(ctx, t, "after-disconnect")
	}
	// carl's token, issued before the disconnect, is refused from now on
	// (nginx picks the replica: a few tries, each must be refused).
	for i := 1; i <= 4; i++ {
		p := dialPeer(ctx, t, nt, s, fmt.Sprintf("carl again %d", i), "")
		p.send(ctx, t, protocol.Inbound{Type: protocol.TypeHello, Token: carlTok})
		refused(ctx, t, p, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid)
	}
	// A token issued after it is accepted: carl signed in again.
	again := userClaims("carl", "Carl", inAnHour)
	again["iat"] = time.Now().Unix() + 1 // whole seconds: after the disconnect's millisecond (AUTH_LEEWAY allows 5 s ahead)
	if p := helloPeer(ctx, t, nt, s, "carl (new token)", k.mint(t, again), "", nil); p.w.User != "carl" {
		t.Errorf("carl with a new token: welcomed as user %q", p.w.User)
	}

	// 5. No secret in any container's log.
	secrets := map[string]string{
		"AUTH_HMAC_SECRET": secret,
		"API_KEY":          apiKey,
		"RELAY_SECRET":     dockerstack.RelaySecret,
	}
	for i, tok := range k.minted() {
		secrets[fmt.Sprintf("token %d", i+1)] = tok
		secrets[fmt.Sprintf("signature of token %d", i+1)] = tok[strings.LastIndexByte(tok, '.')+1:]
	}
	var userLogs, nginxLogs []byte
	ctrs := s.Containers()
	for _, ctr := range ctrs {
		b := containerLog(ctx, t, ctr)
		name := fmt.Sprintf("%s (%s)", ctr.Image, ctr.GetContainerID()[:12])
		for what, v := range secrets {
			if bytes.Contains(b, []byte(v)) {
				t.Errorf("the log of %s holds the %s", name, what)
			}
		}
		switch {
		case strings.Contains(ctr.Image, "ws-user"):
			userLogs = append(userLogs, b...)
		case strings.Contains(ctr.Image, "nginx"):
			nginxLogs = append(nginxLogs, b...)
		}
	}
	// The logs searched are the right ones: they tell of this test.
	if !bytes.Contains(userLogs, []byte("connection refused")) || !bytes.Contains(nginxLogs, []byte("/api/v1/")) {
		t.Errorf("the logs read do not tell of the refusals and API calls (%d bytes of ws-user, %d of nginx)", len(userLogs), len(nginxLogs))
	}

	t.Logf("stack up in %s; checked 4 refusals (4001-4004) and a forbidden room; ann (%s) named by her token, seen by bob on %s; "+
		"refresh kept dan's connection past its expiry, the other closed 4003; API: presence of %d members, publish seq %d to %d clients on %v, "+
		"history, 401s, disconnect closed %d carl connections (4005) on %v and revoked the old token; %d secrets searched in %d containers' logs; checks took %s",
		started.Round(time.Second), ann.w.Instance, bob.w.Instance, len(members), published.Seq, len(lobby), lobbyOn,
		len(carls), carlOn, len(secrets), len(ctrs), time.Since(began).Round(time.Second))
}

// minter makes the test's connection tokens: HS256 JWTs, made here by hand
// (ws-user's own minter is internal to its module), every one remembered
// for the search of the logs.
type minter struct {
	secret []byte
	mu     sync.Mutex
	all    []string
}

func (k *minter) mint(t *testing.T, claims map[string]any) string {
	t.Helper()
	return k.mintWith(t, k.secret, claims)
}

func (k *minter) mintWith(t *testing.T, secret []byte, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatalf("claims: %v", err)
	}
	signed := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signed))
	tok := signed + "." + enc.EncodeToString(mac.Sum(nil))
	k.mu.Lock()
	k.all = append(k.all, tok)
	k.mu.Unlock()
	return tok
}

func (k *minter) minted() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.all)
}

// userClaims are a token's claims for user, issued now, for the stack's
// audience.
func userClaims(user, name string, exp time.Time) map[string]any {
	return map[string]any{"sub": user, "name": name, "aud": authAudience, "iat": time.Now().Unix(), "exp": exp.Unix()}
}

// redact shows that a key was given without showing it.
func redact(key string) string {
	if key == "" {
		return ""
	}
	return "<" + fmt.Sprint(len(key)) + " bytes>"
}

// refused waits for p's error frame with code, then for the close with
// closeCode.
func refused(ctx context.Context, t *testing.T, p *peer, code string, closeCode int) {
	t.Helper()
	expect(ctx, t, p, protocol.TypeError, "error "+code, func(e protocol.Error) bool { return e.Code == code })
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var end error
	err := p.nt.WaitFor(ctx, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		end = p.end
		return end != nil
	})
	if err != nil {
		t.Fatalf("%s: got error %s, but the connection was not closed within 15s", p.name, code)
	}
	if got := websocket.CloseStatus(end); got != websocket.StatusCode(closeCode) {
		t.Errorf("%s: refused with %s, then ended with %s, want close %d", p.name, code, closeReason(end), closeCode)
	}
}

// apiClient calls ws-user's server API through nginx.
type apiClient struct {
	base, key string
	hc        *http.Client
}

// call sends body (when not nil) as JSON with key as the Bearer token
// (none when empty) and returns the status and the body of the answer.
func (a *apiClient) call(ctx context.Context, t *testing.T, method, path, key string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// waitPresence asks for the lobby's presence until ok accepts its members
// (at most 15 s: members joined on the other replica reach the answering
// one through the relay tier).
func waitPresence(ctx context.Context, t *testing.T, api *apiClient, ok func([]protocol.Member) bool) []protocol.Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		status, body := api.call(ctx, t, http.MethodGet, "/api/v1/rooms/lobby/presence", api.key, nil)
		var p struct{ Members []protocol.Member }
		if err := json.Unmarshal(body, &p); status != http.StatusOK || err != nil {
			t.Fatalf("presence: %d %s, want 200", status, body)
		}
		if ok(p.Members) {
			return p.Members
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("presence: members of both replicas not listed within 15s: %s", body)
		}
	}
}

// containerLog is a container's whole log, stdout and stderr.
func containerLog(ctx context.Context, t *testing.T, ctr interface {
	Logs(context.Context) (io.ReadCloser, error)
}) []byte {
	t.Helper()
	rc, err := ctr.Logs(ctx)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	return b
}
