//go:build unix

package cork

import "syscall"

func waitReadable(rc syscall.RawConn) error {
	var b [1]byte
	return rc.Read(func(fd uintptr) bool {
		// A peek with nothing to read says EAGAIN, and RawConn.Read
		// parks until the socket is readable; anything else (a byte, end
		// of stream, an error) means the next read will not block.
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}
