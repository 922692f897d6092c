// Package store is the relayer's durable history: one append-only log of
// records, each [uint32 length][uint32 CRC-32C][JSON of Record], both
// integers little-endian. Every state the relayer keeps beyond the
// process is rebuilt by replaying it.
//
// The API is shaped for group commit: the sequencer Appends every record of
// a batch (buffered in memory) and calls Sync once, which costs one write(2)
// and, when enabled, one fsync for the whole batch.
package store

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/wschat/wschat/services/protocol"
)

// FileName is the log's name inside the data directory.
const FileName = "wschat.log"

// LockName is the file whose lock keeps a second relayer off the data
// directory. It is not the log itself: compaction replaces the log's file,
// and Open cleans up after a crashed compaction, which only the directory's
// owner may do.
const LockName = "LOCK"

// EpochName is the file holding the log's epoch (see Log.Epoch).
const EpochName = "EPOCH"

const (
	headerSize = 8
	// maxRecordBytes bounds one record. A length above it can only come
	// from a corrupt header, so replay treats it as the end of the log
	// instead of allocating whatever garbage asks for.
	maxRecordBytes = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one sequenced message. MID and Inst (the publishing instance)
// form the de-duplication key: a mid is only unique per instance. When
// Sess is set, the key is Sess and Msg.ID instead (the sending client's
// session and its own message id), and MID and Inst may be empty.
//
// A record without Msg but with Room and Seq only remembers that key
// (MID and Inst, or Sess and CID): a compaction writes one for each
// publish still in the de-duplication window, so that a publish re-sent
// after a restart is still recognised.
type Record struct {
	MID  string           `json:"mid"`
	Inst string           `json:"inst,omitempty"`
	Sess string           `json:"sess,omitempty"`
	CID  string           `json:"cid,omitempty"` // a key-only record's client id
	Msg  protocol.Message `json:"msg"`
	Room string           `json:"room,omitempty"`
	Seq  uint64           `json:"seq,omitempty"`
}

// KeyOnly reports whether r only remembers a de-duplication key.
func (r *Record) KeyOnly() bool { return r.Msg.Room == "" && r.Room != "" }

// appendKey opens a record's JSON with its de-duplication key.
func appendKey(dst []byte, mid, inst, sess string) []byte {
	dst = append(dst, `{"mid":`...)
	dst = protocol.AppendString(dst, mid)
	if inst != "" {
		dst = append(dst, `,"inst":`...)
		dst = protocol.AppendString(dst, inst)
	}
	if sess != "" {
		dst = append(dst, `,"sess":`...)
		dst = protocol.AppendString(dst, sess)
	}
	return dst
}

// AppendKeyRecord appends the JSON of a key-only Record to dst.
func AppendKeyRecord(dst []byte, mid, inst, room string, seq uint64) []byte {
	return appendRoomSeq(appendKey(dst, mid, inst, ""), room, seq)
}

// AppendSessionKeyRecord appends the JSON of a key-only Record of a
// client's key (its session and message id) to dst.
func AppendSessionKeyRecord(dst []byte, sess, cid, room string, seq uint64) []byte {
	dst = appendKey(dst, "", "", sess)
	dst = append(dst, `,"cid":`...)
	dst = protocol.AppendString(dst, cid)
	return appendRoomSeq(dst, room, seq)
}

func appendRoomSeq(dst []byte, room string, seq uint64) []byte {
	dst = append(dst, `,"room":`...)
	dst = protocol.AppendString(dst, room)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}

// AppendRecord appends the JSON of Record{mid, inst, msg} to dst, where
// msgJSON is the already encoded message: the sequencer encodes each
// message once and reuses the bytes for the log and for every link.
func AppendRecord(dst []byte, mid, inst string, msgJSON []byte) []byte {
	return AppendSessionRecord(dst, mid, inst, "", msgJSON)
}

// AppendSessionRecord is AppendRecord with the sending client's session
// (may be empty).
func AppendSessionRecord(dst []byte, mid, inst, sess string, msgJSON []byte) []byte {
	dst = appendKey(dst, mid, inst, sess)
	dst = append(dst, `,"msg":`...)
	dst = append(dst, msgJSON...)
	return append(dst, '}')
}

// Options configure a Log.
type Options struct {
	// Fsync makes Sync call fsync; without it Sync only writes, which
	// survives a process crash but not a power loss.
	Fsync  bool
	Logger *slog.Logger
}

// Log is the append-only log. It is not safe for concurrent use: the
// sequencer goroutine owns it.
type Log struct {
	dir      string
	path     string
	f        *os.File
	lock     *os.File
	unlock   func() error
	opts     Options
	buf      []byte // appended, not yet written
	size     int64  // bytes on disk
	replayed bool
	at       int64 // offset of the record Replay is handing to its fn
	epoch    string
	failed   error // a failed Sync: the file's tail is unknown until replayed
	// syncDir makes the directory's entries durable (a field so that a
	// test can make it fail).
	syncDir func(dir string) error
}

// Open opens (creating it if needed) the log in dir and locks it against a
// second relayer on the same directory. Call Replay before appending.
func Open(dir string, opts Options) (*Log, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", dir, err)
	}
	lockPath := filepath.Join(dir, LockName)
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	unlock, err := lockFile(lock)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("lock %s (is another ws-relayer using DATA_DIR %s?): %w", lockPath, dir, err)
	}
	l, err := openLog(dir, opts)
	if err != nil {
		unlock()
		lock.Close()
		return nil, err
	}
	l.lock, l.unlock = lock, unlock
	return l, nil
}

