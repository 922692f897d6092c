package hub

// Who a client is: its token's identity, checked before anything else it
// sends is accepted; its expiry, refresh and revocation; and what rooms it
// may join and publish to.

import (
	"errors"
	"strings"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/auth"
)

// systemUser is the identity of the server API's messages. Users whose
// token names one starting with "$" are refused, so no one can pose as it.
const systemUser = "$system"

// refusal is why a token was not accepted: the error code and close code
// the client gets, and a reason safe to log and show (never the token).
type refusal struct {
	code   string
	close  int
	reason string
}

// verify checks a token (outside h.mu: a JWKS fetch may take a while).
func (h *Hub) verify(token string) (*auth.Identity, *refusal) {
	if err := protocol.ValidToken(token, protocol.Rules{}); err != nil {
		return nil, &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, "token " + err.Error()}
	}
	if h.cfg.Auth == nil {
		return nil, &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, "this server is configured for no tokens (AUTH_MODE=anonymous without keys)"}
	}
	id, err := h.cfg.Auth.Verify(token)
	if err != nil {
		var ae *auth.Error
		if !errors.As(err, &ae) {
			return nil, &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, "token not accepted"}
		}
		switch ae.Code {
		case auth.CodeTokenExpired:
			return nil, &refusal{protocol.CodeTokenExpired, protocol.CloseTokenExpired, ae.Reason}
		case auth.CodeTokenAudience:
			return nil, &refusal{protocol.CodeTokenWrong, protocol.CloseTokenWrong, ae.Reason}
		default:
			return nil, &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, ae.Reason}
		}
	}
	if strings.HasPrefix(id.User, "$") {
		return nil, &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, "user names starting with $ are the server's"}
	}
	return id, nil
}

// admit decides what a new connection may do with the token of its
// upgrade: none is fine unless tokens are required (then it must come in
// hello, within AuthTimeout); one is verified before any frame is read.
func (h *Hub) admit(c *client, token string) {
	if token == "" {
		if !h.cfg.RequireAuth {
			return
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		c.awaiting = true
		h.armLocked(c, h.cfg.AuthTimeout, func() {
			if c.awaiting {
				h.refuseLocked(c, protocol.CodeAuthRequired, protocol.CloseAuthRequired,
					"no token within "+h.cfg.AuthTimeout.String()+": send it in hello, or as the token query parameter")
			}
		})
		return
	}
	id, rf := h.verify(token)
	h.mu.Lock()
	defer h.mu.Unlock()
	if rf != nil {
		h.refuseLocked(c, rf.code, rf.close, rf.reason)
		return
	}
	h.identifyLocked(c, id)
}

// hello makes c an extended client; its token, if it brings one, is
// verified first, and then names it.
func (h *Hub) hello(c *client, in protocol.Inbound) {
	var id *auth.Identity
	var rf *refusal
	if in.Token != "" {
		id, rf = h.verify(in.Token)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case c.refused:
		return
	case rf != nil:
		h.refuseLocked(c, rf.code, rf.close, rf.reason)
		return
	case id != nil && c.ident != nil && c.ident.User != id.User:
		h.refuseLocked(c, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, "hello's token is for another user than the connection's")
		return
	case id != nil && !h.identifyLocked(c, id):
		return
	case !c.admittedLocked(in):
		return
	case c.ident == nil && in.Nick == "":
		c.helloRetry = true
		c.sendErrorLocked(in, protocol.CodeBadNick, "nick must not be empty (or connect with a token, which names you)")
		return
	}
	c.extended = true
	c.session = in.Session
	w := protocol.Welcome{Type: protocol.TypeWelcome, Version: protocol.Version, Instance: h.cfg.Instance, ID: c.member.ID, Limits: h.Limits()}
	if c.ident == nil {
		c.nick, c.member.Nick = in.Nick, in.Nick
	} else {
		w.User, w.Expires = c.ident.User, c.ident.Expires.UnixMilli()
	}
	w.Nick = c.nick
	c.peer.Send(protocol.Encode(w))
	if c.ident != nil {
		h.armExpiryLocked(c) // now extended: the notice is due to it
	}
}

// identifyLocked gives c the identity id: its name is the token's, and its
// expiry is armed; or refuses it, when a disconnect of its user revoked
// the token (checked here, under h.mu, so that no disconnect passes
// between the check and c's admission). It reports whether c was
// identified. h.mu must be held.
func (h *Hub) identifyLocked(c *client, id *auth.Identity) bool {
	if !h.ControlReady() {
		h.refuseLocked(c, protocol.CodeUnavailable, closeRestart,
			"this instance is starting: it has not read the server's disconnects yet; connect again")
		return false
	}
	if reason := h.revokedLocked(id); reason != "" {
		h.refuseLocked(c, protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, reason)
		return false
	}
	c.awaiting = false
	c.ident = id
	c.nick, c.member.Nick, c.member.User = id.Name, id.Name, id.User
	if h.users[id.User] == nil {
		h.users[id.User] = map[*client]struct{}{}
	}
	h.users[id.User][c] = struct{}{}
	h.armExpiryLocked(c)
	return true
}

// armExpiryLocked arms c's timer for its token: a notice before the
// expiry (extended clients; once per expiry), then the close. The notice
// comes ExpiryNotice before, or half the token's remaining life before
// when that is shorter: a token shorter-lived than the notice would be
// noticed at once, and every refresh answered with the next notice.
// h.mu must be held.
func (h *Hub) armExpiryLocked(c *client) {
	exp := c.ident.Expires
	notify := func() {
		if c.extended && c.noticed != exp {
			c.noticed = exp
			c.peer.Send(protocol.Encode(protocol.Expiring{Type: protocol.TypeExpiring, Expires: exp.UnixMilli()}))
		}
		h.armLocked(c, time.Until(exp), func() { h.expireLocked(c) })
	}
	if d := time.Until(exp) - min(h.cfg.ExpiryNotice, time.Until(exp)/2); d > 0 && c.noticed != exp {
		h.armLocked(c, d, notify)
		return
	}
	notify()
}

func (h *Hub) expireLocked(c *client) {
	h.refuseLocked(c, protocol.CodeTokenExpired, protocol.CloseTokenExpired, "the connection's token expired: connect again with a new one, or refresh before it expires")
}

// armLocked runs f (with h.mu held) after d, unless c is closed or its
// timer armed again meanwhile. h.mu must be held.
func (h *Hub) armLocked(c *client, d time.Duration, f func()) {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.timerGen++
	gen := c.timerGen
	c.timer = time.AfterFunc(max(d, 0), func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if c.gone || c.timerGen != gen {
			return
		}
		f()
	})
}

