//go:build unix

package relay_test

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/relay"
)

// A relayer that falls behind slows its publishers down before it refuses
// them: with the unacknowledged publishes at PendingMax and the link up,
// Publish waits for room (PublishWait) and is let in once the relayer
// catches up; a link that drops meanwhile, or the wait running out, refuses
// it.
func TestPublishWaitsForARelayerThatFellBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts ws-relayer")
	}
	bin := bustest.Build(t, relayerPkg)
	const pendingMax = 10
	for _, c := range []struct {
		name    string
		wait    time.Duration
		then    func(*os.Process) error
		refused bool
	}{
		{"the relayer catches up", time.Minute, func(p *os.Process) error { return p.Signal(syscall.SIGCONT) }, false},
		{"the link drops", time.Minute, func(p *os.Process) error { return p.Kill() }, true},
		{"the wait runs out", 50 * time.Millisecond, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, proc := startRelayer(t, bin)
			var rb *relay.Bus
			b, rec := bustest.Start(t, bustest.Backend{New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
				cfg := config(addr, instance)
				// A stopped relayer answers no ping: the link must
				// outlive the test's stop.
				cfg.PendingMax, cfg.PublishWait, cfg.PingInterval = pendingMax, c.wait, time.Minute
				rb = relay.New(cfg, h)
				return rb
			}}, "i1")
			bustest.Behind(t, b, rec, proc, pendingMax, rb.WaitingForRoom, c.then, c.refused)
		})
	}
}
