package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/coder/websocket"
)

// serverFrame encodes an unmasked frame as a server sends it.
func srvFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xFFFF:
		b = append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// decodeClientFrames parses masked client frames.
func decodeClientFrames(t *testing.T, b []byte) (ops []byte, payloads [][]byte) {
	t.Helper()
	for len(b) > 0 {
		if len(b) < 2 || b[0]&0x80 == 0 || b[1]&0x80 == 0 {
			t.Fatalf("bad client frame header % x", b[:min(len(b), 2)])
		}
		n, hl := int(b[1]&0x7F), 2
		switch n {
		case 126:
			n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			n, hl = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		key := b[hl : hl+4]
		p := append([]byte(nil), b[hl+4:hl+4+n]...)
		for i := range p {
			p[i] ^= key[i%4]
		}
		ops = append(ops, b[0]&0x0F)
		payloads = append(payloads, p)
		b = b[hl+4+n:]
	}
	return ops, payloads
}

// fakeConn captures what the client writes.
type fakeConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (f *fakeConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.out.Write(p)
}
func (f *fakeConn) Close() error                       { return nil }
func (f *fakeConn) SetWriteDeadline(t time.Time) error { return nil }

func testConn(r io.Reader, bufSize int) (*wsConn, *fakeConn) {
	fc := &fakeConn{}
	return newWSConn(fc, bufio.NewReaderSize(r, bufSize), 1<<20), fc
}

func TestReadFrames(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 700) // larger than the read buffer
	var stream []byte
	stream = append(stream, srvFrame(true, opText, []byte(`{"type":"chat"}`))...)
	stream = append(stream, srvFrame(true, opPing, []byte("pp"))...)
	stream = append(stream, srvFrame(true, opText, big)...)
	stream = append(stream, srvFrame(false, opText, []byte("frag-"))...)
	stream = append(stream, srvFrame(true, opPong, nil)...)
	stream = append(stream, srvFrame(false, opCont, big[:300])...)
	stream = append(stream, srvFrame(true, opCont, []byte("-end"))...)
	stream = append(stream, srvFrame(true, opText, nil)...)
	stream = append(stream, srvFrame(true, opClose, []byte{0x03, 0xF0, 's', 'l', 'o', 'w'})...)
	want := []string{`{"type":"chat"}`, string(big), "frag-" + string(big[:300]) + "-end", ""}

	readers := map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(stream) },
		"one-byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
	}
	for name, mk := range readers {
		t.Run(name, func(t *testing.T) {
			c, fc := testConn(mk(), 512)
			for i, w := range want {
				op, p, err := c.readMessage()
				if err != nil || op != opText || string(p) != w {
					t.Fatalf("message %d: op %d, %q, %v", i, op, p[:min(len(p), 40)], err)
				}
			}
			_, _, err := c.readMessage()
			var ce *closeError
			if !errors.As(err, &ce) || ce.code != 1008 || ce.reason != "slow" {
				t.Fatalf("want close 1008 slow, got %v", err)
			}
			ops, payloads := decodeClientFrames(t, fc.out.Bytes())
			if len(ops) != 2 || ops[0] != opPong || string(payloads[0]) != "pp" || ops[1] != opClose || binary.BigEndian.Uint16(payloads[1]) != 1008 {
				t.Fatalf("client answered %v %q", ops, payloads)
			}
		})
	}
}

func TestReadFrameErrors(t *testing.T) {
	cases := map[string][]byte{
		"masked":        {0x81, 0x81, 1, 2, 3, 4, 'x'},
		"reserved bits": {0xC1, 0x00},
		"long ping":     append([]byte{0x89, 126, 0, 200}, make([]byte, 200)...),
		"too large":     {0x81, 127, 0, 0, 0, 0, 0x10, 0, 0, 0},
		"lone cont":     {0x80, 0x00},
		"bad opcode":    {0x83, 0x00},
		"truncated":     {0x81, 0x05, 'a'},
	}
	for name, in := range cases {
		c, _ := testConn(bytes.NewReader(in), 512)
		if _, _, err := c.readMessage(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWriteFrameMasks(t *testing.T) {
	c, fc := testConn(bytes.NewReader(nil), 512)
	for _, n := range []int{0, 1, 7, 8, 9, 125, 126, 1000, 70000} {
		fc.out.Reset()
		p := bytes.Repeat([]byte{'a', 'b', 'c'}, n/3+1)[:n]
		if err := c.writeFrame(opText, p); err != nil {
			t.Fatal(err)
		}
		ops, payloads := decodeClientFrames(t, fc.out.Bytes())
		if len(ops) != 1 || ops[0] != opText || !bytes.Equal(payloads[0], p) {
			t.Fatalf("n=%d: round trip failed", n)
		}
	}
}

// TestAgainstCoderWebsocket checks interoperability with the library the
// servers use: handshake, text both ways, a server ping answered.
func TestAgainstCoderWebsocket(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			done <- err
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		_, msg, err := c.Read(ctx)
		if err != nil {
			done <- err
			return
		}
		if err := c.Write(ctx, websocket.MessageText, append([]byte("echo:"), msg...)); err != nil {
			done <- err
			return
		}
		// Ping needs a concurrent reader to see the pong.
		go func() { _, _, _ = c.Read(ctx) }()
		done <- c.Ping(ctx)
	}))
	defer srv.Close()
	u, _ := url.Parse(strings.Replace(srv.URL, "http", "ws", 1) + "/ws")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialWS(ctx, u, dialOptions{readBuf: 4096, local: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close(1000)
	if err := c.writeFrame(opText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, _, err := c.readMessage(); err != nil {
				return
			}
		}
	}()
	if err := <-done; err != nil {
		t.Fatalf("server side: %v", err)
	}
}

func TestDialRefusesNonUpgrade(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	u, _ := url.Parse(strings.Replace(srv.URL, "http", "ws", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := dialWS(ctx, u, dialOptions{}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("want a refused upgrade, got %v", err)
	}
}
