package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/wstest"
)

var testSecret = []byte("hub-test-secret-0123456789abcdef0123456789")

// startAuthHub serves a hub that verifies tokens of testSecret for the
// audience "wschat"; require refuses connections without one.
func startAuthHub(t *testing.T, require bool, set func(*stackConfig)) (*Hub, string) {
	t.Helper()
	v, err := auth.New(t.Context(), auth.Config{HMACSecret: testSecret, Audience: "wschat"})
	if err != nil {
		t.Fatal(err)
	}
	h, srv := startHubWith(t, func(c *stackConfig) {
		c.Auth, c.RequireAuth = v, require
		c.ExpiryNotice = time.Minute
		if set != nil {
			set(c)
		}
	})
	return h, srv.Listener.Addr().String()
}

// mint signs a token of user for the audience "wschat", valid for an hour
// unless edit changes the claims.
func mint(t *testing.T, user string, edit func(*auth.Claims)) string {
	t.Helper()
	c := auth.Claims{User: user, Name: strings.ToUpper(user[:1]) + user[1:], Audience: "wschat",
		IssuedAt: time.Now().Add(-time.Second), Expires: time.Now().Add(time.Hour)}
	secret := testSecret
	if edit != nil {
		edit(&c)
	}
	if c.Issuer == "other-secret" {
		c.Issuer, secret = "", []byte("another-secret-0123456789abcdef0123456789")
	}
	tok, err := auth.Mint(secret, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func withToken(tok string) string { return "/?token=" + url.QueryEscape(tok) }

// waitControl waits until h's own member of the control room receives its
// messages (RunControl runs aside: a command sent before would miss it).
func waitControl(t *testing.T, h *Hub) {
	t.Helper()
	wstest.WaitUntil(t, "the control room read", h.controlReady.Load) // also where Config.Control is off
}

// expectRefused reads the error frame with code, then the close with
// closeCode.
func expectRefused(t *testing.T, c *wstest.RawClient, code string, closeCode uint16) {
	t.Helper()
	f := c.Expect(t, `"type":"error"`)
	var e protocol.Error
	if err := json.Unmarshal([]byte(f), &e); err != nil || e.Code != code {
		t.Fatalf("got %s, want an error %s", f, code)
	}
	c.ExpectClose(t, closeCode)
}

func TestTokensRefusedWithTheirCodes(t *testing.T) {
	_, addr := startAuthHub(t, true, nil)
	expired := mint(t, "ann", func(c *auth.Claims) {
		c.IssuedAt, c.Expires = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	})
	cases := []struct {
		name      string
		path      string
		early     []string
		code      string
		closeCode uint16
	}{
		{"no token, extended", "/", []string{`{"type":"hello","nick":"ann"}`}, protocol.CodeAuthRequired, protocol.CloseAuthRequired},
		{"no token, seed", "/", []string{`{"type":"join-room","room":"lobby"}`}, protocol.CodeAuthRequired, protocol.CloseAuthRequired},
		{"expired", withToken(expired), nil, protocol.CodeTokenExpired, protocol.CloseTokenExpired},
		{"expired, in hello", "/", []string{`{"type":"hello","token":"` + expired + `"}`}, protocol.CodeTokenExpired, protocol.CloseTokenExpired},
		{"bad signature", withToken(mint(t, "ann", func(c *auth.Claims) { c.Issuer = "other-secret" })), nil, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid},
		{"wrong audience", withToken(mint(t, "ann", func(c *auth.Claims) { c.Audience = "another-app" })), nil, protocol.CodeTokenWrong, protocol.CloseTokenWrong},
		{"garbage", withToken("not.a.token"), nil, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid},
		{"the server's own name", withToken(mint(t, "$system", nil)), nil, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := wstest.DialPath(t, addr, tc.path, tc.early...)
			expectRefused(t, c, tc.code, tc.closeCode)
		})
	}
	// A token in the URL is bounded as one in a frame, before any parsing.
	c := wstest.DialPath(t, addr, withToken(strings.Repeat("a", 9000)))
	if f := c.Expect(t, `"type":"error"`); !strings.Contains(f, `"code":"token_invalid"`) || !strings.Contains(f, "8192") {
		t.Fatalf("a 9000-byte token in the URL: %s, want token_invalid naming the 8192-byte bound", f)
	}
	c.ExpectClose(t, protocol.CloseTokenInvalid)
}

// A frame sent right behind a refused token is not taken: the refusal
// comes first and nothing else.
func TestRefusedConnectionDoesNothing(t *testing.T) {
	h, addr := startAuthHub(t, false, nil)
	bad := mint(t, "ann", func(c *auth.Claims) { c.Audience = "another-app" })
	c := wstest.DialPath(t, addr, withToken(bad), `{"type":"join-room","room":"lobby"}`, `{"type":"chat","room":"lobby","message":"hi"}`)
	expectRefused(t, c, protocol.CodeTokenWrong, protocol.CloseTokenWrong)
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.rooms) != 0 {
		t.Fatalf("a refused connection joined %d rooms", len(h.rooms))
	}
}

