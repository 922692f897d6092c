// Package wsconn is the net.Conn that net/http hijacks for a
// github.com/coder/websocket server connection. It does four jobs:
//
//   - Batches writes. coder/websocket flushes every message with a write
//     call of its own. The server frames its text messages itself with
//     Conn.AppendText (a header and the unmasked payload); between Hold and
//     Release they are gathered, and Release sends them in one write.
//     coder/websocket's own frames (pong, close) reach Conn.Write, which
//     sends them at once, behind what was gathered before them, and after a
//     close frame AppendText refuses with ErrCloseSent.
//   - Keeps an idle connection small. ResponseWriter.Hijack hands out a Conn
//     that borrows a read chunk from a Pool only while it has unread bytes,
//     a 16-byte bufio.Reader and a 128-byte bufio.Writer, where net/http's
//     Hijack gives 4 KiB each for the connection's whole life.
//   - Lets an idle reader park. A reader waiting inside coder/websocket's
//     Read keeps all the stack it grew (the GC shrinks only mostly unused
//     stacks, and that read path is deep). Conn.WaitReadable waits for the
//     socket first, with a shallow stack; Conn.Pending asks without waiting;
//     a reader idle for a while hands its wait to a park.Poller with
//     Conn.Park and ends, leaving the connection no goroutine until its next
//     bytes or its Close. Conn.EndWaits ends all that before anyone else
//     reads.
//   - Bounds a frame's arrival. With ResponseWriter.FrameTimeout, a client's
//     message, once started, must arrive whole within it, or Read fails with
//     ErrFrameTimeout; between messages a client may be silent at will.
//
// It relies on these behaviours of coder/websocket (the version in go.mod);
// the test named after each, in coderws_test.go, fails if an upgrade
// changes it:
//
//   - Accept hijacks through the ResponseWriter it is given and reads,
//     writes and closes the Conn that Hijack returned
//     (TestCoderWebsocketAcceptHijacksThroughResponseWriter; its CloseNow
//     closes the Conn, which wakes a parked reader:
//     TestCoderWebsocketCloseNowClosesHijackedConn).
//   - It writes through the bufio.Writer Hijack returned, not a buffer of
//     its own (TestCoderWebsocketWritesThroughHijackedWriteBuffer), and
//     flushes it after each control frame, so each (127 bytes at most)
//     reaches Conn.Write whole and alone
//     (TestCoderWebsocketWritesEachPongWholeInOneWrite).
//   - Its close frames, its own and the echo of a client's, start with the
//     byte 0x88, which is how Write recognises them
//     (TestCoderWebsocketWritesEachCloseFrameWholeInOneWrite).
//   - It reads through the bufio.Reader Hijack returned, whose buffer is
//     what WaitReadable, Pending and Park look at
//     (TestCoderWebsocketReadsThroughHijackedReader), and only inside Read
//     (or Close's handshake), so that the Conn's reader may wait for the
//     socket between messages (TestCoderWebsocketReadsOnlyInsideRead).
//   - Its Read returns the Conn's read error wrapped, so that errors.Is
//     finds ErrFrameTimeout (TestCoderWebsocketReadWrapsFrameTimeout).
//   - Its client (as any client should) reads AppendText's frames as the
//     text messages they carry, in order with the control frames written
//     between them (TestAppendTextSpeaksWebSocket,
//     TestCoderWebsocketClientReadsHeldTextFramesInOrderWithPongs).
//
// Hence two rules for the server. It writes its messages only with
// AppendText, never with coder/websocket's Write or Writer: a data frame
// larger than the write buffer reaches Write in pieces, those after the
// first starting with payload bytes, perhaps 0x88; and a streamed one leaves
// part of a frame in the buffer ahead of the next control frame. And it calls EndWaits before
// coder/websocket's Close, whose handshake reads the connection besides
// the reader.
package wsconn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wschat/wschat/services/user/internal/park"
)

// Sizes of the buffers a hijacked connection gets.
const (
	// readChunk is what one read call of the socket may return: a burst
	// of client frames. The chunk is pooled and held only until read.
	readChunk = 4096
	// readerBuffer is the bufio.Reader's own buffer, the smallest there
	// is: reads are served from the Conn's chunk.
	readerBuffer = 16
	// writeBuffer is what coder/websocket gets for its control frames. It
	// holds the largest one (2 header bytes, 125 payload bytes), and
	// coder/websocket flushes it after each, so each reaches Write whole
	// and alone, which is how Write recognises a close frame.
	writeBuffer = 128
	// flushAt bounds what a held Conn gathers before it writes anyway.
	flushAt = 64 << 10
	// pooledCap is the size of the gathering buffers kept for reuse.
	pooledCap = 16 << 10
)

