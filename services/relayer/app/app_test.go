package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/app"
)

const (
	secret  = "app-test-secret"
	waitFor = 10 * time.Second
)

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

type running struct {
	addr string
	stop func() error // cancels and waits for Run
	logs *lines
}

// lines collects stderr; Run's logs are JSON lines.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, s)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// run starts app.Run and waits for its "listening" line.
func run(t *testing.T, env map[string]string) *running {
	t.Helper()
	base := map[string]string{"HOST": "127.0.0.1", "PORT": "0", "RELAY_SECRET": secret, "DATA_DIR": t.TempDir(), "SHUTDOWN_TIMEOUT": "5s"}
	for k, v := range env {
		base[k] = v
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, []string{"ws-relayer"}, getenv(base), io.Discard, pw)
		pw.Close()
	}()
	r := &running{logs: &lines{}}
	addrc := make(chan string, 1)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			r.logs.add(sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" {
				addrc <- rec.Addr
			}
		}
		io.Copy(io.Discard, pr)
	}()
	var once sync.Once
	var err error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(waitFor):
				t.Fatal("Run did not return after cancel")
			}
			<-logsDone // every line Run wrote is in r.logs
		})
		return err
	}
	t.Cleanup(func() { r.stop() })
	select {
	case r.addr = <-addrc:
	case err := <-done:
		t.Fatalf("Run returned before listening: %v\n%s", err, r.logs)
	case <-time.After(waitFor):
		t.Fatalf("no listening line\n%s", r.logs)
	}
	return r
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"missing secret", map[string]string{"RELAY_SECRET": ""}, []string{"RELAY_SECRET is required", "openssl rand"}},
		{"short secret", map[string]string{"RELAY_SECRET": "short"}, []string{"RELAY_SECRET", "at least 8"}},
		{"history", map[string]string{"HISTORY_LIMIT": "0"}, []string{"HISTORY_LIMIT"}},
		{"port", map[string]string{"PORT": "http"}, []string{"PORT"}},
		{"port range", map[string]string{"PORT": "70000"}, []string{"PORT"}},
		{"duration", map[string]string{"PRESENCE_GRACE": "soon"}, []string{"PRESENCE_GRACE"}},
		{"bool", map[string]string{"RELAY_FSYNC": "maybe"}, []string{"RELAY_FSYNC"}},
		{"level", map[string]string{"LOG_LEVEL": "loud"}, []string{"LOG_LEVEL"}},
		{"flush delay", map[string]string{"LINK_FLUSH_DELAY": "-1ms"}, []string{"LINK_FLUSH_DELAY"}},
		{"reclaim quiet", map[string]string{"MEMORY_RECLAIM_QUIET": "-1s"}, []string{"MEMORY_RECLAIM_QUIET"}},
		{"inflight", map[string]string{"LINK_INFLIGHT_BYTES": "0"}, []string{"LINK_INFLIGHT_BYTES"}},
		{"reclaim bytes", map[string]string{"MEMORY_RECLAIM_MIN_BYTES": "4096"}, []string{"MEMORY_RECLAIM_MIN_BYTES"}},
		{"retention bytes", map[string]string{"RETENTION_BYTES": "-1"}, []string{"RETENTION_BYTES"}},
		{"retention age", map[string]string{"RETENTION_AGE": "-1h"}, []string{"RETENTION_AGE"}},
		{"retention age unit", map[string]string{"RETENTION_AGE": "7"}, []string{"RETENTION_AGE"}},
		{"several at once", map[string]string{"RELAY_SECRET": "", "COMPACT_BYTES": "-1"}, []string{"RELAY_SECRET", "COMPACT_BYTES"}},
		{"published secret", map[string]string{"RELAY_SECRET": "dev-secret-123"}, []string{"RELAY_SECRET is a development secret", "openssl rand", "DEV_MODE=true"}},
		{"old compose fallback", map[string]string{"RELAY_SECRET": "dev-only-insecure-secret-change-me", "DEV_MODE": "false"}, []string{"RELAY_SECRET is a development secret"}},
		{"dev mode", map[string]string{"DEV_MODE": "sometimes"}, []string{`DEV_MODE="sometimes" is not a valid bool`}},
		{"secret and file", map[string]string{"RELAY_SECRET_FILE": "/run/secrets/relay_secret"}, []string{"RELAY_SECRET and RELAY_SECRET_FILE are both set"}},
		{"missing secret file", map[string]string{"RELAY_SECRET": "", "RELAY_SECRET_FILE": "/nonexistent/relay_secret"},
			[]string{`RELAY_SECRET_FILE="/nonexistent/relay_secret": cannot open the file`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"PORT": "0", "RELAY_SECRET": secret, "DATA_DIR": t.TempDir()}
			for k, v := range tc.env {
				env[k] = v
			}
			var stderr bytes.Buffer
			err := app.Run(context.Background(), []string{"ws-relayer"}, getenv(env), io.Discard, &stderr)
			if err == nil {
				t.Fatal("Run accepted the configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(stderr.String(), "listening") {
				t.Error("listened despite the invalid configuration")
			}
		})
	}
}

