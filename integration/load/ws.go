package load

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// A minimal RFC 6455 client. coder/websocket allocates per message and reads
// a frame header per syscall; a load generator that holds tens of thousands
// of connections must cost much less than the servers it measures, so this
// client reads through one bufio.Reader (many frames per syscall), hands out
// payloads that alias that buffer, and writes from a reused buffer.

const (
	opCont  = 0x0
	opText  = 0x1
	opBin   = 0x2
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// closeError is a close frame received from the server.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string { return fmt.Sprintf("websocket closed: %d %s", e.code, e.reason) }

var errProtocol = errors.New("websocket protocol violation")

type wsConn struct {
	nc       net.Conn
	br       *bufio.Reader
	maxFrame int

	// Read side, used by one goroutine at a time.
	discard int    // bytes of the last peeked payload still to discard
	big     []byte // a payload too large for br
	msg     []byte // a fragmented message being assembled
	ctl     [125]byte

	// Write side: publishers and the reader (pong, close) share the socket.
	wmu  sync.Mutex
	wbuf []byte
	rng  uint64
}

func newWSConn(nc net.Conn, br *bufio.Reader, maxFrame int) *wsConn {
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	c := &wsConn{nc: nc, br: br, maxFrame: maxFrame, wbuf: make([]byte, 0, 256), rng: binary.LittleEndian.Uint64(seed[:]) | 1}
	return c
}

type dialOptions struct {
	local     net.Addr // source address, nil for the default
	readBuf   int
	maxFrame  int
	tlsConfig *tls.Config
}

// dialWS opens a WebSocket to u (ws:// or wss://). ctx bounds the TCP dial
// and the handshake only.
func dialWS(ctx context.Context, u *url.URL, o dialOptions) (*wsConn, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "wss" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	// No keep-alive: four setsockopt calls per connection the generator
	// would pay for in a storm, for probes no run lasts long enough to send.
	d := net.Dialer{LocalAddr: o.local, KeepAlive: -1}
	if o.local != nil {
		d.Control = bindNoPort
	}
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", host, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if u.Scheme == "wss" {
		cfg := o.tlsConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", host, err)
		}
		nc = tc
	}
	c, err := handshake(nc, u, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

func handshake(nc net.Conn, u *url.URL, o dialOptions) (*wsConn, error) {
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	path := u.RequestURI()
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsload\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		return nil, fmt.Errorf("send upgrade request: %w", err)
	}
	size := o.readBuf
	if size < 512 {
		size = 512
	}
	br := bufio.NewReaderSize(nc, size)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return nil, fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	h := sha1.Sum([]byte(key + wsGUID))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(h[:]) ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		return nil, fmt.Errorf("bad upgrade response headers: %v", resp.Header)
	}
	maxFrame := o.maxFrame
	if maxFrame <= 0 {
		maxFrame = 16 << 20
	}
	return newWSConn(nc, br, maxFrame), nil
}

// readMessage returns the next text or binary message. The payload is valid
// until the next call. Pings are answered and pongs skipped here; a close
// frame is answered and returned as a *closeError.
func (c *wsConn) readMessage() (op byte, payload []byte, err error) {
	msgOp := byte(0)
	assembling := false
	for {
		fin, fop, p, err := c.readFrame()
		if err != nil {
			return 0, nil, err
		}
		switch fop {
		case opText, opBin:
			if assembling {
				return 0, nil, fmt.Errorf("%w: new message inside a fragmented one", errProtocol)
			}
			if fin {
				return fop, p, nil
			}
			msgOp, assembling = fop, true
			c.msg = append(c.msg[:0], p...)
		case opCont:
			if !assembling {
				return 0, nil, fmt.Errorf("%w: continuation without a message", errProtocol)
			}
			if len(c.msg)+len(p) > c.maxFrame {
				return 0, nil, fmt.Errorf("%w: message over %d bytes", errProtocol, c.maxFrame)
			}
			c.msg = append(c.msg, p...)
			if fin {
				return msgOp, c.msg, nil
			}
		case opPing:
			n := copy(c.ctl[:], p)
			if err := c.writeFrame(opPong, c.ctl[:n]); err != nil {
				return 0, nil, fmt.Errorf("answer ping: %w", err)
			}
		case opPong:
		case opClose:
			ce := &closeError{code: 1005}
			if len(p) >= 2 {
				ce.code = int(binary.BigEndian.Uint16(p))
				ce.reason = string(p[2:])
			}
			n := copy(c.ctl[:], p)
			_ = c.writeFrame(opClose, c.ctl[:min(n, 2)])
			return 0, nil, ce
		default:
			return 0, nil, fmt.Errorf("%w: opcode %d", errProtocol, fop)
		}
	}
}

