// Package listen opens the gateway's public TCP listener with the socket
// options every client connection needs set once, on the listening socket,
// rather than by system calls per accepted connection.
//
// During a reconnect storm each connection's system calls are most of what
// it costs (a call is several microseconds in a VM). net/http's default
// listener turns keep-alive on for each accepted socket with four setsockopt
// calls; Linux copies these options from the listening socket to the
// sockets it accepts, so setting them there once is enough. And with
// TCP_DEFER_ACCEPT the kernel hands a connection over only once its first
// bytes (the HTTP upgrade request) are in, so the first read succeeds at
// once instead of failing, waiting for the poller and reading again; a
// client that connects and never speaks costs the process nothing.
package listen

import (
	"context"
	"fmt"
	"net"
	"time"
)

// Config is the listener's per-connection behaviour.
type Config struct {
	// KeepAlive is the idle time before TCP keep-alive probes start, and
	// their interval; zero means 15 s, negative disables them.
	KeepAlive time.Duration
	// DeferAccept is how long the kernel may hold a new connection that
	// has sent nothing yet before handing it over anyway; zero means 10 s,
	// negative hands every connection over at once. Only on Linux.
	DeferAccept time.Duration
}

// TCP listens on addr ("host:port").
func TCP(ctx context.Context, addr string, cfg Config) (net.Listener, error) {
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.DeferAccept == 0 {
		cfg.DeferAccept = 10 * time.Second
	}
	ln, err := listenConfig(cfg).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}