// openLog opens the log of a locked data directory.
func openLog(dir string, opts Options) (*Log, error) {
	path := filepath.Join(dir, FileName)
	// A leftover of a compaction that crashed before its rename: the
	// log itself is intact, the partial copy is garbage.
	if err := os.Remove(path + ".compact"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale compaction file: %w", err)
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	created := errors.Is(statErr, os.ErrNotExist)
	if created {
		// The new directory entry must be durable before the first
		// acknowledged record lands in the file.
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	epoch, err := loadEpoch(dir, created)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Log{dir: dir, path: path, f: f, opts: opts, syncDir: syncDir, epoch: epoch}, nil
}

// intactAfter reports whether an intact record starts anywhere after off
// (one byte on): its header's length fits, its payload is a JSON object,
// and its checksum holds. It reads the file a window at a time: damage
// near the start of a large log must not need the log's size in memory.
func (l *Log) intactAfter(off int64) (bool, error) {
	end, err := l.f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, fmt.Errorf("scan %s: %w", l.path, err)
	}
	const window = 1 << 20
	buf := make([]byte, window+headerSize)
	var payload []byte
	for base := off + 1; base+headerSize < end; base += window {
		n, err := l.f.ReadAt(buf, base)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("scan %s past offset %d: %w", l.path, off, err)
		}
		for p := 0; p < min(window, n-headerSize); p++ {
			// Cheap tests first: JSON text never makes a length this small
			// (it has no bytes below 0x20), so only the neighbourhood of a
			// real header gets as far as reading a payload.
			size := int64(binary.LittleEndian.Uint32(buf[p:]))
			at := base + int64(p) + headerSize
			if size < 2 || size > maxRecordBytes || at+size > end || buf[p+headerSize] != '{' {
				continue
			}
			var last [1]byte
			if _, err := l.f.ReadAt(last[:], at+size-1); err != nil || last[0] != '}' {
				continue
			}
			if cap(payload) < int(size) {
				payload = make([]byte, size)
			}
			payload = payload[:size]
			if _, err := l.f.ReadAt(payload, at); err != nil {
				return false, fmt.Errorf("scan %s past offset %d: %w", l.path, off, err)
			}
			if crc32.Checksum(payload, castagnoli) == binary.LittleEndian.Uint32(buf[p+4:]) {
				return true, nil
			}
		}
	}
	return false, nil
}

// Epoch names this log's sequence numbers: made anew with the log, kept
// while it lives (compactions included), made anew again when replay had
// to drop records from the middle of the log. A relayer whose epoch changed
// counts from 1 again, and whoever remembers its numbers must forget them.
func (l *Log) Epoch() string { return l.epoch }

