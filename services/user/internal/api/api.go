// Package api is ws-user's server API: HTTP endpoints for a deployment's
// own back end to publish to a room as a bot, read a room's presence and
// history, and disconnect a user from every instance. Each call is
// answered through the bus (the hub's Agent, the control room), so any
// instance answers it for the whole deployment, on every backend.
//
// Every request must carry "Authorization: Bearer <API key>"; without
// a configured key the API is off (404).
package api

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/hub"
)

// Prefix is where the API is served.
const Prefix = "/api/v1/"

// Config sets the API's key and bounds.
type Config struct {
	// Keys are the accepted API keys (API_KEY); none turns the API off.
	Keys [][]byte
	// Rules are the names' and texts' limits, as for clients.
	Rules protocol.Rules
	// Timeout bounds each call's wait for the bus (default 10s).
	Timeout time.Duration
	// MaxBody bounds a request body (default 64 KiB).
	MaxBody int64
	Logger  *slog.Logger
}

// Handler returns the API's handler for the routes under Prefix.
func Handler(cfg Config, h *hub.Hub) http.Handler {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 64 << 10
	}
	// Decode's own defaults, for the names it does not check here.
	cfg.Rules.MaxRoomBytes = cmp.Or(max(cfg.Rules.MaxRoomBytes, 0), 64)
	cfg.Rules.MaxNickBytes = cmp.Or(max(cfg.Rules.MaxNickBytes, 0), 32)
	s := &server{cfg: cfg, h: h}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+Prefix+"rooms/{room}/messages", s.publish)
	mux.HandleFunc("GET "+Prefix+"rooms/{room}/messages", s.history)
	mux.HandleFunc("GET "+Prefix+"rooms/{room}/presence", s.presence)
	mux.HandleFunc("POST "+Prefix+"users/{user}/disconnect", s.disconnect)
	return s.authorized(mux)
}

type server struct {
	cfg Config
	h   *hub.Hub
}