// refresh replaces c's token with a newer one of the same user: its
// expiry moves, and its rooms follow the new token's permissions (rooms it
// no longer allows are left). A token that is not accepted leaves the
// connection as it was, until its current token expires.
func (h *Hub) refresh(c *client, in protocol.Inbound) {
	h.mu.Lock()
	ok := c.admittedLocked(in)
	switch {
	case !ok:
	case !c.extended:
		ok = false
		c.sendErrorLocked(in, protocol.CodeBadRequest, "refresh needs hello first (the extended protocol): connect again with a new token instead")
	case c.ident == nil:
		ok = false
		c.sendErrorLocked(in, protocol.CodeBadRequest, "an anonymous connection has no token to refresh: connect with one")
	}
	h.mu.Unlock()
	if !ok {
		return // before verifying: an anonymous client cannot make the server check tokens at its frame rate
	}
	id, rf := h.verify(in.Token)
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.refused {
		return
	}
	if rf == nil {
		if reason := h.revokedLocked(id); reason != "" {
			rf = &refusal{protocol.CodeTokenInvalid, protocol.CloseTokenInvalid, reason}
		}
	}
	switch {
	case rf != nil:
		c.sendErrorLocked(in, rf.code, "refresh refused: %s", rf.reason)
		return
	case c.ident.User != id.User:
		c.sendErrorLocked(in, protocol.CodeTokenInvalid, "refresh refused: the token is for another user")
		return
	}
	id.Name = c.ident.Name // a member's name is its connection's: presence would go stale
	c.ident = id
	h.armExpiryLocked(c)
	for name := range c.rooms {
		if !id.CanJoin(name) {
			h.leaveLocked(c, name)
			c.peer.Send(protocol.Encode(protocol.Left{Type: protocol.TypeLeft, Room: name}))
			c.sendErrorLocked(protocol.Inbound{Room: name}, protocol.CodeForbidden, "the refreshed token does not allow room %q: left", name)
		}
	}
	h.log.Debug("token refreshed", "member", c.member.ID, "user", id.User, "expires", id.Expires)
	c.peer.Send(protocol.Encode(protocol.Refreshed{Type: protocol.TypeRefreshed, ID: in.ID, Expires: id.Expires.UnixMilli()}))
}

