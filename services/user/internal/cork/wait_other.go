//go:build !unix

package cork

import "syscall"

// waitReadable does not wait where there is no non-blocking peek: the
// reader then parks inside its read, deeper but just as correct.
func waitReadable(syscall.RawConn) error { return nil }
