package park

import (
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func park(t *testing.T, p *Poller, c net.Conn, w *Waiter, resume func()) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var perr error
	if err := rc.Control(func(fd uintptr) { perr = p.Park(fd, w, resume) }); err != nil {
		t.Fatal(err)
	}
	if perr != nil {
		t.Fatal(perr)
	}
}

// resumed returns a resume function and a channel that receives once per
// call of it.
func resumed() (func(), chan struct{}) {
	ch := make(chan struct{}, 8)
	return func() { ch <- struct{}{} }, ch
}

func await(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: resume did not run", what)
	}
}

func TestReadableSocketResumesItsReader(t *testing.T) {
	p := newPoller(t)
	server, client := pair(t)
	var w Waiter
	resume, ch := resumed()
	park(t, p, server, &w, resume)
	if p.Parked() != 1 {
		t.Fatalf("parked %d, want 1", p.Parked())
	}
	client.Write([]byte("x"))
	await(t, ch, "bytes arrived")
	if p.Parked() != 0 {
		t.Fatalf("parked %d after resuming, want 0", p.Parked())
	}

	// Parked again with the byte still unread: level-triggered, so the
	// readiness that is already there fires at once.
	park(t, p, server, &w, resume)
	await(t, ch, "bytes already there")
	buf := make([]byte, 1)
	server.Read(buf)

	// And a hang-up resumes it too.
	park(t, p, server, &w, resume)
	client.Close()
	await(t, ch, "peer closed")
}

func TestWakeResumesOnceAndLateEventsAreIgnored(t *testing.T) {
	p := newPoller(t)
	server, client := pair(t)
	var w Waiter
	var calls atomic.Int32
	ch := make(chan struct{}, 8)
	resume := func() { calls.Add(1); ch <- struct{}{} }
	park(t, p, server, &w, resume)
	if !p.Wake(&w) {
		t.Fatal("Wake found nothing parked")
	}
	await(t, ch, "woken")
	if p.Wake(&w) {
		t.Fatal("second Wake resumed again")
	}
	// The registration is still armed; its event must not resume a
	// reader that is already running.
	client.Write([]byte("x"))
	other, otherClient := pair(t)
	var w2 Waiter
	resume2, ch2 := resumed()
	park(t, p, other, &w2, resume2)
	otherClient.Write([]byte("y"))
	await(t, ch2, "the other socket") // the poller has handled later events
	if n := calls.Load(); n != 1 {
		t.Fatalf("resume ran %d times, want 1", n)
	}
}

func TestCloseWakesEveryParkedReader(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	resume, ch := resumed()
	const n = 5
	ws := make([]Waiter, n)
	for i := range n {
		server, _ := pair(t)
		park(t, p, server, &ws[i], resume)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for range n {
		await(t, ch, "poller closed")
	}
	server, _ := pair(t)
	rc, _ := server.(syscall.Conn).SyscallConn()
	var perr error
	rc.Control(func(fd uintptr) { perr = p.Park(fd, new(Waiter), resume) })
	if perr == nil {
		t.Fatal("Park after Close succeeded")
	}
}

// Parks racing Close: each either fails or is resumed, exactly once.
func TestParkRacingClose(t *testing.T) {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	servers := make([]net.Conn, n)
	for i := range servers {
		servers[i], _ = pair(t)
	}
	var resumed, failed atomic.Int32
	done := make(chan struct{}, 2*n)
	start := make(chan struct{})
	for i := range n {
		go func() {
			<-start
			rc, _ := servers[i].(syscall.Conn).SyscallConn()
			var perr error
			rc.Control(func(fd uintptr) {
				perr = p.Park(fd, new(Waiter), func() { resumed.Add(1); done <- struct{}{} })
			})
			if perr != nil {
				failed.Add(1)
				done <- struct{}{}
			}
		}()
	}
	close(start)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for range n {
		await(t, done, "a park racing Close")
	}
	if r, f := resumed.Load(), failed.Load(); r+f != n {
		t.Fatalf("%d resumed and %d failed of %d", r, f, n)
	}
	select {
	case <-done:
		t.Fatal("a reader resumed twice, or resumed after its Park failed")
	default:
	}
}