// The token names the user: the nick a client gives is ignored, and its
// messages and presence carry the token's user.
func TestTokenNamesTheUser(t *testing.T) {
	_, addr := startAuthHub(t, false, nil)
	ann := wstest.DialPath(t, addr, withToken(mint(t, "ann", nil)), `{"type":"hello","nick":"bob"}`)
	w := ann.Expect(t, `"type":"welcome"`)
	if !strings.Contains(w, `"nick":"Ann"`) || !strings.Contains(w, `"user":"ann"`) || !strings.Contains(w, `"expires":`) {
		t.Fatalf("welcome %s: want the token's name and user", w)
	}
	// Anonymous connections still work in the default mode, and see who
	// is who.
	anon := wstest.Dial(t, addr, `{"type":"hello","nick":"Ann"}`, `{"type":"join","room":"lobby","id":"j"}`)
	anon.Expect(t, `"type":"joined"`)
	ann.Send(t, `{"type":"join","room":"lobby","id":"j"}`)
	j := ann.Expect(t, `"type":"joined"`)
	if !strings.Contains(j, `"nick":"Ann","instance":"test"}`) || !strings.Contains(j, `"nick":"Ann","instance":"test","user":"ann"}`) {
		t.Fatalf("joined %s: want the anonymous Ann without a user and the token's Ann with one", j)
	}
	ann.Send(t, `{"type":"chat","room":"lobby","message":"it is me","id":"c1"}`)
	got := anon.Expect(t, `"message":"it is me"`)
	var m protocol.Message
	if err := json.Unmarshal([]byte(got), &m); err != nil || m.From != "Ann" || m.User != "ann" {
		t.Fatalf("message %s: want from Ann, user ann", got)
	}
	anon.Send(t, `{"type":"chat","room":"lobby","message":"me too"}`)
	if got := ann.Expect(t, `"message":"me too"`); strings.Contains(got, `"user"`) {
		t.Fatalf("an anonymous message %s carries a user", got)
	}
}

func TestRoomPermissionsFromTheToken(t *testing.T) {
	_, addr := startAuthHub(t, true, nil)
	tok := mint(t, "ann", func(c *auth.Claims) {
		c.Rooms = &auth.Rooms{Join: []string{"lobby", "team-*"}, Publish: []string{"lobby"}}
	})
	c := wstest.DialPath(t, addr, withToken(tok), `{"type":"hello"}`)
	c.Expect(t, `"type":"welcome"`)
	c.Send(t, `{"type":"join","room":"secret","id":"j1"}`)
	if f := c.Expect(t, `"id":"j1"`); !strings.Contains(f, `"code":"forbidden"`) {
		t.Fatalf("join of a room the token does not name: %s, want forbidden", f)
	}
	c.Send(t, `{"type":"join","room":"team-a","id":"j2"}`)
	c.Expect(t, `"type":"joined"`)
	c.Send(t, `{"type":"chat","room":"team-a","message":"x","id":"c1"}`)
	if f := c.Expect(t, `"id":"c1"`); !strings.Contains(f, `"code":"forbidden"`) {
		t.Fatalf("chat to a read-only room: %s, want forbidden", f)
	}
	c.Send(t, `{"type":"join","room":"lobby","id":"j3"}`)
	c.Expect(t, `"type":"joined"`)
	c.Send(t, `{"type":"chat","room":"lobby","message":"x","id":"c2"}`)
	if f := c.Expect(t, `"type":"ack"`); !strings.Contains(f, `"id":"c2"`) {
		t.Fatalf("chat to a room the token allows: %s, want an ack", f)
	}
	// A seed client with the same token: refused the same way.
	seed := wstest.DialPath(t, addr, withToken(tok), `{"type":"chat","room":"team-b","message":"x"}`)
	if f := seed.Next(t); !strings.Contains(f, `"code":"forbidden"`) {
		t.Fatalf("seed chat to a read-only room: %s, want forbidden", f)
	}
}

