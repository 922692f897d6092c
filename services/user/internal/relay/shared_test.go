package relay_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/relay"
)

// The relay bus, against a real ws-relayer process (built from the
// workspace), passes the table every bus passes.
func TestRelayIsABus(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts ws-relayer")
	}
	bin := buildRelayer(t)
	start := func(t *testing.T) string {
		addr, _ := startRelayer(t, bin)
		return addr
	}
	bustest.Run(t, bustest.PerCase(start, func(addr, instance string, h bus.Handler) bus.Bus {
		return relay.New(relay.Config{
			URL: "ws://" + addr, Secret: "test-secret", Instance: instance,
			PendingMax: 100, QueueBytes: 1 << 20, MaxFrame: 1 << 20,
			PingInterval: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}, h)
	}))
}

// buildRelayer builds ws-relayer from the workspace for t.
func buildRelayer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ws-relayer")
	build := exec.Command("go", "build", "-o", bin, "github.com/wschat/wschat/services/relayer/cmd/ws-relayer")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build ws-relayer: %v\n%s", err, out)
	}
	return bin
}

// startRelayer runs bin on a port of its choosing until t ends, and
// returns the address it listens on and its process.
func startRelayer(t *testing.T, bin string) (string, *os.Process) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "PORT=0", "HOST=127.0.0.1", "RELAY_SECRET=test-secret", "DATA_DIR="+t.TempDir(),
		"HISTORY_LIMIT=100", "RELAY_FSYNC=false", "LOG_LEVEL=info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr <- line.Addr
			}
		}
	}()
	select {
	case a := <-addr:
		return a, cmd.Process
	case <-time.After(30 * time.Second):
		t.Fatal("ws-relayer did not say where it listens within 30s")
		return "", nil
	}
}
