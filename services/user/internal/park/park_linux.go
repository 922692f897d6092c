package park

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// Poller runs parked readers' resume functions when their sockets are
// readable. It is safe for concurrent use.
type Poller struct {
	epfd  int
	wakeR int // read end of a pipe in the epoll set: Close's signal
	wakeW int
	done  chan struct{}

	// ctl is held shared by each Park across its epoll_ctl, and
	// exclusively to stop: then no Park is using epfd, and none will.
	ctl     sync.RWMutex
	stopped bool // guarded by ctl
	closing sync.Once

	mu      sync.Mutex
	waiting map[uint64]func()
	next    uint64
}

// closeToken is the pipe's token; parked sockets' tokens start at 1.
const closeToken = 0

// New starts a Poller; Close stops it.
func New() (*Poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("park: epoll_create1: %w", err)
	}
	var pipe [2]int
	if err := syscall.Pipe2(pipe[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("park: pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setToken(&ev, closeToken)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pipe[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(pipe[0])
		syscall.Close(pipe[1])
		return nil, fmt.Errorf("park: epoll_ctl: %w", err)
	}
	p := &Poller{epfd: epfd, wakeR: pipe[0], wakeW: pipe[1], done: make(chan struct{}), waiting: map[uint64]func(){}}
	go p.loop()
	return p, nil
}

// The token is epoll_event's 64-bit data, which syscall.EpollEvent spells
// as two int32 fields on every Linux architecture.
func setToken(ev *syscall.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func token(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Park arranges for resume to run on a new goroutine, once, as soon as fd
// is readable, hung up or in error, or Wake(w) is called, whichever comes
// first. Call it where fd cannot be closed meanwhile (inside
// syscall.RawConn.Control). An error means nothing was arranged: the
// caller keeps reading on its own goroutine.
func (p *Poller) Park(fd uintptr, w *Waiter, resume func()) error {
	p.ctl.RLock()
	defer p.ctl.RUnlock()
	if p.stopped {
		return errStopped
	}
	p.mu.Lock()
	p.next++
	t := p.next
	p.waiting[t] = resume
	w.token = t
	p.mu.Unlock()

	op := syscall.EPOLL_CTL_MOD
	if !w.added {
		op = syscall.EPOLL_CTL_ADD
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setToken(&ev, t)
	err := syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	if err == nil {
		w.added = true
		return nil
	}
	p.mu.Lock()
	_, mine := p.waiting[t]
	if mine {
		delete(p.waiting, t)
		w.token = 0
	}
	p.mu.Unlock()
	if !mine {
		return nil // Wake took it: resume is running already
	}
	return fmt.Errorf("park: epoll_ctl: %w", err)
}

// Wake runs the resume function of w's parked reader now, on a new
// goroutine; false if w is not parked (its reader is running). Call it
// when the connection is closed locally: the kernel forgets a closed
// socket's registration without an event.
func (p *Poller) Wake(w *Waiter) bool {
	p.mu.Lock()
	resume, ok := p.waiting[w.token]
	if ok {
		delete(p.waiting, w.token)
		w.token = 0
	}
	p.mu.Unlock()
	if ok {
		go resume()
	}
	return ok
}

// Parked is how many readers are parked.
func (p *Poller) Parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

var errStopped = errors.New("park: poller stopped; the reader keeps waiting on its goroutine")

func (p *Poller) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			// Nothing is left to wait with: no more parking, and the
			// parked readers go back to waiting on their goroutines.
			p.stop()
			return
		}
		for i := range events[:n] {
			t := token(&events[i])
			if t == closeToken {
				return
			}
			p.mu.Lock()
			resume, ok := p.waiting[t]
			delete(p.waiting, t)
			p.mu.Unlock()
			if ok {
				go resume()
			}
		}
	}
}

// stop refuses further Parks, once no Park is in progress, and resumes
// every parked reader.
func (p *Poller) stop() {
	p.ctl.Lock()
	p.stopped = true
	p.ctl.Unlock()
	p.mu.Lock()
	waiting := p.waiting
	p.waiting = map[uint64]func(){}
	p.mu.Unlock()
	for _, resume := range waiting {
		go resume()
	}
}

// Close stops the poller and resumes every parked reader; Park fails from
// then on.
func (p *Poller) Close() error {
	var err error
	p.closing.Do(func() {
		p.stop()
		_, _ = syscall.Write(p.wakeW, []byte{1})
		<-p.done
		syscall.Close(p.wakeR)
		syscall.Close(p.wakeW)
		err = syscall.Close(p.epfd)
	})
	return err
}
