//go:build unix

package bustest

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

// Behind checks that bb, running on a backend whose server is proc (a
// child of the test), slows a publisher down before it refuses it. The
// server falls behind for real: its process is stopped (SIGSTOP), its
// connections stay up. pendingMax publishes are then taken at once and
// left unanswered; one more Publish must wait (waiting reports that it
// does, under the bus's lock) until then, acting on the stopped process,
// decides; with then nil, until its wait runs out. With refused false, it is let in and every
// publish, the one that waited included, is acknowledged. With refused
// true, it is refused as unavailable: by Publish, or once let in (room
// made by the refusal of those before it, which had not reached the
// server) by a Nack.
func Behind(t *testing.T, bb bus.Bus, rec *Recorder, proc *os.Process, pendingMax int, waiting func() bool, then func(*os.Process) error, refused bool) {
	t.Helper()
	Publish(t, bb, rec, "r", 1)
	Stop(t, proc)
	t.Cleanup(func() { _ = proc.Signal(syscall.SIGCONT) })
	msg := func(i int) protocol.Message {
		return protocol.Message{Room: "r", ID: fmt.Sprint("w", i), From: "alice", UID: "u1", Text: fmt.Sprint("text ", i)}
	}
	for i := range pendingMax {
		if err := bb.Publish(fmt.Sprint("w-", i), "", msg(i)); err != nil {
			t.Fatalf("publish %d of %d: %v", i+1, pendingMax, err)
		}
	}
	published := make(chan error, 1)
	go func() { published <- bb.Publish("w-last", "", msg(pendingMax)) }()
	if then != nil {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(10 * time.Second); !waiting(); <-tick.C {
			if time.Now().After(deadline) {
				t.Fatal("the publish past the bound does not wait for room after 10s")
			}
		}
		if err := then(proc); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	select {
	case err = <-published:
	case <-time.After(30 * time.Second):
		t.Fatal("the publish past the bound still waits after 30s")
	}
	switch {
	case refused && errors.Is(err, bus.ErrUnavailable):
		return
	case refused && err == nil:
		for {
			if n := Next[Nack](t, rec); n.MID == "w-last" {
				if n.Err.Code != protocol.CodeUnavailable {
					t.Fatalf("the publish past the bound, let in, refused with %v, want code %s", n.Err, protocol.CodeUnavailable)
				}
				return
			}
		}
	case refused:
		t.Fatalf("the publish past the bound: %v, want %v", err, bus.ErrUnavailable)
	case err != nil:
		t.Fatalf("the publish past the bound: %v, want it let in", err)
	}
	acked := map[string]bool{}
	for len(acked) < pendingMax+1 {
		acked[Next[Ack](t, rec).MID] = true
	}
	if !acked["w-last"] {
		t.Fatalf("acknowledged %v, not the publish that waited", acked)
	}
}

// Stop stops p, a child of the test, and returns once all its threads have
// stopped. kill(2) returns as soon as SIGSTOP is queued, and until one of
// p's threads takes it the others run on: a "stopped" server could still
// answer the publishes sent next. The parent is told (wait4 with
// WUNTRACED) only when the whole thread group has stopped.
func Stop(t *testing.T, p *os.Process) {
	t.Helper()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(p.Pid, &ws, syscall.WUNTRACED, nil); err != nil {
		t.Fatalf("wait for process %d to stop: %v", p.Pid, err)
	}
	if !ws.Stopped() {
		t.Fatalf("process %d did not stop: wait status %#x", p.Pid, ws)
	}
}