// A connection is told before its token expires, and a refresh keeps it
// past the old expiry; without one it is closed with token_expired.
func TestExpiryAndRefresh(t *testing.T) {
	_, addr := startAuthHub(t, true, func(c *stackConfig) { c.ExpiryNotice = 1500 * time.Millisecond })
	soon := time.Now().Add(2 * time.Second).Truncate(time.Second) // a token's times are whole seconds
	short := func(c *auth.Claims) { c.Expires = soon }

	kept := wstest.DialPath(t, addr, withToken(mint(t, "ann", short)), `{"type":"hello"}`)
	dropped := wstest.DialPath(t, addr, withToken(mint(t, "bob", short)), `{"type":"hello"}`)
	kept.Expect(t, `"type":"welcome"`)
	dropped.Expect(t, `"type":"welcome"`)
	if f := kept.Next(t); !strings.Contains(f, `"type":"expiring"`) || !strings.Contains(f, fmt.Sprint(soon.Unix())) {
		t.Fatalf("got %s, want the expiry notice", f)
	}
	// Another user's token is no refresh of this connection's.
	kept.Send(t, `{"type":"refresh","id":"r0","token":"`+mint(t, "bob", nil)+`"}`)
	if f := kept.Expect(t, `"id":"r0"`); !strings.Contains(f, `"code":"token_invalid"`) {
		t.Fatalf("refresh with bob's token: %s, want token_invalid", f)
	}
	kept.Send(t, `{"type":"refresh","id":"r1","token":"`+mint(t, "ann", nil)+`"}`)
	if f := kept.Expect(t, `"id":"r1"`); !strings.Contains(f, `"type":"refreshed"`) {
		t.Fatalf("refresh: %s, want refreshed", f)
	}
	expectRefused(t, dropped, protocol.CodeTokenExpired, protocol.CloseTokenExpired)
	// bob's close came at the expiry both tokens had: ann is past it.
	if time.Now().Before(soon) {
		t.Fatalf("closed %s before the token's expiry", time.Until(soon))
	}
	kept.Send(t, `{"type":"ping","id":"p"}`)
	if f := kept.Next(t); !strings.Contains(f, `"type":"pong"`) {
		t.Fatalf("after the old expiry the refreshed connection got %s, want pong", f)
	}
}