func TestRunServesAndStops(t *testing.T) {
	r := run(t, nil)
	base := "http://" + r.addr
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz: %d", code)
	}
	for _, path := range []string{"/", "/nope", "/ws", "/healthz/x"} {
		if code, _ := get(t, base+path); code != 404 {
			t.Errorf("%s: %d, want 404", path, code)
		}
	}
	if code, body := get(t, base+link.Path); code != http.StatusUnauthorized || !strings.Contains(body, "RELAY_SECRET") {
		t.Fatalf("%s without secret: %d %q", link.Path, code, body)
	}

	// A whole link round trip through the real wiring.
	c := dial(t, r.addr, "gw1")
	write(t, c, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "lobby"}}},
		&link.Frame{T: link.OpPub, MID: "m1", Msg: &protocol.Message{Room: "lobby", Text: "hi"}})
	got := readFrames(t, c, 3)
	if got[0].T != link.OpSubscribed || got[1].T != link.OpMsg || got[1].Msg.Seq != 1 || got[2].T != link.OpAck {
		t.Fatalf("frames %+v", got)
	}

	code, body := get(t, base+"/metrics")
	for _, want := range []string{
		"wschat_relayer_links 1", "wschat_relayer_rooms 1", "wschat_relayer_subscriptions 1",
		"wschat_relayer_messages_in_total 1", "wschat_relayer_messages_out_total 1",
		"wschat_relayer_batch_size_bucket", "wschat_relayer_fsync_seconds_bucket",
		`wschat_relayer_link_drops_total{reason="slow"} 0`, "wschat_relayer_log_bytes",
		"wschat_relayer_presence_members 0", "wschat_relayer_dedup_total 0", "go_goroutines",
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Like a real gateway, keep reading, so the close handshake completes.
	closed := readUntilClosed(c)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := <-closed; websocket.CloseStatus(err) != websocket.StatusServiceRestart {
		t.Fatalf("link closed with %v, want 1012", err)
	}
	if !strings.Contains(r.logs.String(), `"msg":"stopped"`) {
		t.Fatalf("no stopped line:\n%s", r.logs)
	}
	if _, err := net.Dial("tcp", r.addr); err == nil {
		t.Fatal("still listening after Run returned")
	}
}

// RELAY_SECRET_FILE names a file that holds the secret (a Docker secret):
// a link presenting its content, less the newline, is accepted.
func TestSecretFromFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "relay_secret")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := run(t, map[string]string{"RELAY_SECRET": "", "RELAY_SECRET_FILE": file})
	c := dial(t, r.addr, "gw1")
	write(t, c, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "lobby"}}})
	if got := readFrames(t, c, 1); got[0].T != link.OpSubscribed {
		t.Fatalf("frames %+v", got)
	}
}

