//go:build !unix

package wsconn

import (
	"net"
	"syscall"
)

// rawConn returns nil where reads cannot be made without blocking: Conn
// then reads plainly, holding its chunk while it waits, and WaitReadable
// does not wait (the reader parks inside its read, deeper but just as
// correct).
func rawConn(net.Conn) syscall.RawConn { return nil }

func readFD(uintptr, []byte) (int, error) { return 0, syscall.EINVAL }
