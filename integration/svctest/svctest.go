// Package svctest starts wschat's services inside a test process, through
// their Run functions, on loopback port 0, and stops them when the test
// ends. The system tests and the load generator's smoke test share it.
package svctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"sync"
	"testing"
	"time"

	relayer "github.com/wschat/wschat/services/relayer/app"
	user "github.com/wschat/wschat/services/user/app"
)

// Secret is the relay secret of the services started here.
const Secret = "svctest-relay-secret"

// RunFunc is the signature of both services' Run.
type RunFunc func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error

// Service is one service started in-process.
type Service struct {
	t      testing.TB
	Addr   string // host:port it listens on
	once   sync.Once
	cancel context.CancelFunc
	done   chan error
	logs   *logSink
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

// Start runs a service with env (on top of HOST=127.0.0.1, PORT=0,
// LOG_LEVEL=debug) until the test ends, and returns once it listens. A
// failed test gets the service's log.
func Start(t testing.TB, name string, run RunFunc, env map[string]string) *Service {
	t.Helper()
	env = WithDefaults(env, map[string]string{"HOST": "127.0.0.1", "PORT": "0", "LOG_LEVEL": "debug"})
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{t: t, cancel: cancel, done: make(chan error, 1), logs: &logSink{addrc: make(chan string, 1)}}
	go func() {
		s.done <- run(ctx, []string{name}, func(k string) string { return env[k] }, io.Discard, s.logs)
	}()
	select {
	case s.Addr = <-s.logs.addrc:
	case err := <-s.done:
		cancel()
		t.Fatalf("%s exited before listening: %v\n%s", name, err, s.logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("%s did not listen within 10s\n%s", name, s.logs)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("--- %s log ---\n%s", name, s.logs)
		}
	})
	return s
}

// Log returns what the service has logged so far.
func (s *Service) Log() string { return s.logs.String() }

// Stop cancels the service and waits for Run to return; later calls do
// nothing.
func (s *Service) Stop() {
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("service returned %v", err)
			}
		case <-time.After(20 * time.Second):
			s.t.Errorf("service did not stop within 20s")
		}
	})
}

// WithDefaults returns env on top of defaults.
func WithDefaults(env, defaults map[string]string) map[string]string {
	out := maps.Clone(defaults)
	maps.Copy(out, env)
	return out
}

// StartRelayer starts a relayer with a fresh data directory and a short
// presence grace, unless env says otherwise.
func StartRelayer(t testing.TB, env map[string]string) *Service {
	t.Helper()
	env = WithDefaults(env, map[string]string{"RELAY_SECRET": Secret, "DATA_DIR": t.TempDir(), "PRESENCE_GRACE": "500ms"})
	return Start(t, "ws-relayer", relayer.Run, env)
}

// StartUser starts a ws-user named id whose relayer is at relayerAddr
// ("" for standalone; it may be a proxy in front of the relayer), and
// returns once it is ready.
func StartUser(t testing.TB, id, relayerAddr string, env map[string]string) *Service {
	t.Helper()
	def := map[string]string{"INSTANCE_ID": id, "RELAY_PING_INTERVAL": "1s", "RELAY_RECONNECT_MAX": "500ms"}
	if relayerAddr != "" {
		def["RELAYER_URL"] = "ws://" + relayerAddr
		def["RELAY_SECRET"] = Secret
	}
	u := Start(t, "ws-user", user.Run, WithDefaults(env, def))
	WaitFor(t, 10*time.Second, id+" ready", func() bool { return HTTPStatus(u.Addr, "/readyz") == http.StatusOK })
	return u
}

// HTTPStatus returns the status of GET http://addr/path, or 0.
func HTTPStatus(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// WaitFor polls cond until it holds, failing the test after within.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}