// Pool hands out gathering buffers and read chunks; a Conn holds a
// gathering buffer only while it has frames gathered and not yet sent, and
// a read chunk only while it has unread bytes, so an idle connection holds
// none. The zero Pool is ready to use.
type Pool struct{ p, r sync.Pool }

func (p *Pool) getChunk() *[]byte {
	if b, ok := p.r.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, readChunk)
	return &b
}

func (p *Pool) putChunk(b *[]byte) { p.r.Put(b) }

func (p *Pool) get() *[]byte {
	if b, ok := p.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, pooledCap)
	return &b
}

func (p *Pool) put(b *[]byte) {
	if cap(*b) > flushAt*2 {
		return // grown by an oversized frame; let it go
	}
	*b = (*b)[:0]
	p.p.Put(b)
}

// Conn is a net.Conn whose text frames can be held back and sent together.
// Writes are safe for concurrent use and sent in the order they were made;
// reads serve one reader at a time (coder/websocket takes care of that).
type Conn struct {
	net.Conn
	pool *Pool

	mu        sync.Mutex    // serialises writes to the underlying conn
	written   atomic.Uint64 // bytes of gathered frames sent (see Written)
	held      bool
	closeSent bool    // a close frame went out: no data frame may follow
	buf       *[]byte // nil unless held and written to

	// Read side. With raw access to the socket (rc), it is read only in
	// readSocket, under the RawConn's read lock, and a chunk is taken from
	// the pool only for a read that returns bytes: a reader waiting for
	// data holds none. rmu guards what follows; br only until EndWaits.
	rc         syscall.RawConn // nil: plain blocking reads of Conn
	readSocket func(fd uintptr) bool
	rmu        sync.Mutex
	chunk      *[]byte       // pooled; holds pend
	pend       []byte        // read from the socket, not yet by the caller
	rerr       error         // returned once pend is consumed
	br         *bufio.Reader // what coder/websocket reads from; nil: WaitReadable cannot tell
	rdone      bool          // no more waits: someone else may be reading
	deadline   bool          // WaitReadable set a read deadline
	poller     *park.Poller  // where the reader last parked, if anywhere
	waiter     park.Waiter
	// frameTimeout bounds how long a message may take to arrive once its
	// first byte has (0: no bound); frames follows what Read served, and
	// frameArmed is set while Read's deadline for a started message is.
	frameTimeout time.Duration
	frames       frameTracker
	frameArmed   bool
	stopped      bool // StopReading: reads fail once pend is served
}

// ErrStopped is the read error of a Conn after StopReading.
var ErrStopped = errors.New("reading stopped: the connection is being closed")

// StopReading makes reads fail with ErrStopped from now on, once what was
// read from the socket already is served. A close handshake with a peer
// that floods then ends at once, where coder/websocket's would read (and
// drop) all the peer sends for up to 5 s waiting for its close frame.
func (c *Conn) StopReading() {
	c.rmu.Lock()
	c.stopped = true
	c.rmu.Unlock()
}

// ErrFrameTimeout is the read error of a connection whose message, once
// started, did not arrive whole within the Conn's frame timeout (see
// ResponseWriter.FrameTimeout). The read deadline stays in the past, so
// that a close handshake does not wait for such a peer either.
var ErrFrameTimeout = errors.New("a WebSocket message did not arrive whole within the frame read timeout")

// Read serves what an earlier read of the socket left, else reads the
// socket.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	empty := len(c.pend) == 0 && c.rerr == nil
	if empty && c.stopped {
		c.rmu.Unlock()
		return 0, ErrStopped
	}
	if empty && c.frameTimeout > 0 && !c.frameArmed && c.frames.started() {
		// The socket is read in the middle of a message (the reader
		// waits between messages in WaitReadable, or here after a
		// control frame, with nothing started): the rest has
		// frameTimeout to come. Set only now, so that a message that
		// arrived whole, the usual case, costs no deadline.
		c.frameArmed = true
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.frameTimeout))
	}
	armed := c.frameArmed
	c.rmu.Unlock()
	if empty {
		c.fill(armed)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	n := copy(p, c.pend)
	if c.frameTimeout > 0 {
		c.frames.feed(p[:n])
		if c.frameArmed && !c.frames.started() {
			c.frameArmed = false
			_ = c.Conn.SetReadDeadline(time.Time{})
		}
	}
	c.pend = c.pend[n:]
	if len(c.pend) > 0 {
		return n, nil
	}
	if c.chunk != nil {
		c.pool.putChunk(c.chunk)
		c.chunk = nil
	}
	c.pend = nil
	err := c.rerr
	c.rerr = nil
	return n, err
}

