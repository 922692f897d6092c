package listen

import (
	"fmt"
	"net"
	"syscall"
	"time"
)

// keepAliveProbes is how many unanswered probes end a connection (Go's own
// default for the connections it configures).
const keepAliveProbes = 9

func listenConfig(cfg Config) *net.ListenConfig {
	return &net.ListenConfig{
		KeepAlive: -1, // no per-connection setsockopt: inherited, see Control
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = setListenerOptions(int(fd), cfg) })
			if err != nil {
				return err
			}
			return serr
		},
	}
}

func setListenerOptions(fd int, cfg Config) error {
	set := func(level, opt, v int, name string) error {
		if err := syscall.SetsockoptInt(fd, level, opt, v); err != nil {
			return fmt.Errorf("set %s on the listening socket: %w", name, err)
		}
		return nil
	}
	if cfg.DeferAccept > 0 {
		if err := set(syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, seconds(cfg.DeferAccept), "TCP_DEFER_ACCEPT"); err != nil {
			return err
		}
	}
	if cfg.KeepAlive < 0 {
		return nil
	}
	s := seconds(cfg.KeepAlive)
	if err := set(syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1, "SO_KEEPALIVE"); err != nil {
		return err
	}
	if err := set(syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, s, "TCP_KEEPIDLE"); err != nil {
		return err
	}
	if err := set(syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, s, "TCP_KEEPINTVL"); err != nil {
		return err
	}
	return set(syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveProbes, "TCP_KEEPCNT")
}

// seconds rounds d up to whole seconds, at least one.
func seconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