// loadEpoch reads the directory's epoch, or makes a new one for a new log
// (a missing or unreadable one too: nobody can hold numbers of a log
// whose epoch was never read).
func loadEpoch(dir string, created bool) (string, error) {
	path := filepath.Join(dir, EpochName)
	if !created {
		b, err := os.ReadFile(path)
		if e := string(b); err == nil && len(e) == 32 {
			if _, err := hex.DecodeString(e); err == nil {
				return e, nil
			}
		}
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:]) // never fails (crypto/rand)
	epoch := hex.EncodeToString(raw[:])
	tmp := path + ".tmp"
	if err := writeSynced(tmp, []byte(epoch)); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("install epoch: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return epoch, nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Replay calls fn with the payload (the Record JSON) of every intact
// record, in order. A torn or corrupt tail (a crash mid-write, a bad CRC)
// ends the log: it is truncated, and the loss logged. fn's slice is only
// valid during the call; an error from fn aborts the replay.
func (l *Log) Replay(fn func(payload []byte) error) error {
	if _, err := l.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	r := bufio.NewReaderSize(l.f, 1<<20)
	var (
		off     int64
		hdr     [headerSize]byte
		payload []byte
		records int
		bad     string
	)
	for {
		n, err := io.ReadFull(r, hdr[:])
		if err == io.EOF {
			break
		}
		if err == io.ErrUnexpectedEOF {
			bad = fmt.Sprintf("torn header (%d of %d bytes)", n, headerSize)
			break
		}
		if err != nil {
			return fmt.Errorf("replay %s at offset %d: %w", l.path, off, err)
		}
		size := binary.LittleEndian.Uint32(hdr[0:4])
		sum := binary.LittleEndian.Uint32(hdr[4:8])
		if size == 0 || size > maxRecordBytes {
			bad = fmt.Sprintf("implausible record length %d", size)
			break
		}
		if cap(payload) < int(size) {
			payload = make([]byte, size)
		}
		payload = payload[:size]
		if n, err := io.ReadFull(r, payload); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				bad = fmt.Sprintf("torn record (%d of %d bytes)", n, size)
				break
			}
			return fmt.Errorf("replay %s at offset %d: %w", l.path, off, err)
		}
		if crc32.Checksum(payload, castagnoli) != sum {
			bad = "CRC mismatch"
			break
		}
		l.at = off
		if err := fn(payload); err != nil {
			return fmt.Errorf("replay %s at offset %d: %w", l.path, off, err)
		}
		off += headerSize + int64(size)
		records++
	}
	if bad != "" {
		end, err := l.f.Seek(0, io.SeekEnd)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		// A crash tears at most the batch being written, which nobody was
		// told of. An intact record past the bad spot means damage in the
		// middle: what is dropped was acknowledged and delivered, and its
		// numbers will be handed out again.
		intact, err := l.intactAfter(off)
		if err != nil {
			return err
		}
		if intact {
			l.opts.Logger.Error("log is corrupt before its end: truncating it, acknowledged records included; "+
				"the log gets a new epoch so that gateways start their clients over (keep a copy of the file to recover it by hand)",
				"path", l.path, "reason", bad, "offset", off, "dropped_bytes", end-off, "records_kept", records)
			// Before the truncation: a crash between the two must not
			// leave a shorter log with the old epoch.
			if l.epoch, err = loadEpoch(l.dir, true); err != nil {
				return err
			}
		} else {
			l.opts.Logger.Warn("log has a torn or corrupt tail; truncating it",
				"path", l.path, "reason", bad, "offset", off, "dropped_bytes", end-off, "records_kept", records)
		}
		if err := l.f.Truncate(off); err != nil {
			return fmt.Errorf("truncate corrupt tail of %s: %w", l.path, err)
		}
		if err := l.f.Sync(); err != nil {
			return fmt.Errorf("sync truncated %s: %w", l.path, err)
		}
	}
	l.size = off
	l.replayed = true
	return nil
}