// fill reads the socket into pend, or its error into rerr, waiting while
// there is nothing to read; armed: a started message's deadline is set,
// and its expiry is ErrFrameTimeout.
func (c *Conn) fill(armed bool) {
	if c.rc == nil {
		chunk := c.pool.getChunk()
		n, err := c.Conn.Read(*chunk)
		c.rmu.Lock()
		c.keepLocked(chunk, n, frameErr(err, armed))
		c.rmu.Unlock()
		return
	}
	if err := c.rc.Read(c.readSocket); err != nil {
		c.rmu.Lock()
		c.failLocked(frameErr(err, armed))
		c.rmu.Unlock()
	}
}

func frameErr(err error, armed bool) error {
	if armed && errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrFrameTimeout
	}
	return err
}

// frameTracker follows the WebSocket frames in the bytes a Conn serves, so
// that a read can tell a connection between messages, which may wait as
// long as the client likes, from one whose message has started. A few
// comparisons per header byte; a payload is skipped in one step.
type frameTracker struct {
	pos     int8   // header bytes seen of the current frame; 0 between frames
	extEnd  int8   // where the header's extended length ends
	hlen    int8   // the header's length, known from its second byte
	fin     bool   // the current frame ends its message
	data    bool   // the current frame is text, binary or a continuation
	inMsg   bool   // a fragmented data message awaits its continuations
	length  uint64 // payload length, over the extended length bytes
	payload uint64 // payload bytes still due
}

// started: a frame, or a fragmented message, has begun and not ended.
func (t *frameTracker) started() bool { return t.pos > 0 || t.payload > 0 || t.inMsg }

func (t *frameTracker) feed(p []byte) {
	for len(p) > 0 {
		if t.payload > 0 {
			n := min(uint64(len(p)), t.payload)
			t.payload -= n
			p = p[n:]
			if t.payload == 0 {
				t.frameEnd()
			}
			continue
		}
		b := p[0]
		p = p[1:]
		switch {
		case t.pos == 0:
			t.fin, t.data = b&0x80 != 0, b&0x08 == 0
		case t.pos == 1:
			t.length, t.extEnd = uint64(b&0x7f), 2
			switch t.length {
			case 126:
				t.length, t.extEnd = 0, 4
			case 127:
				t.length, t.extEnd = 0, 10
			}
			t.hlen = t.extEnd
			if b&0x80 != 0 {
				t.hlen += 4 // the mask key
			}
		case t.pos < t.extEnd:
			t.length = t.length<<8 | uint64(b)
		}
		t.pos++
		if t.pos > 1 && t.pos == t.hlen {
			t.pos, t.payload = 0, t.length
			if t.payload == 0 {
				t.frameEnd()
			}
		}
	}
}

// frameEnd: control frames may come between a message's fragments.
func (t *frameTracker) frameEnd() {
	if t.data {
		t.inMsg = !t.fin
	}
}

// failLocked keeps err for the next Read unless bytes or an error are
// waiting already (the other reader's, see EndWaits).
func (c *Conn) failLocked(err error) {
	if len(c.pend) == 0 && c.rerr == nil {
		c.rerr = err
	}
}

// readOnce is readSocket: one non-blocking read of fd into a pooled chunk;
// false (and the chunk back in the pool) when there is nothing to read, so
// that RawConn.Read waits for the socket.
func (c *Conn) readOnce(fd uintptr) bool {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.readOnceLocked(fd)
}

func (c *Conn) readOnceLocked(fd uintptr) bool {
	if len(c.pend) > 0 || c.rerr != nil {
		return true // filled by the other reader (see EndWaits)
	}
	chunk := c.pool.getChunk()
	n, err := readFD(fd, *chunk)
	if err == syscall.EAGAIN {
		c.pool.putChunk(chunk)
		return false
	}
	if err != nil {
		err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	} else if n == 0 {
		err = io.EOF
	}
	c.keepLocked(chunk, n, err)
	return true
}

