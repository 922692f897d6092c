package store

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Offsets: every record has one, the position of its header in the log,
// so that history older than what the relayer keeps in memory can be read
// back from the file. Replay reports the offset of the record it is
// handing over (ReplayOffset), End is where the next Append lands, and a
// Compact writes the records it is given one after another from offset 0,
// each taking its RecordSize.

// ReplayOffset is the offset of the record Replay is passing to its fn;
// only meaningful during that call.
func (l *Log) ReplayOffset() int64 { return l.at }

// End is the offset at which the next Append's record will be: the log's
// size on disk plus what waits for Sync.
func (l *Log) End() int64 { return l.size + int64(len(l.buf)) }

// Reader reads records by offset from its own read-only handle on the log
// as it was when opened: it keeps reading that version after a compaction
// replaced the file, so offsets taken from that version stay valid as long
// as the Reader is open. ReadAt (pread) does not move a file position, so
// a Reader may be used from another goroutine than the Log's owner, and
// by several at once.
type Reader struct {
	f    *os.File
	path string
}

// OpenReader opens a Reader on the log's current file. Call it from the
// Log's owner, after Replay or a Compact, not concurrently with them.
func (l *Log) OpenReader() (*Reader, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("open log for reading: %w", err)
	}
	return &Reader{f: f, path: l.path}, nil
}

// ErrBadRecord is returned for an offset where no intact record is: a
// header whose length is implausible, a short read, or a checksum that
// does not hold (the file changed under the relayer).
var ErrBadRecord = errors.New("no intact record at this offset")

// ReadRecord returns the payload of the record at off, in buf's array
// when it is large enough. Only records Sync wrote can be read.
func (r *Reader) ReadRecord(off int64, buf []byte) ([]byte, error) {
	var hdr [headerSize]byte
	if _, err := r.f.ReadAt(hdr[:], off); err != nil {
		return nil, r.fail(off, err)
	}
	size, ok := recordLength(hdr[:])
	if !ok {
		return nil, r.fail(off, fmt.Errorf("%w: length %d", ErrBadRecord, size))
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if _, err := r.f.ReadAt(buf, off+headerSize); err != nil {
		return nil, r.fail(off, err)
	}
	if !intact(hdr[:], buf) {
		return nil, r.fail(off, fmt.Errorf("%w: CRC mismatch", ErrBadRecord))
	}
	return buf, nil
}

func (r *Reader) fail(off int64, err error) error {
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: past the end", ErrBadRecord)
	}
	return fmt.Errorf("read %s at offset %d: %w", r.path, off, err)
}

// Scanner reads records at ascending offsets through a window of the file,
// one pread per window instead of two per record: a compaction copies the
// retained records this way while the sequencer waits.
type Scanner struct {
	r    *Reader
	win  []byte
	base int64 // file offset of win[0]
	n    int   // valid bytes in win
	big  []byte
}

// scanWindow is how much of the file a Scanner reads at once.
const scanWindow = 1 << 20

// Scanner returns a Scanner over the Reader's file.
func (r *Reader) Scanner() *Scanner { return &Scanner{r: r, win: make([]byte, scanWindow)} }

// Record returns the payload of the record at off, which must not be below
// the previous call's: valid until the next call.
func (s *Scanner) Record(off int64) ([]byte, error) {
	hdr, err := s.at(off, headerSize)
	if err != nil {
		return nil, err
	}
	n, ok := recordLength(hdr)
	if !ok {
		return nil, s.r.fail(off, fmt.Errorf("%w: length %d", ErrBadRecord, n))
	}
	size := int64(n)
	var p []byte
	if headerSize+size > scanWindow {
		p, err = s.r.ReadRecord(off, s.big)
		s.big = p
		return p, err
	}
	if p, err = s.at(off, headerSize+size); err != nil {
		return nil, err
	}
	if !intact(p[:headerSize], p[headerSize:]) {
		return nil, s.r.fail(off, fmt.Errorf("%w: CRC mismatch", ErrBadRecord))
	}
	return p[headerSize:], nil
}

// at returns n bytes of the file from off, reading a new window from off
// when the current one does not hold them.
func (s *Scanner) at(off, n int64) ([]byte, error) {
	if off < s.base || off+n > s.base+int64(s.n) {
		m, err := s.r.f.ReadAt(s.win, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, s.r.fail(off, err)
		}
		s.base, s.n = off, m
		if n > int64(m) {
			return nil, s.r.fail(off, io.EOF)
		}
	}
	i := off - s.base
	return s.win[i : i+n], nil
}

// Close closes the Reader's handle.
func (r *Reader) Close() error { return r.f.Close() }