// Append buffers one record; nothing reaches the file before Sync.
func (l *Log) Append(payload []byte) {
	var hdr [headerSize]byte
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(hdr[4:8], crc32.Checksum(payload, castagnoli))
	l.buf = append(l.buf, hdr[:]...)
	l.buf = append(l.buf, payload...)
}

// Pending reports whether records wait for Sync.
func (l *Log) Pending() bool { return len(l.buf) > 0 }

// Sync writes the buffered records with one write and, when Options.Fsync
// is set, makes them durable. After an error the log's state on disk is
// unknown (fsync errors are not retryable), so the caller must stop using
// it; the next Open's replay repairs the tail.
func (l *Log) Sync() error {
	if !l.replayed {
		return errors.New("store: Sync before Replay")
	}
	if l.failed != nil {
		return l.failed
	}
	if len(l.buf) == 0 {
		return nil
	}
	n, err := l.f.Write(l.buf)
	l.size += int64(n)
	if err != nil {
		l.failed = fmt.Errorf("write %s: %w", l.path, err)
		return l.failed
	}
	if cap(l.buf) > 4<<20 {
		l.buf = nil // one huge batch should not pin its buffer forever
	} else {
		l.buf = l.buf[:0]
	}
	if l.opts.Fsync {
		if err := l.f.Sync(); err != nil {
			l.failed = fmt.Errorf("fsync %s: %w", l.path, err)
			return l.failed
		}
	}
	return nil
}

// Size is the log's size on disk in bytes.
func (l *Log) Size() int64 { return l.size }

// RecordSize is how many bytes a payload takes in the log.
func RecordSize(payload []byte) int64 { return headerSize + int64(len(payload)) }

// Compact replaces the log with exactly the records yields, through a
// temporary file that is fsynced and renamed over the log, then the
// directory fsynced: a crash at any point leaves either the old or the new
// log whole. Pending records must be synced first.
func (l *Log) Compact(records iter.Seq[[]byte]) error {
	return l.CompactChecked(records, nil)
}

// CompactChecked is Compact for records that can fail to come (read back
// from the log): after they are written, a non-nil error from check
// abandons the compaction, and the log stays as it was.
func (l *Log) CompactChecked(records iter.Seq[[]byte], check func() error) error {
	if len(l.buf) > 0 || l.failed != nil {
		return errors.New("store: Compact with unsynced records or after a failed Sync")
	}
	tmp := l.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact %s: %w", l.path, err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var size int64
	var hdr [headerSize]byte
	for p := range records {
		binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(p)))
		binary.LittleEndian.PutUint32(hdr[4:8], crc32.Checksum(p, castagnoli))
		w.Write(hdr[:])
		w.Write(p)
		size += RecordSize(p)
	}
	if check != nil {
		if err := check(); err != nil {
			return fail(err)
		}
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fail(err)
	}
	old := l.f
	l.f, l.size = f, size // the rename happened: f is the log now
	if err := old.Close(); err != nil {
		l.opts.Logger.Warn("compaction: closing the old log", "err", err)
	}
	if err := l.syncDir(l.dir); err != nil {
		// Records appended from now on would be durable in a file whose
		// name may not be: a crash could bring the old log back without
		// them. Fail like a failed Sync, so none of them is acknowledged;
		// a restart replays whichever log the directory holds, whole.
		l.failed = fmt.Errorf("compaction: %w", err)
		return l.failed
	}
	return nil
}

// Close syncs pending records and closes the log.
func (l *Log) Close() error {
	var err error
	if l.replayed && l.failed == nil {
		err = l.Sync()
	}
	if err == nil {
		// Even without RELAY_FSYNC a clean shutdown is a good moment to
		// make everything durable.
		if serr := l.f.Sync(); serr != nil {
			err = fmt.Errorf("fsync %s: %w", l.path, serr)
		}
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", l.path, cerr)
	}
	l.unlock()
	l.lock.Close()
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s for fsync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// DecodeRecord decodes a replayed payload.
func DecodeRecord(payload []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, fmt.Errorf("decode record: %w", err)
	}
	return r, nil
}