// apiError is every error answer's body.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (s *server) authorized(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.cfg.Keys) == 0 {
			http.NotFound(w, r)
			return
		}
		key, ok := bearer(r)
		if !ok || !s.known(key) {
			// The key itself is never logged.
			s.cfg.Logger.Info("api: request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "key_given", ok)
			w.Header().Set("WWW-Authenticate", `Bearer realm="wschat"`)
			reply(w, http.StatusUnauthorized, apiError{"unauthorized", "send Authorization: Bearer <API key>"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func bearer(r *http.Request) ([]byte, bool) {
	const p = "Bearer "
	v := r.Header.Get("Authorization")
	if len(v) <= len(p) || v[:len(p)] != p {
		return nil, false
	}
	return []byte(v[len(p):]), true
}

// known compares key with every configured key in constant time; their
// digests, so that not even a key's length shows in the time taken.
func (s *server) known(key []byte) bool {
	sum := sha256.Sum256(key)
	ok := 0
	for _, k := range s.cfg.Keys {
		ks := sha256.Sum256(k)
		ok |= subtle.ConstantTimeCompare(ks[:], sum[:])
	}
	return ok == 1
}

// room returns the path's room, answering 400 when it is not one a client
// could name.
func (s *server) room(w http.ResponseWriter, r *http.Request) (string, bool) {
	room := r.PathValue("room")
	if err := protocol.ValidClientRoom(room, s.cfg.Rules.MaxRoomBytes); err != nil {
		reply(w, http.StatusBadRequest, apiError{protocol.CodeBadRoom, "room " + err.Error()})
		return "", false
	}
	return room, true
}

// joined runs f with an agent that joined room, then leaves it.
func (s *server) joined(w http.ResponseWriter, r *http.Request, room, name string, f func(ctx context.Context, a *hub.Agent, joined *protocol.Joined) error) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Timeout)
	defer cancel()
	a := s.h.NewAgent(name)
	defer a.Close()
	j, err := ask[protocol.Joined](ctx, a, protocol.Inbound{Type: protocol.TypeJoin, Room: room})
	if err == nil {
		err = f(ctx, a, &j)
	}
	if err != nil {
		s.fail(w, r, err)
	}
}

// ask sends in through a and decodes the answer into a T.
func ask[T any](ctx context.Context, a *hub.Agent, in protocol.Inbound) (T, error) {
	var v T
	b, err := a.Do(ctx, in)
	if err == nil {
		err = json.Unmarshal(b, &v)
	}
	return v, err
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var pe *protocol.Error
	switch {
	case errors.As(err, &pe):
		status := http.StatusServiceUnavailable
		switch pe.Code {
		case protocol.CodeBadRequest, protocol.CodeBadRoom, protocol.CodeBadNick, protocol.CodeTooLarge:
			status = http.StatusBadRequest
		case protocol.CodeInternal:
			status = http.StatusInternalServerError
		}
		reply(w, status, apiError{pe.Code, pe.Message})
	case errors.Is(err, context.DeadlineExceeded):
		reply(w, http.StatusGatewayTimeout, apiError{protocol.CodeUnavailable, fmt.Sprintf("no answer from the relay tier within %s", s.cfg.Timeout)})
	default:
		s.cfg.Logger.Warn("api: call failed", "path", r.URL.Path, "err", err)
		reply(w, http.StatusServiceUnavailable, apiError{protocol.CodeUnavailable, err.Error()})
	}
}

// publish: POST rooms/{room}/messages {"message": "...", "from": "bot",
// "id": "..."} → 200 {"room", "seq"} once the message is sequenced.
func (s *server) publish(w http.ResponseWriter, r *http.Request) {
	room, ok := s.room(w, r)
	if !ok {
		return
	}
	var body struct {
		Message string `json:"message"`
		From    string `json:"from"`
		// ID, when given, makes a retry safe: the same id and room
		// within the dedup window is acknowledged with the first seq.
		ID string `json:"id"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err := dec.Decode(&body); err != nil {
		reply(w, http.StatusBadRequest, apiError{protocol.CodeBadJSON, "body must be a JSON object {\"message\": ..., \"from\": ...}: " + err.Error()})
		return
	}
	if body.From == "" {
		body.From = "system"
	}
	// The frame a client would send, checked by the clients' own rules.
	in, perr := protocol.Decode(protocol.Encode(protocol.Inbound{Type: protocol.TypeChat, Room: room, Message: body.Message, ID: body.ID}), s.cfg.Rules)
	if perr == nil {
		if err := protocol.ValidName(body.From, s.cfg.Rules.MaxNickBytes); err != nil {
			perr = protocol.Errorf(protocol.CodeBadNick, "from %v", err)
		}
	}
	if perr != nil {
		reply(w, http.StatusBadRequest, apiError{perr.Code, perr.Message})
		return
	}
	s.joined(w, r, room, body.From, func(ctx context.Context, a *hub.Agent, _ *protocol.Joined) error {
		ack, err := ask[protocol.Ack](ctx, a, in)
		if err != nil {
			return err
		}
		reply(w, http.StatusOK, map[string]any{"room": room, "seq": ack.Seq})
		return nil
	})
}

// presence: GET rooms/{room}/presence → {"room", "members": [...]}, every
// member on every instance.
func (s *server) presence(w http.ResponseWriter, r *http.Request) {
	room, ok := s.room(w, r)
	if !ok {
		return
	}
	s.joined(w, r, room, "api", func(_ context.Context, _ *hub.Agent, j *protocol.Joined) error {
		if j.Members == nil {
			j.Members = []protocol.Member{}
		}
		reply(w, http.StatusOK, map[string]any{"room": room, "members": j.Members})
		return nil
	})
}

// history: GET rooms/{room}/messages?before=N&limit=M → the history frame's
// fields: messages ascending, before N (default: the newest), at most M
// (default and cap HISTORY_SIZE), and first, the oldest kept.
func (s *server) history(w http.ResponseWriter, r *http.Request) {
	room, ok := s.room(w, r)
	if !ok {
		return
	}
	in := protocol.Inbound{Type: protocol.TypeHistory, Room: room}
	for _, q := range []struct {
		name string
		set  func(n uint64)
	}{
		{"before", func(n uint64) { in.Before = n }},
		{"limit", func(n uint64) { in.Limit = int(min(n, 1<<20)) }},
	} {
		if v := r.URL.Query().Get(q.name); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				reply(w, http.StatusBadRequest, apiError{protocol.CodeBadRequest, q.name + " must be a whole number"})
				return
			}
			q.set(n)
		}
	}
	s.joined(w, r, room, "api", func(ctx context.Context, a *hub.Agent, _ *protocol.Joined) error {
		hist, err := ask[protocol.History](ctx, a, in)
		if err != nil {
			return err
		}
		if hist.Messages == nil {
			hist.Messages = []protocol.Message{}
		}
		reply(w, http.StatusOK, map[string]any{"room": room, "messages": hist.Messages, "first": hist.First})
		return nil
	})
}

// disconnect: POST users/{user}/disconnect → 202 once every instance will
// close the user's connections (tokens issued until now stay refused for
// AUTH_REVOKE_FOR).
func (s *server) disconnect(w http.ResponseWriter, r *http.Request) {
	user := r.PathValue("user")
	if user == "" || len(user) > 256 {
		reply(w, http.StatusBadRequest, apiError{protocol.CodeBadRequest, "user must be 1 to 256 bytes"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Timeout)
	defer cancel()
	if err := s.h.Disconnect(ctx, user); err != nil {
		s.fail(w, r, err)
		return
	}
	s.cfg.Logger.Info("api: user disconnected", "user", user)
	reply(w, http.StatusAccepted, map[string]any{"user": user, "disconnected": true})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