// readFrame reads one frame. A payload that fits the read buffer aliases
// it (discarded lazily at the next call), so a typical frame costs no copy.
func (c *wsConn) readFrame() (fin bool, op byte, payload []byte, err error) {
	if c.discard > 0 {
		_, _ = c.br.Discard(c.discard)
		c.discard = 0
	}
	h, err := c.br.Peek(2)
	if err != nil {
		return false, 0, nil, err
	}
	fin, op = h[0]&0x80 != 0, h[0]&0x0F
	if h[0]&0x70 != 0 {
		return false, 0, nil, fmt.Errorf("%w: reserved bits set", errProtocol)
	}
	if h[1]&0x80 != 0 {
		return false, 0, nil, fmt.Errorf("%w: masked server frame", errProtocol)
	}
	n, hl := uint64(h[1]&0x7F), 2
	switch n {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	if hl > 2 {
		if h, err = c.br.Peek(hl); err != nil {
			return false, 0, nil, err
		}
		if hl == 4 {
			n = uint64(binary.BigEndian.Uint16(h[2:]))
		} else {
			n = binary.BigEndian.Uint64(h[2:])
		}
	}
	if op >= opClose && (n > 125 || !fin) {
		return false, 0, nil, fmt.Errorf("%w: bad control frame", errProtocol)
	}
	if n > uint64(c.maxFrame) {
		return false, 0, nil, fmt.Errorf("%w: frame of %d bytes over the %d limit", errProtocol, n, c.maxFrame)
	}
	_, _ = c.br.Discard(hl)
	size := int(n)
	if size <= c.br.Size() {
		p, err := c.br.Peek(size)
		if err != nil {
			return false, 0, nil, err
		}
		c.discard = size
		return fin, op, p, nil
	}
	if cap(c.big) < size {
		c.big = make([]byte, size)
	}
	p := c.big[:size]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return false, 0, nil, err
	}
	return fin, op, p, nil
}

// writeFrame sends one masked frame. Safe for concurrent use.
func (c *wsConn) writeFrame(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := append(c.wbuf[:0], 0x80|op)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	// xorshift: masking only has to defeat caching proxies, not attackers
	// with access to this process, and crypto/rand per frame costs a syscall.
	c.rng ^= c.rng << 13
	c.rng ^= c.rng >> 7
	c.rng ^= c.rng << 17
	key := uint32(c.rng)
	b = binary.LittleEndian.AppendUint32(b, key)
	start := len(b)
	b = append(b, payload...)
	maskBytes(b[start:], key)
	c.wbuf = b
	_, err := c.nc.Write(b)
	return err
}

// maskBytes XORs p with the 4-byte key as laid out on the wire (key is the
// little-endian reading of the 4 mask bytes).
func maskBytes(p []byte, key uint32) {
	k8 := uint64(key) | uint64(key)<<32
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k8)
	}
	for j := 0; i < len(p); i, j = i+1, j+1 {
		p[i] ^= byte(key >> (8 * (j & 3)))
	}
}

// close sends a close frame (best effort, bounded) and closes the socket.
func (c *wsConn) close(code int) {
	_ = c.nc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	_ = c.writeFrame(opClose, p[:])
	_ = c.nc.Close()
}
