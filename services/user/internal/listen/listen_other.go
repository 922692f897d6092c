//go:build !linux

package listen

import "net"

// Elsewhere accepted sockets may not inherit the listener's options: Go sets
// keep-alive on each, and there is no deferred accept.
func listenConfig(cfg Config) *net.ListenConfig {
	if cfg.KeepAlive < 0 {
		return &net.ListenConfig{KeepAlive: -1}
	}
	return &net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: cfg.KeepAlive, Interval: cfg.KeepAlive, Count: 9}}
}