// refuseLocked ends c's connection for a reason of authentication: an
// error frame with code, then the close with closeCode. Its frames are
// ignored from now on. h.mu must be held.
func (h *Hub) refuseLocked(c *client, code string, closeCode int, reason string) {
	if c.refused {
		return
	}
	c.refused = true
	user := ""
	if c.ident != nil {
		user = c.ident.User
	}
	h.log.Info("connection refused", "member", c.member.ID, "user", user, "code", code, "reason", reason)
	h.m.AuthRefused.WithLabelValues(code).Inc()
	c.peer.SendError(protocol.Errorf(code, "%s", reason))
	c.peer.CloseAfter(closeCode, closeReason(code, reason))
}

// closeReason is code: reason, cut to what a close frame holds (123 bytes).
func closeReason(code, reason string) string {
	s := code + ": " + reason
	if len(s) <= 123 {
		return s
	}
	s = s[:123]
	for len(s) > 0 && s[len(s)-1]&0xC0 == 0x80 {
		s = s[:len(s)-1] // not in the middle of a character
	}
	if len(s) > 0 && s[len(s)-1] >= 0xC0 {
		s = s[:len(s)-1]
	}
	return s
}

// mayLocked reports whether c may join (publish false) or publish to room
// under its token; when not, it answers in with forbidden and logs it.
// h.mu must be held.
func (h *Hub) mayLocked(c *client, in protocol.Inbound, publish bool) bool {
	if c.ident == nil {
		return true
	}
	ok := c.ident.CanJoin(in.Room)
	op := "join"
	if publish {
		ok, op = c.ident.CanPublish(in.Room), "publish"
	}
	if !ok {
		h.log.Info("operation refused", "op", op, "room", in.Room, "user", c.ident.User, "member", c.member.ID)
		h.m.AuthRefused.WithLabelValues(protocol.CodeForbidden).Inc()
		c.sendErrorLocked(in, protocol.CodeForbidden, "your token does not allow you to %s room %q", op, in.Room)
	}
	return ok
}

// forgetLocked ends c's authentication state when it closes. h.mu must be
// held.
func (h *Hub) forgetLocked(c *client) {
	c.gone = true
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.ident == nil {
		return
	}
	if set := h.users[c.ident.User]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(h.users, c.ident.User)
		}
	}
}

// disconnectUserLocked closes every connection of user on this instance
// whose token was issued at or before at, and refuses such tokens for
// RevokeFor. h.mu must be held.
func (h *Hub) disconnectUserLocked(user string, at time.Time) int {
	if h.cfg.RevokeFor > 0 {
		// From the disconnect (a kept one is replayed later), or from now
		// if the sender's clock is ahead.
		from := time.Now()
		if at.Before(from) {
			from = at
		}
		r := revocation{at: at, until: from.Add(h.cfg.RevokeFor)}
		if old, ok := h.revoked[user]; ok {
			// Commands may come out of order between instances' clocks.
			if old.at.After(r.at) {
				r.at = old.at
			}
			if old.until.After(r.until) {
				r.until = old.until
			}
		}
		h.revoked[user] = r
	}
	n := 0
	for c := range h.users[user] {
		if c.ident.IssuedAt.After(at) {
			continue // a token issued since: the user signed in again
		}
		h.refuseLocked(c, protocol.CodeDisconnected, protocol.CloseDisconnected, "disconnected by the server")
		n++
	}
	return n
}

type revocation struct{ at, until time.Time }

// revokedLocked returns why id's token is refused for a disconnect of its
// user still in force, or "". Token times are whole seconds: one issued in
// the second of the disconnect counts as issued before it. h.mu must be
// held.
func (h *Hub) revokedLocked(id *auth.Identity) string {
	r, ok := h.revoked[id.User]
	switch {
	case !ok || time.Now().After(r.until):
		return ""
	case id.IssuedAt.IsZero():
		return "token without iat, and its user was disconnected: tokens must carry iat to be told from the revoked ones"
	case !id.IssuedAt.After(r.at.Truncate(time.Second)):
		return "token revoked: the user was disconnected after it was issued; get a new one"
	}
	return ""
}

// sweepRevokedLocked forgets the revocations past their time. h.mu must
// be held.
func (h *Hub) sweepRevokedLocked(now time.Time) {
	for user, r := range h.revoked {
		if now.After(r.until) {
			delete(h.revoked, user)
		}
	}
}
