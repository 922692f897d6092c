package relay_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
	"github.com/wschat/wschat/services/user/internal/relay"
)

// A relayer that falls behind slows its publishers down before it refuses
// them: with the unacknowledged publishes at PendingMax and the link up,
// Publish waits for room (PublishWait) and is let in once the relayer
// catches up; a link that drops meanwhile, or the wait running out, refuses
// it. The relayer falls behind for real: its process is stopped (SIGSTOP),
// the link's TCP connection stays up.
func TestPublishWaitsForARelayerThatFellBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts ws-relayer")
	}
	bin := buildRelayer(t)
	const pendingMax = 10
	for _, c := range []struct {
		name string
		wait time.Duration
		// then acts on the stopped relayer once the publish is under way.
		then func(*os.Process) error
		want error
	}{
		{"the relayer catches up", time.Minute, func(p *os.Process) error { return p.Signal(syscall.SIGCONT) }, nil},
		{"the link drops", time.Minute, func(p *os.Process) error { return p.Kill() }, bus.ErrUnavailable},
		{"the wait runs out", 50 * time.Millisecond, func(*os.Process) error { return nil }, bus.ErrUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, proc := startRelayer(t, bin)
			b, rec := bustest.Start(t, bustest.Backend{New: func(_ *testing.T, instance string, h bus.Handler) bus.Bus {
				return relay.New(relay.Config{
					URL: "ws://" + addr, Secret: "test-secret", Instance: instance,
					PendingMax: pendingMax, QueueBytes: 1 << 20, PublishWait: c.wait, MaxFrame: 1 << 20,
					PingInterval: time.Minute, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				}, h)
			}}, "i1")
			bustest.Publish(t, b, rec, "r", 1)

			stop(t, proc)
			t.Cleanup(func() { _ = proc.Signal(syscall.SIGCONT) })
			msg := func(i int) protocol.Message {
				return protocol.Message{Room: "r", ID: fmt.Sprint("w", i), From: "alice", UID: "u1", Text: fmt.Sprint("text ", i)}
			}
			for i := range pendingMax {
				if err := b.Publish(fmt.Sprint("w-", i), "", msg(i)); err != nil {
					t.Fatalf("publish %d of %d: %v", i+1, pendingMax, err)
				}
			}
			published := make(chan error, 1)
			go func() { published <- b.Publish("w-last", "", msg(pendingMax)) }()
			if err := c.then(proc); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-published:
				if !errors.Is(err, c.want) {
					t.Fatalf("the publish past PendingMax: %v, want %v", err, c.want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the publish past PendingMax still waits after 30s")
			}
			if c.want != nil {
				return
			}
			// Every publish, the one that waited last, is acknowledged.
			acked := map[string]bool{}
			for len(acked) < pendingMax+1 {
				acked[bustest.Next[bustest.Ack](t, rec).MID] = true
			}
			if !acked["w-last"] {
				t.Fatalf("acknowledged %v, not the publish that waited", acked)
			}
		})
	}
}

// stop stops p, a child of the test, and returns once all its threads have
// stopped. kill(2) returns as soon as SIGSTOP is queued, and until one of
// p's threads takes it the others run on: a "stopped" relayer could still
// acknowledge the publishes sent next. The parent is told (wait4 with
// WUNTRACED) only when the whole thread group has stopped.
func stop(t *testing.T, p *os.Process) {
	t.Helper()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(p.Pid, &ws, syscall.WUNTRACED, nil); err != nil {
		t.Fatalf("wait for ws-relayer to stop: %v", err)
	}
	if !ws.Stopped() {
		t.Fatalf("ws-relayer did not stop: wait status %#x", ws)
	}
}
