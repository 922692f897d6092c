package relay_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
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
	bin := bustest.Build(t, relayerPkg)
	start := func(t *testing.T) string {
		addr, _ := startRelayer(t, bin)
		return addr
	}
	bustest.Run(t, bustest.PerCase(start, func(addr, instance string, h bus.Handler) bus.Bus {
		return relay.New(config(addr, instance), h)
	}))
}

const relayerPkg = "github.com/wschat/wschat/services/relayer/cmd/ws-relayer"

// config is the tests' relay bus of instance on the ws-relayer at addr.
func config(addr, instance string) relay.Config {
	return relay.Config{
		URL: "ws://" + addr, Secret: "test-secret", Instance: instance,
		PendingMax: 100, QueueBytes: 1 << 20, MaxFrame: 1 << 20,
		PingInterval: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// startRelayer runs ws-relayer (bin) on a port of its choosing until t
// ends, and returns the address it listens on and its process.
func startRelayer(t *testing.T, bin string) (string, *os.Process) {
	t.Helper()
	return bustest.StartServer(t, bin, nil, []string{"PORT=0", "HOST=127.0.0.1", "RELAY_SECRET=test-secret",
		"DATA_DIR=" + t.TempDir(), "HISTORY_LIMIT=100", "RELAY_FSYNC=false", "LOG_LEVEL=info"},
		func(line string) (string, bool) {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) != nil || l.Msg != "listening" {
				return "", false
			}
			return l.Addr, true
		})
}