// The server API's disconnect closes every connection of the user whose
// token is as old as the disconnect, and such tokens stay refused; a
// token issued since is accepted.
func TestDisconnectRevokes(t *testing.T) {
	h, addr := startAuthHub(t, true, func(c *stackConfig) { c.Control, c.RevokeFor = true, time.Hour })
	waitControl(t, h)
	old := mint(t, "ann", nil)
	bob := wstest.DialPath(t, addr, withToken(mint(t, "bob", nil)), `{"type":"hello"}`, `{"type":"join","room":"lobby","id":"j"}`)
	bob.Expect(t, `"type":"joined"`)
	a1 := wstest.DialPath(t, addr, withToken(old), `{"type":"hello"}`, `{"type":"join","room":"lobby","id":"j"}`)
	a1.Expect(t, `"type":"joined"`)
	// a2 (seed, no answers) was admitted once bob has its chat. Were it
	// still being admitted at the disconnect, it would be refused as a
	// revoked token instead: right too, but not what this checks.
	a2 := wstest.DialPath(t, addr, withToken(old), `{"type":"join-room","room":"lobby"}`, `{"type":"chat","room":"lobby","message":"a2 is in"}`)
	bob.Expect(t, `a2 is in`)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	at := time.Now()
	if err := h.Disconnect(ctx, "ann"); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, a1, protocol.CodeDisconnected, protocol.CloseDisconnected)
	expectRefused(t, a2, protocol.CodeDisconnected, protocol.CloseDisconnected)
	bob.Send(t, `{"type":"ping","id":"p"}`)
	if f := bob.Expect(t, `"id":"p"`); !strings.Contains(f, "pong") {
		t.Fatalf("bob got %s", f)
	}
	again := wstest.DialPath(t, addr, withToken(old))
	expectRefused(t, again, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid)
	// Token times are whole seconds: one of the next is newer.
	wstest.WaitUntil(t, "the next second", func() bool { return time.Now().Unix() > at.Unix() })
	fresh := wstest.DialPath(t, addr, withToken(mint(t, "ann", func(c *auth.Claims) { c.IssuedAt = time.Now() })), `{"type":"hello"}`)
	fresh.Expect(t, `"type":"welcome"`)
}

// A token that lives shorter than the notice is noticed at half its life,
// once: a refresh with another such token is not answered with the next
// notice at once (which a page would answer with another refresh, on and
// on).
func TestShortTokensAreNoticedOnce(t *testing.T) {
	_, addr := startAuthHub(t, true, nil) // notice: a minute
	short := func(c *auth.Claims) { c.Expires = time.Now().Add(3 * time.Second) }
	c := wstest.DialPath(t, addr, withToken(mint(t, "ann", short)), `{"type":"hello"}`)
	c.Expect(t, `"type":"welcome"`)
	if f := c.Next(t); !strings.Contains(f, `"type":"expiring"`) {
		t.Fatalf("got %s, want the notice", f)
	}
	c.Send(t, `{"type":"refresh","id":"r1","token":"`+mint(t, "ann", short)+`"}`, `{"type":"ping","id":"p"}`)
	for _, want := range []string{`"type":"refreshed"`, `"type":"pong"`} {
		if f := c.Next(t); !strings.Contains(f, want) {
			t.Fatalf("after the refresh got %s, want %s first", f, want)
		}
	}
}

// Only an extended connection refreshes its token: a seed client gets an
// error (it only ever gets chat and error frames), an anonymous one too,
// before any token is checked.
func TestRefreshNeedsAnExtendedAuthenticatedConnection(t *testing.T) {
	_, addr := startAuthHub(t, false, nil)
	seed := wstest.DialPath(t, addr, withToken(mint(t, "ann", nil)), `{"type":"refresh","id":"r","token":"`+mint(t, "ann", nil)+`"}`)
	if f := seed.Next(t); !strings.Contains(f, `"type":"error"`) || !strings.Contains(f, `"code":"bad_request"`) {
		t.Fatalf("a seed client's refresh: %s, want bad_request", f)
	}
	anon := wstest.Dial(t, addr, `{"type":"hello","nick":"x"}`, `{"type":"refresh","id":"r","token":"garbage"}`)
	anon.Expect(t, `"type":"welcome"`)
	if f := anon.Next(t); !strings.Contains(f, `"code":"bad_request"`) {
		t.Fatalf("an anonymous refresh: %s, want bad_request (not a verdict on the token)", f)
	}
}

// After a disconnect, a token without iat cannot be told from the revoked
// ones: it is refused, and says why.
func TestRevocationNeedsIssuedAt(t *testing.T) {
	h, addr := startAuthHub(t, true, func(c *stackConfig) { c.Control, c.RevokeFor = true, time.Hour })
	waitControl(t, h)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := h.Disconnect(ctx, "ann"); err != nil {
		t.Fatal(err)
	}
	wstest.WaitUntil(t, "the disconnect carried out", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		_, ok := h.revoked["ann"]
		return ok
	})
	c := wstest.DialPath(t, addr, withToken(mint(t, "ann", func(c *auth.Claims) { c.IssuedAt = time.Time{} })))
	f := c.Expect(t, `"type":"error"`)
	if !strings.Contains(f, `"code":"token_invalid"`) || !strings.Contains(f, "iat") {
		t.Fatalf("a token without iat after a disconnect: %s, want token_invalid naming iat", f)
	}
}

