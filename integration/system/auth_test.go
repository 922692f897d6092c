package system

import (
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/integration/svctest"
	"github.com/wschat/wschat/services/protocol"
)

// api calls a ws-user's server API and decodes its JSON answer.
func api(t *testing.T, addr, method, path, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// Tokens required on two instances of one relayer, tokens from the
// development endpoint: identities, the server API and a disconnect cross
// instances; no secret or token reaches any service's log, at debug level.
func TestAuthAcrossInstances(t *testing.T) {
	secret, apiKey := rand.Text()+rand.Text(), rand.Text()
	env := map[string]string{"AUTH_MODE": "required", "AUTH_HMAC_SECRET": secret, "AUTH_AUDIENCE": "wschat",
		"API_KEY": apiKey, "DEV_MODE": "true", "AUTH_DEV_TOKENS": "true"}
	r := startRelayer(t, nil)
	a := startUser(t, "a", r, env)
	b := startUser(t, "b", r, env)
	token := func(user string) string {
		t.Helper()
		code, body := api(t, a.Addr, "GET", "/auth/token?user="+url.QueryEscape(user), "", "")
		tok, _ := body["token"].(string)
		if code != http.StatusOK || tok == "" {
			t.Fatalf("/auth/token: %d %v", code, body)
		}
		return tok
	}
	annTok, bobTok := token("ann"), token("bob")
	var tokens []string
	tokens = append(tokens, annTok, bobTok)

	// ann on b with her token in hello; bob on a with his in the URL.
	ann := dial(t, b.Addr, "/ws")
	ann.name = "ann"
	ann.send(map[string]any{"type": "hello", "nick": "bob", "token": annTok})
	if w := ann.expect("welcome"); w.Nick != "ann" || !strings.Contains(w.Raw, `"user":"ann"`) {
		t.Fatalf("welcome %s: want the token's name and user, not the nick given", w.Raw)
	}
	bob := dial(t, a.Addr, "/ws?token="+url.QueryEscape(bobTok))
	bob.name = "bob"
	bob.send(map[string]any{"type": "hello"})
	bob.expect("welcome")
	ann.join("lobby", nil)
	if j := bob.join("lobby", nil); !strings.Contains(j.Raw, `"instance":"b","user":"ann"`) {
		t.Fatalf("bob's joined %s: want ann of instance b with her user", j.Raw)
	}
	bob.send(map[string]any{"type": "chat", "room": "lobby", "message": "hi ann", "id": "c1"})
	if m := ann.chats("lobby", 1)[0]; m.From != "bob" || !strings.Contains(m.Raw, `"user":"bob"`) {
		t.Fatalf("ann got %s: want bob's message with his user", m.Raw)
	}

	// The server API of instance a reaches ann on b.
	if code, _ := api(t, a.Addr, "POST", "/api/v1/rooms/lobby/messages", "wrong-"+apiKey, `{"message":"x"}`); code != http.StatusUnauthorized {
		t.Fatalf("a wrong API key: %d, want 401", code)
	}
	code, body := api(t, a.Addr, "POST", "/api/v1/rooms/lobby/messages", apiKey, `{"message":"from the API","from":"ops"}`)
	if code != http.StatusOK {
		t.Fatalf("publish: %d %v", code, body)
	}
	if m := ann.chats("lobby", 1)[0]; m.Message != "from the API" || m.From != "ops" || !strings.Contains(m.Raw, `"user":"$system"`) {
		t.Fatalf("ann got %s: want the API's message from ops, user $system", m.Raw)
	}
	code, body = api(t, a.Addr, "GET", "/api/v1/rooms/lobby/presence", apiKey, "")
	if raw, _ := json.Marshal(body["members"]); code != http.StatusOK || !strings.Contains(string(raw), `"user":"ann"`) || !strings.Contains(string(raw), `"user":"bob"`) {
		t.Fatalf("presence: %d %v, want ann (instance b) and bob (instance a)", code, body)
	}

	// Disconnecting ann through a closes her connection on b, and her
	// token is refused from then on; bob stays.
	if code, body = api(t, a.Addr, "POST", "/api/v1/users/ann/disconnect", apiKey, ""); code != http.StatusAccepted {
		t.Fatalf("disconnect: %d %v", code, body)
	}
	if f := ann.expectNot("presence"); f.Type != "error" || f.Code != protocol.CodeDisconnected {
		t.Fatalf("ann got %s, want the disconnected error", f.Raw)
	}
	if _, err := ann.read(10 * time.Second); websocket.CloseStatus(err) != protocol.CloseDisconnected {
		t.Fatalf("ann's connection ended with %v, want close %d", err, protocol.CloseDisconnected)
	}
	again := dial(t, a.Addr, "/ws?token="+url.QueryEscape(annTok))
	if f := again.next(); f.Code != protocol.CodeTokenInvalid {
		t.Fatalf("ann's old token after the disconnect: %s, want token_invalid", f.Raw)
	}
	// An instance started after the disconnect refuses it too, from the
	// control room's kept messages, read before it is ready.
	c := startUser(t, "c", r, env)
	late := dial(t, c.Addr, "/ws?token="+url.QueryEscape(annTok))
	// Refused on its own, like again: a hello sent now could find the
	// connection already closed.
	if f := late.next(); f.Code != protocol.CodeTokenInvalid {
		t.Fatalf("ann's old token on an instance started after the disconnect: %s, want token_invalid", f.Raw)
	}
	bob.send(map[string]any{"type": "ping", "id": "p"})
	for f := bob.next(); f.Type != "pong"; f = bob.next() {
		if f.Type == "error" {
			t.Fatalf("bob got %s after ann's disconnect", f.Raw)
		}
	}

	// No secret and no token in any log, at debug level.
	for name, s := range map[string]*proc{"relayer": r, "a": a, "b": b, "c": c} {
		log := s.Log()
		for what, v := range map[string]string{"AUTH_HMAC_SECRET": secret, "API_KEY": apiKey, "RELAY_SECRET": svctest.Secret,
			"a token": tokens[0], "another token": tokens[1]} {
			if strings.Contains(log, v) {
				t.Errorf("%s's log holds %s", name, what)
			}
		}
	}
}

// Without AUTH_DEV_TOKENS there is no token endpoint: the page connects
// anonymously, as in the quick start.
func TestNoDevTokensByDefault(t *testing.T) {
	u := startUser(t, "u", nil, nil)
	if code := httpStatus(u.Addr, "/auth/token?user=ann"); code != http.StatusNotFound {
		t.Fatalf("/auth/token answered %d without AUTH_DEV_TOKENS, want 404", code)
	}
	if code := httpStatus(u.Addr, "/api/v1/rooms/lobby/presence"); code != http.StatusNotFound {
		t.Fatalf("the server API answered %d without API_KEY, want 404", code)
	}
}
