//go:build unix

package natsbus_test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/natsbus"
)

// A NATS server that falls behind slows its publishers down before they
// are refused: with PendingMax publishes unanswered, Publish waits for room
// (PublishWait) and is let in once the server answers again. The wait
// running out refuses it; so does a server that stays silent past
// PublishTimeout (the cluster is taken as having no quorum): at once, when
// a publish it was sent goes unanswered, or by a Nack, when the publishes
// before it were refused unsent (which made room) — which of the two
// depends on whether the room's queue outlived the first publish.
func TestPublishWaitsForAClusterThatFellBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts nats-server")
	}
	bin := bustest.Build(t, "github.com/nats-io/nats-server/v2")
	const pendingMax = 10
	for _, c := range []struct {
		name string
		// wait is PublishWait; timeout PublishTimeout, and request
		// Timeout, twice as long.
		wait, timeout time.Duration
		then          func(*os.Process) error
		refused       bool
	}{
		{"the server catches up", time.Minute, time.Minute, func(p *os.Process) error { return p.Signal(syscall.SIGCONT) }, false},
		{"the server does not answer in time", time.Minute, 500 * time.Millisecond, func(*os.Process) error { return nil }, true},
		{"the wait runs out", 50 * time.Millisecond, time.Minute, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			url, proc := startNATSProcess(t, bin)
			var nb *natsbus.Bus
			b, rec := bustest.Start(t, bustest.Backend{New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
				cfg := config(url, instance)
				cfg.PendingMax, cfg.PublishWait, cfg.PublishTimeout = pendingMax, c.wait, c.timeout
				cfg.Timeout = min(c.timeout*2, 5*time.Second)
				nb = natsbus.New(cfg, h)
				return nb
			}}, "i1")
			bustest.Behind(t, b, rec, proc, pendingMax, nb.WaitingForRoom, c.then, c.refused)
		})
	}
}

// startNATSProcess runs bin (nats-server, JetStream on) on a port of its
// choosing until t ends, and returns its client URL and its process.
func startNATSProcess(t *testing.T, bin string) (string, *os.Process) {
	t.Helper()
	addr, proc := bustest.StartServer(t, bin, []string{"-a", "127.0.0.1", "-p", "-1", "-js", "-sd", t.TempDir()}, nil,
		func(line string) (string, bool) {
			_, a, ok := strings.Cut(line, "Listening for client connections on ")
			return a, ok
		})
	return "nats://" + addr, proc
}
