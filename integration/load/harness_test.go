package load

// A trimmed copy of integration/system's harness: the services started
// in-process through their Run functions on loopback port 0.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	relayer "github.com/wschat/wschat/services/relayer/app"
	user "github.com/wschat/wschat/services/user/app"
)

const secret = "load-test-secret"

type runFunc func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error

type proc struct {
	Addr string
	logs *logSink
}

// logSink keeps a service's log and reports the address of its
// "listening" line.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	addrc chan string
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.buf.Len()
	s.buf.Write(p)
	sc := bufio.NewScanner(bytes.NewReader(s.buf.Bytes()[start:]))
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" && line.Addr != "" {
			select {
			case s.addrc <- line.Addr:
			default:
			}
		}
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func start(t *testing.T, name string, run runFunc, env map[string]string) *proc {
	t.Helper()
	env = withDefaults(env, map[string]string{"HOST": "127.0.0.1", "PORT": "0", "LOG_LEVEL": "info"})
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{logs: &logSink{addrc: make(chan string, 1)}}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{name}, func(k string) string { return env[k] }, io.Discard, p.logs)
	}()
	select {
	case p.Addr = <-p.logs.addrc:
	case err := <-done:
		cancel()
		t.Fatalf("%s exited before listening: %v\n%s", name, err, p.logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("%s did not listen within 10s\n%s", name, p.logs)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s returned %v", name, err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop within 20s", name)
		}
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, p.logs)
		}
	})
	return p
}

func withDefaults(env, defaults map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range defaults {
		out[k] = v
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// startCluster starts a relayer and n ws-users linked to it, ready, with
// rate limits raised for load.
func startCluster(t *testing.T, n int) []*proc {
	t.Helper()
	rl := start(t, "ws-relayer", relayer.Run, map[string]string{
		"RELAY_SECRET": secret, "DATA_DIR": t.TempDir(), "PRESENCE_GRACE": "500ms", "RELAY_FSYNC": "false",
	})
	var users []*proc
	for i := range n {
		id := "load-user-" + string(rune('a'+i))
		u := start(t, "ws-user", user.Run, map[string]string{
			"INSTANCE_ID": id, "RELAYER_URL": "ws://" + rl.Addr, "RELAY_SECRET": secret,
			"RATE_PER_SEC": "10000", "RATE_BURST": "10000",
		})
		waitFor(t, 10*time.Second, id+" ready", func() bool { return httpStatus(u.Addr, "/readyz") == http.StatusOK })
		users = append(users, u)
	}
	return users
}

func httpStatus(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}
