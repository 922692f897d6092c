// Package park keeps idle connections without a goroutine each.
//
// A goroutine waiting for its socket costs at least a 4 KiB stack and its
// descriptor, most of what an idle WebSocket connection costs. A reader
// that has seen nothing for a while parks its socket here instead and ends;
// when the socket becomes readable (or hangs up), or when Wake is called
// because the connection is closed locally, the reader's resume function
// runs on a new goroutine and carries on.
//
// The Poller has its own epoll instance, beside the Go runtime's: each
// parked socket is registered level-triggered and one-shot, so readiness
// that arrived before the registration still fires, and each registration
// fires at most once.
package park

import "errors"

// ErrUnsupported is New's error where there is no poller (not Linux):
// readers then wait on their own goroutines, as without this package.
var ErrUnsupported = errors.New("park: not supported on this platform; idle connections keep their goroutines")

// Waiter is one socket's registration with a Poller. The zero value is
// ready; it must not be copied after first use, and one goroutine at a time
// may Park it.
type Waiter struct {
	token uint64 // non-zero while parked; guarded by Poller.mu
	added bool   // the socket is in the epoll set; owned by the parking goroutine
}