func (c *Conn) keepLocked(chunk *[]byte, n int, err error) {
	if n > 0 {
		c.chunk, c.pend = chunk, (*chunk)[:n]
	} else {
		c.pool.putChunk(chunk)
	}
	c.rerr = err
}

// ErrCloseSent is returned by AppendText after a close frame was written.
var ErrCloseSent = errors.New("websocket close frame already sent; no more messages can be written")

const (
	finText  = 0x81 // FIN + text opcode
	finClose = 0x88 // FIN + close opcode
)

// NewConn wraps c; pool provides the gathering buffers and read chunks.
func NewConn(c net.Conn, pool *Pool) *Conn {
	cc := &Conn{Conn: c, pool: pool, rc: rawConn(c)}
	cc.readSocket = cc.readOnce
	return cc
}

// Hold makes AppendText gather frames in memory until Release.
func (c *Conn) Hold() {
	c.mu.Lock()
	c.held = true
	c.mu.Unlock()
}

// Release writes what was gathered since Hold in one call and makes
// AppendText write at once again.
func (c *Conn) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held = false
	return c.sendLocked()
}

// Write is how coder/websocket's own frames (pong, close) reach the
// connection, each whole and alone (see the package doc); one that starts
// with 0x88 is a close frame, after which AppendText refuses. They are
// never held back: coder/websocket may close the socket right after
// writing a close frame, so the frame, and whatever was gathered before
// it, must be on the wire when Write returns.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > 0 && p[0] == finClose {
		c.closeSent = true
	}
	if c.buf == nil {
		return c.Conn.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	if err := c.sendLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// AppendText writes p as one WebSocket text message in a single unmasked
// frame: gathered while the Conn is held, at once otherwise.
func (c *Conn) AppendText(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeSent {
		return ErrCloseSent
	}
	if c.buf == nil {
		c.buf = c.pool.get()
	}
	*c.buf = appendHeader(*c.buf, finText, len(p))
	*c.buf = append(*c.buf, p...)
	if !c.held || len(*c.buf) >= flushAt {
		return c.sendLocked()
	}
	return nil
}

func appendHeader(b []byte, first byte, n int) []byte {
	switch {
	case n <= 125:
		return append(b, first, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, first, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, first, 127), uint64(n))
	}
}

func (c *Conn) sendLocked() error {
	if c.buf == nil {
		return nil
	}
	b := c.buf
	c.buf = nil
	var err error
	// In chunks, so that a large batch to a slow reader shows progress
	// (Written) as it goes; a batch of up to writeChunk bytes is one Write.
	for p := *b; len(p) > 0 && err == nil; {
		n := min(len(p), writeChunk)
		if _, err = c.Conn.Write(p[:n]); err == nil {
			c.written.Add(uint64(n))
		}
		p = p[n:]
	}
	c.pool.put(b)
	if err != nil {
		return fmt.Errorf("write gathered frames: %w", err)
	}
	return nil
}

// writeChunk is the most of a batch one Write sends.
const writeChunk = 64 << 10

// Written counts the bytes of gathered frames sent so far: a writer whose
// count stops moving is stuck on a peer that does not read.
func (c *Conn) Written() uint64 { return c.written.Load() }

// ResponseWriter wraps an http.ResponseWriter so that Hijack returns a
// *Conn with small buffers. Conn is set by a successful Hijack.
type ResponseWriter struct {
	http.ResponseWriter
	Pool *Pool
	// FrameTimeout, when positive, bounds how long a client's message
	// may take to arrive once its first byte has: past it, the Conn's
	// Read fails with ErrFrameTimeout. Between messages it does not count.
	FrameTimeout time.Duration
	Conn         *Conn
}

// Unwrap lets http.ResponseController reach the wrapped writer.
func (w *ResponseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack takes over the connection like http.Hijacker, keeping any bytes
// net/http had already read from it: it returns a *Conn (also set as
// w.Conn) with a readerBuffer-byte bufio.Reader over it and a
// writeBuffer-byte bufio.Writer.
func (w *ResponseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("hijack: %w", err)
	}
	c := NewConn(nc, w.Pool)
	c.frameTimeout = w.FrameTimeout
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes that came with the handshake are read first; the Conn
		// holds them, where WaitReadable sees them.
		early, _ := brw.Reader.Peek(n)
		c.pend = bytes.Clone(early)
	}
	br := bufio.NewReaderSize(c, readerBuffer)
	c.br = br
	w.Conn = c
	return c, bufio.NewReadWriter(br, bufio.NewWriterSize(c, writeBuffer)), nil
}

