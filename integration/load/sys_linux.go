package load

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindNoPort defers the choice of the local port to connect(): a socket
// bound to an explicit source address otherwise reserves a port for every
// destination at bind() time, which caps one source address at ~28,000
// connections in total instead of per destination.
func bindNoPort(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// openFilesLimit is the soft limit on descriptors, 0 when unknown.
func openFilesLimit() uint64 {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) != nil {
		return 0
	}
	return r.Cur
}
