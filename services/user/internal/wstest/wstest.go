// Package wstest helps the tests of ws-user's packages talk to a server the
// way a client's socket does, without a goroutine of its own: a RawClient
// speaks just enough WebSocket over a plain socket, so that the test
// process's goroutines and stacks are the server's.
package wstest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RawClient is one client connection.
type RawClient struct {
	Conn net.Conn
	br   *bufio.Reader
}

// Dial opens a WebSocket connection to addr; early is sent with the
// handshake, in the same write. The connection is closed when t ends.
func Dial(t testing.TB, addr string, early ...string) *RawClient {
	t.Helper()
	c, err := DialConn(addr, early...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Conn.Close() })
	return c
}

// DialPath is Dial of the request path path ("/?token=…").
func DialPath(t testing.TB, addr, path string, early ...string) *RawClient {
	t.Helper()
	c, err := dial(addr, strings.Replace(Handshake, "GET / ", "GET "+path+" ", 1), early...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Conn.Close() })
	return c
}

// DialConn is Dial leaving the connection's closing to the caller.
func DialConn(addr string, early ...string) (*RawClient, error) {
	return dial(addr, Handshake, early...)
}

func dial(addr, handshake string, early ...string) (*RawClient, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &RawClient{Conn: conn, br: bufio.NewReader(conn)}
	if _, err := conn.Write(append([]byte(handshake), Frames(early...)...)); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("upgrade: %v %v", resp, err)
	}
	return c, nil
}

// Handshake is a client's WebSocket upgrade request.
const Handshake = "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// Frames encodes texts as masked client text frames (mask key zero).
func Frames(texts ...string) []byte {
	var b []byte
	for _, s := range texts {
		if len(s) < 126 {
			b = append(b, 0x81, 0x80|byte(len(s)))
		} else {
			b = append(b, 0x81, 0x80|126, byte(len(s)>>8), byte(len(s)))
		}
		b = append(b, 0, 0, 0, 0)
		b = append(b, s...)
	}
	return b
}

// Send writes texts as text frames, in one write.
func (c *RawClient) Send(t testing.TB, texts ...string) {
	t.Helper()
	if _, err := c.Conn.Write(Frames(texts...)); err != nil {
		t.Fatal(err)
	}
}

// Next returns the payload of the next server frame.
func (c *RawClient) Next(t testing.TB) string {
	t.Helper()
	_, p := c.Frame(t)
	return p
}

// Frame returns the opcode and payload of the next server frame.
func (c *RawClient) Frame(t testing.TB) (byte, string) {
	t.Helper()
	op, p, err := c.Read()
	if err != nil {
		t.Fatal(err)
	}
	return op, p
}

// Read returns the opcode and payload of the next server frame; unlike
// Frame, it may be called from any goroutine.
func (c *RawClient) Read() (byte, string, error) {
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, "", err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, "", err
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(c.br, l[:]); err != nil {
			return 0, "", err
		}
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return 0, "", err
	}
	return h[0] & 0x0f, string(p), nil
}

// Expect skips frames until one contains want.
func (c *RawClient) Expect(t testing.TB, want string) string {
	t.Helper()
	for {
		if f := c.Next(t); strings.Contains(f, want) {
			return f
		}
	}
}

// ExpectClose reads until a close frame, which must carry code.
func (c *RawClient) ExpectClose(t testing.TB, code uint16) {
	t.Helper()
	for {
		op, p := c.Frame(t)
		if op != 0x8 {
			continue
		}
		if got := binary.BigEndian.Uint16([]byte(p)); got != code {
			t.Fatalf("closed with %d %q, want %d", got, p[2:], code)
		}
		return
	}
}

// WaitUntil polls cond until it holds or ten seconds pass.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Logf("%s", Stacks())
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// GoroutinesIn counts the goroutines whose stack holds fn.
func GoroutinesIn(fn string) int { return strings.Count(Stacks(), fn) }

// Stacks returns every goroutine's stack.
func Stacks() string {
	buf := make([]byte, 1<<22)
	return string(buf[:runtime.Stack(buf, true)])
}

// CounterValue reads a counter from reg.
func CounterValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