// WaitReadable returns true when a read of the connection would not block:
// it reads the socket, waiting while there is nothing to read, unless bytes
// are buffered already. A read error is returned by the next Read. With
// idle > 0 it gives up when nothing came for that long and returns false:
// the reader may then Park. Only the connection's reader may call it,
// between reads.
func (c *Conn) WaitReadable(idle time.Duration) bool {
	c.rmu.Lock()
	wait := c.idleLocked()
	if wait && idle > 0 {
		// Set under rmu, where EndWaits clears it: a read by anyone else
		// must never meet this deadline.
		_ = c.Conn.SetReadDeadline(time.Now().Add(idle))
		c.deadline = true
	}
	c.rmu.Unlock()
	if !wait {
		return true
	}
	err := c.rc.Read(c.readSocket)
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.clearDeadlineLocked()
	if err == nil {
		return true
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && len(c.pend) == 0 && c.rerr == nil {
		return false
	}
	c.failLocked(err)
	return true
}

// Pending reports, without waiting, whether the next Read would not block:
// bytes are buffered, or the socket has some (read into the Conn, where
// WaitReadable and Read find them), or the connection failed. Without raw
// access to the socket it cannot tell and says false. Only the
// connection's reader may call it, between reads.
func (c *Conn) Pending() bool {
	c.rmu.Lock()
	idle := c.idleLocked()
	known := c.rc != nil && c.br != nil
	c.rmu.Unlock()
	if !known {
		return false
	}
	if !idle {
		return true
	}
	// One non-blocking read: readSocket's false (nothing there) would make
	// RawConn.Read wait, so its answer is ignored.
	_ = c.rc.Read(func(fd uintptr) bool {
		c.readOnce(fd)
		return true
	})
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return len(c.pend) > 0 || c.rerr != nil
}

// clearDeadlineLocked removes the read deadline WaitReadable set, if any.
func (c *Conn) clearDeadlineLocked() {
	if c.deadline {
		c.deadline = false
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
}

// idleLocked: the reader would wait for the socket (nothing buffered).
func (c *Conn) idleLocked() bool {
	return c.rc != nil && c.br != nil && !c.rdone && c.br.Buffered() == 0 && len(c.pend) == 0 && c.rerr == nil
}

// Park hands an idle reader's wait over to p: true means that resume will
// run on a new goroutine once the socket is readable or hung up, or the
// Conn is closed, and that the caller's goroutine may end. False: there is
// something buffered to read, or (with the error) the socket cannot be
// parked; the caller goes on reading. Only the connection's reader may call
// it, between reads.
func (c *Conn) Park(p *park.Poller, resume func()) (bool, error) {
	if p == nil || c.rc == nil {
		return false, errors.New("wsconn: no poller or no raw access to the socket")
	}
	parked := false
	var perr error
	// Inside Control the descriptor cannot be closed and reused.
	err := c.rc.Control(func(fd uintptr) {
		c.rmu.Lock()
		defer c.rmu.Unlock()
		// rdone under rmu: Close sets it before waking, so a Park that
		// gets here first is woken, and one that comes after gives up.
		// No read first: bytes that came since the reader's last read
		// make the level-triggered registration fire at once.
		if !c.idleLocked() {
			return
		}
		perr = p.Park(fd, &c.waiter, resume)
		if perr == nil {
			parked = true
			c.poller = p
		}
	})
	if err != nil {
		// Closed: the reader's next read reports it.
		return false, nil
	}
	return parked, perr
}

// Close closes the connection and resumes its reader if it is parked (the
// kernel forgets a closed socket's registration without an event): the
// reader then finds the connection closed and cleans up.
func (c *Conn) Close() error {
	c.rmu.Lock()
	c.rdone = true
	p := c.poller
	c.rmu.Unlock()
	err := c.Conn.Close()
	if p != nil {
		p.Wake(&c.waiter)
	}
	return err
}

// EndWaits makes WaitReadable return at once from now on. Call it before
// anything but the reader reads the connection: coder/websocket's Close
// reads the peer's close frame, and WaitReadable must not look at its
// buffer meanwhile. A wait in progress goes on until the socket is
// readable or closed; what it reads is served to the next Read, whoever
// makes it.
func (c *Conn) EndWaits() {
	c.rmu.Lock()
	c.rdone = true
	c.clearDeadlineLocked()
	c.rmu.Unlock()
}