// A disconnect sent before the instance read the control room (here:
// before its RunControl started; in a deployment, before the instance
// started) is carried out from the room's kept messages: the old token is
// refused, a newer one accepted. One whose revocation is over by then is
// not. The control room keeps HistoryLimit messages, whatever HistorySize
// (here none) the rooms keep.
func TestDisconnectBeforeTheControlRoomWasRead(t *testing.T) {
	h, addr := startAuthHub(t, true, func(c *stackConfig) { c.RevokeFor, c.HistorySize = time.Hour, 0 })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	old := mint(t, "ann", nil)
	if err := h.Disconnect(ctx, "ann"); err != nil {
		t.Fatal(err)
	}
	// A disconnect of bob from two hours ago: over before this instance
	// read it.
	a := h.NewAgent("test")
	defer a.Close()
	if _, err := a.Do(ctx, protocol.Inbound{Type: protocol.TypeJoin, Room: ControlRoom}); err != nil {
		t.Fatal(err)
	}
	text, _ := json.Marshal(command{Op: "disconnect", User: "bob", At: time.Now().Add(-2 * time.Hour).UnixMilli()})
	if _, err := a.Do(ctx, protocol.Inbound{Type: protocol.TypeChat, Room: ControlRoom, Message: string(text)}); err != nil {
		t.Fatal(err)
	}
	bobs := mint(t, "bob", func(c *auth.Claims) { c.IssuedAt = time.Now().Add(-3 * time.Hour) })
	before := wstest.DialPath(t, addr, withToken(old), `{"type":"hello"}`)
	before.Expect(t, `"type":"welcome"`) // nothing read yet
	bob := wstest.DialPath(t, addr, withToken(bobs), `{"type":"hello"}`)
	bob.Expect(t, `"type":"welcome"`)

	run, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.RunControl(run)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	waitControl(t, h)
	expectRefused(t, before, protocol.CodeDisconnected, protocol.CloseDisconnected)
	again := wstest.DialPath(t, addr, withToken(old))
	expectRefused(t, again, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid)
	bob.Send(t, `{"type":"ping","id":"p"}`)
	if f := bob.Expect(t, `"id":"p"`); !strings.Contains(f, "pong") {
		t.Fatalf("bob, disconnected before his revocation's time, got %s", f)
	}
}

// With the control room run (Control) but not read yet, a token is not
// admitted, as whether it was revoked is not known: the client is told to
// reconnect (1012). A connection without a token is not held up.
func TestNoTokenAdmittedBeforeTheControlRoomIsRead(t *testing.T) {
	v, err := auth.New(t.Context(), auth.Config{HMACSecret: testSecret, Audience: "wschat"})
	if err != nil {
		t.Fatal(err)
	}
	h, srv := startHubOn(t, func(c *stackConfig) { c.Auth, c.Control, c.RevokeFor = v, true, time.Hour },
		func(_ *Hub, b bus.Bus) bus.Bus { return unansweredControl{b} })
	addr := srv.Listener.Addr().String()
	c := wstest.DialPath(t, addr, withToken(mint(t, "ann", nil)), `{"type":"hello"}`)
	expectRefused(t, c, protocol.CodeUnavailable, closeRestart)
	anon := wstest.Dial(t, addr, `{"type":"hello","nick":"x"}`)
	anon.Expect(t, `"type":"welcome"`)
	if h.ControlReady() {
		t.Fatal("the control room read, although its subscription was never answered")
	}
}

// unansweredControl is a bus whose control room subscription is never
// answered (a relay tier that has not answered yet).
type unansweredControl struct{ bus.Bus }

func (b unansweredControl) Subscribe(in bus.Interest) {
	if in.Room != ControlRoom {
		b.Bus.Subscribe(in)
	}
}