// DEV_MODE=true lets a published development secret through, and says so
// in a warning before anything else.
func TestDevModeAllowsADevSecretWithAWarning(t *testing.T) {
	r := run(t, map[string]string{"RELAY_SECRET": "dev-secret-123", "DEV_MODE": "true"})
	first, _, _ := strings.Cut(r.logs.String(), "\n")
	var rec struct {
		Level, Msg string
		InUse      bool `json:"dev_secret_in_use"`
	}
	if err := json.Unmarshal([]byte(first), &rec); err != nil || rec.Level != "WARN" || !strings.Contains(rec.Msg, "DEV_MODE=true") || !rec.InUse {
		t.Fatalf("first log line %q (%v), want a warning about DEV_MODE with the secret in use", first, err)
	}
	r.stop()
	// Without DEV_MODE no warning.
	r = run(t, nil)
	if strings.Contains(r.logs.String(), "DEV_MODE") {
		t.Fatalf("a warning about DEV_MODE without it:\n%s", r.logs)
	}
}

func TestRestartKeepsHistory(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"DATA_DIR": dir, "RELAY_FSYNC": "false"}
	r := run(t, env)
	c := dial(t, r.addr, "gw1")
	write(t, c, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{}},
		&link.Frame{T: link.OpPub, MID: "m1", Msg: &protocol.Message{Room: "lobby", Text: "one"}},
		&link.Frame{T: link.OpPub, MID: "m2", Msg: &protocol.Message{Room: "lobby", Text: "two"}})
	readFrames(t, c, 2)
	readUntilClosed(c)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	r = run(t, env)
	c = dial(t, r.addr, "gw1")
	write(t, c, &link.Frame{T: link.OpSync, Rooms: []link.RoomState{{Room: "lobby", Tail: 10}}},
		&link.Frame{T: link.OpPub, MID: "m3", Msg: &protocol.Message{Room: "lobby", Text: "three"}})
	got := readFrames(t, c, 3)
	sub, msg := got[0], got[1]
	if sub.Seq != 2 || len(sub.Msgs) != 2 || sub.Msgs[1].Text != "two" || msg.Msg.Seq != 3 {
		t.Fatalf("after restart: subscribed %+v, msg %+v", sub, msg.Msg)
	}
}

func TestHealthcheckSubcommand(t *testing.T) {
	r := run(t, nil)
	_, port, _ := net.SplitHostPort(r.addr)
	var out bytes.Buffer
	if err := app.Run(context.Background(), []string{"ws-relayer", "healthcheck"}, getenv(map[string]string{"PORT": port}), &out, io.Discard); err != nil {
		t.Fatalf("healthcheck of a running relayer: %v", err)
	}
	if strings.TrimSpace(out.String()) != "ok" {
		t.Fatalf("healthcheck printed %q", out.String())
	}
	r.stop()
	if err := app.Run(context.Background(), []string{"ws-relayer", "healthcheck"}, getenv(map[string]string{"PORT": port}), io.Discard, io.Discard); err == nil {
		t.Fatal("healthcheck of a stopped relayer succeeded")
	}
	if err := app.Run(context.Background(), []string{"ws-relayer", "frobnicate"}, getenv(nil), io.Discard, io.Discard); err == nil {
		t.Fatal("unknown sub-command accepted")
	}
}

func dial(t *testing.T, addr, inst string) *websocket.Conn {
	t.Helper()
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+secret)
	hdr.Set(link.HeaderInstance, inst)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+link.Path, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

func write(t *testing.T, c *websocket.Conn, frames ...*link.Frame) {
	t.Helper()
	var b []byte
	for _, f := range frames {
		b, _ = link.Append(b, f)
	}
	if err := c.Write(context.Background(), websocket.MessageText, b); err != nil {
		t.Fatal(err)
	}
}

func readFrames(t *testing.T, c *websocket.Conn, n int) []*link.Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out []*link.Frame
	for len(out) < n {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("after %d frames: %v", len(out), err)
		}
		link.Split(data, func(f *link.Frame) error { out = append(out, f); return nil })
	}
	return out
}

func readUntilClosed(c *websocket.Conn) <-chan error {
	errc := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				errc <- err
				return
			}
		}
	}()
	return errc
}
