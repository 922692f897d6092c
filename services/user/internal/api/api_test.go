package api

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/hub"
)

const key = "api-test-key-0123456789"

// serve runs the API over a hub on the standalone bus.
func serve(t *testing.T, keys ...string) *httptest.Server {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := hub.New(hub.Config{Instance: "i1", HistorySize: 50, HistoryLimit: 100, MaxRooms: 8, Logger: log,
		Metrics: hub.NewMetrics(prometheus.NewRegistry())})
	b := bus.NewLocal(h, 100).WithDedupWindow(1000)
	h.SetBus(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	for _, run := range []func(context.Context){func(ctx context.Context) { _ = b.Run(ctx) }, h.Run, h.RunControl} {
		go func() {
			run(ctx)
			done <- struct{}{}
		}()
	}
	var kb [][]byte
	for _, k := range keys {
		kb = append(kb, []byte(k))
	}
	srv := httptest.NewServer(Handler(Config{Keys: kb, Logger: log}, h))
	t.Cleanup(func() {
		srv.Close()
		cancel()
		for range 3 {
			<-done
		}
	})
	return srv
}

func call(t *testing.T, srv *httptest.Server, method, path, auth, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil && resp.StatusCode != http.StatusNotFound {
		t.Fatalf("%s %s: %d, body not JSON: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

func TestOffWithoutKey(t *testing.T) {
	srv := serve(t)
	if code, _ := call(t, srv, "GET", Prefix+"rooms/lobby/presence", key, ""); code != http.StatusNotFound {
		t.Fatalf("API without a key configured answered %d, want 404", code)
	}
}

func TestRefusesWithoutTheKey(t *testing.T) {
	srv := serve(t, key)
	for _, auth := range []string{"", "wrong-key-0123456789", key + "x"} {
		if code, body := call(t, srv, "POST", Prefix+"rooms/lobby/messages", auth, `{"message":"hi"}`); code != http.StatusUnauthorized || body["code"] != "unauthorized" {
			t.Errorf("key %q: %d %v, want 401 unauthorized", auth, code, body)
		}
	}
}

func TestPublishHistoryPresenceDisconnect(t *testing.T) {
	srv := serve(t, key)
	code, body := call(t, srv, "POST", Prefix+"rooms/lobby/messages", key, `{"message":"maintenance at noon","from":"ops-bot"}`)
	if code != http.StatusOK || body["seq"] != float64(1) {
		t.Fatalf("publish: %d %v, want 200 seq 1", code, body)
	}
	// A retry with the same id is the same message.
	for range 2 {
		code, body = call(t, srv, "POST", Prefix+"rooms/lobby/messages", key, `{"message":"once","id":"deploy-42"}`)
		if code != http.StatusOK || body["seq"] != float64(2) {
			t.Fatalf("publish with an id: %d %v, want 200 seq 2 both times", code, body)
		}
	}
	code, body = call(t, srv, "GET", Prefix+"rooms/lobby/messages?limit=10", key, "")
	msgs, _ := body["messages"].([]any)
	if code != http.StatusOK || len(msgs) != 2 {
		t.Fatalf("history: %d %v, want the two messages", code, body)
	}
	m := msgs[0].(map[string]any)
	if m["message"] != "maintenance at noon" || m["from"] != "ops-bot" || m["user"] != "$system" {
		t.Fatalf("history holds %v: want the bot's message as user $system", m)
	}
	// The API's own joins are no one's presence.
	code, body = call(t, srv, "GET", Prefix+"rooms/lobby/presence", key, "")
	if members, ok := body["members"].([]any); code != http.StatusOK || !ok || len(members) != 0 {
		t.Fatalf("presence: %d %v, want 200 and no members", code, body)
	}
	if code, body = call(t, srv, "POST", Prefix+"users/ann/disconnect", key, ""); code != http.StatusAccepted {
		t.Fatalf("disconnect: %d %v, want 202", code, body)
	}
}

func TestBadInput(t *testing.T) {
	srv := serve(t, key)
	cases := []struct{ method, path, body, code string }{
		{"POST", Prefix + "rooms/lobby/messages", `not json`, protocol.CodeBadJSON},
		{"POST", Prefix + "rooms/lobby/messages", `{"message":""}`, protocol.CodeBadRequest},
		{"POST", Prefix + "rooms/lobby/messages", `{"message":"` + strings.Repeat("x", 5000) + `"}`, protocol.CodeTooLarge},
		{"POST", Prefix + "rooms/lobby/messages", `{"message":"hi","from":"tab\there"}`, protocol.CodeBadNick},
		{"POST", Prefix + "rooms/$wschat%2Fcontrol/messages", `{"message":"hi"}`, protocol.CodeBadRoom},
		{"GET", Prefix + "rooms/lobby/messages?before=x", "", protocol.CodeBadRequest},
	}
	for _, c := range cases {
		if code, body := call(t, srv, c.method, c.path, key, c.body); code != http.StatusBadRequest || body["code"] != c.code {
			t.Errorf("%s %s %.20q: %d %v, want 400 %s", c.method, c.path, c.body, code, body, c.code)
		}
	}
}
