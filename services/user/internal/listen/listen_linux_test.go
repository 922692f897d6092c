package listen

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

func listenT(t *testing.T, cfg Config) *net.TCPListener {
	t.Helper()
	ln, err := TCP(context.Background(), "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	tl := ln.(*net.TCPListener)
	if err := tl.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return tl
}

func dialT(t *testing.T, ln net.Listener, hello string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if hello != "" {
		if _, err := c.Write([]byte(hello)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func sockopt(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func TestAcceptedConnectionsInheritKeepAlive(t *testing.T) {
	ln := listenT(t, Config{KeepAlive: 20 * time.Second})
	dialT(t, ln, "GET")
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, 20},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, 20},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveProbes},
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	} {
		if got := sockopt(t, c, o.level, o.opt); got != o.want {
			t.Errorf("accepted connection's %s = %d, want %d", o.name, got, o.want)
		}
	}
}

func TestKeepAliveOff(t *testing.T) {
	ln := listenT(t, Config{KeepAlive: -1})
	dialT(t, ln, "GET")
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := sockopt(t, c, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE); got != 0 {
		t.Errorf("SO_KEEPALIVE = %d with keep-alive off", got)
	}
}

// A connection is handed over when its first bytes are in: one that
// connected earlier but has said nothing comes after it.
func TestSilentConnectionsWaitForTheirFirstBytes(t *testing.T) {
	ln := listenT(t, Config{})
	silent := dialT(t, ln, "")
	talking := dialT(t, ln, "GET")
	first, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if first.RemoteAddr().String() != talking.LocalAddr().String() {
		t.Fatalf("accepted %s first, want the connection that sent its request (%s), not the silent one (%s)",
			first.RemoteAddr(), talking.LocalAddr(), silent.LocalAddr())
	}
	buf := make([]byte, 3)
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := first.Read(buf); err != nil || string(buf[:n]) != "GET" {
		t.Fatalf("first read: %q, %v", buf[:n], err)
	}

	if _, err := silent.Write([]byte("GET")); err != nil {
		t.Fatal(err)
	}
	second, err := ln.Accept()
	if err != nil {
		t.Fatalf("the connection that spoke late: %v", err)
	}
	defer second.Close()
	if second.RemoteAddr().String() != silent.LocalAddr().String() {
		t.Fatalf("accepted %s, want %s", second.RemoteAddr(), silent.LocalAddr())
	}
}
