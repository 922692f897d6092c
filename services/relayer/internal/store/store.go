// Package store is the relayer's durable history: one append-only log of
// records, each [uint32 length][uint32 CRC-32C][JSON of Record], both
// integers little-endian. Every state the relayer keeps beyond the
// process is rebuilt by replaying it.
//
// The API is shaped for group commit: the sequencer Appends every record of
// a batch (buffered in memory) and calls Sync once, which costs one write(2),
// when enabled one fsync, and one pwrite of the acknowledged mark (MarkName)
// for the whole batch.
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
	// markF holds the acknowledged mark (MarkName): mark, when markOK.
	markF  *os.File
	mark   int64
	markOK bool
	damage *Damage // what the replay found, nil when the log was whole
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
	markF, err := os.OpenFile(filepath.Join(dir, MarkName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s: %w", MarkName, err)
	}
	l := &Log{dir: dir, path: path, f: f, opts: opts, syncDir: syncDir, epoch: epoch, markF: markF}
	// A new log has nothing acknowledged, whatever an old mark says.
	if l.mark, l.markOK = readMark(markF); created {
		l.mark, l.markOK = 0, true
	}
	return l, nil
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

// header is payload's record header: its length and CRC-32C.
func header(payload []byte) (hdr [headerSize]byte) {
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(hdr[4:8], crc32.Checksum(payload, castagnoli))
	return hdr
}

// recordLength is the payload length hdr gives, and whether a record can
// have it.
func recordLength(hdr []byte) (uint32, bool) {
	size := binary.LittleEndian.Uint32(hdr[0:4])
	return size, size != 0 && size <= maxRecordBytes
}

// intact reports whether payload is the one hdr's checksum was made of.
func intact(hdr, payload []byte) bool {
	return crc32.Checksum(payload, castagnoli) == binary.LittleEndian.Uint32(hdr[4:8])
}

// Append buffers one record; nothing reaches the file before Sync.
func (l *Log) Append(payload []byte) {
	hdr := header(payload)
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
	// Before anything of the batch is acknowledged (the caller does that
	// once Sync returns): a mark that cannot be kept fails the log, or a
	// later replay could take acknowledged records for a torn write.
	if err := l.writeMark(l.size, false); err != nil {
		l.failed = err
		return l.failed
	}
	return nil
}

// Size is the log's size on disk in bytes.
func (l *Log) Size() int64 { return l.size }

// RecordSize is how many bytes a payload takes in the log.
func RecordSize(payload []byte) int64 { return headerSize + int64(len(payload)) }

// Compact replaces the log with exactly the records yields (see rewrite:
// a crash at any point leaves either the old or the new log whole).
// Pending records must be synced first.
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
	return l.rewrite(func(w *bufio.Writer) (int64, error) {
		var size int64
		for p := range records {
			hdr := header(p)
			w.Write(hdr[:])
			w.Write(p)
			size += RecordSize(p)
		}
		if check != nil {
			if err := check(); err != nil {
				return 0, err
			}
		}
		return size, nil
	})
}

// rewrite replaces the log with what fill writes (returning its size),
// through a temporary file that is fsynced and renamed over the log, then
// the directory fsynced: a crash at any point leaves either the old or the
// new log whole. (A crash after the rename but before the mark is moved
// to the new log's size leaves a mark past it: the next replay takes that
// for lost records and makes a needless new epoch, never the reverse.)
func (l *Log) rewrite(fill func(w *bufio.Writer) (int64, error)) error {
	tmp := l.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("rewrite %s: %w", l.path, err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("rewrite %s: %w", l.path, err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	size, err := fill(w)
	if err != nil {
		return fail(err)
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
		l.opts.Logger.Warn("rewrite: closing the old log", "err", err)
	}
	err = l.syncDir(l.dir)
	if err == nil {
		err = l.writeMark(size, true)
	}
	if err != nil {
		// Records appended from now on would be durable in a file whose
		// name may not be: a crash could bring the old log back without
		// them. Fail like a failed Sync, so none of them is acknowledged;
		// a restart replays whichever log the directory holds, whole.
		l.failed = fmt.Errorf("rewrite: %w", err)
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
	if err == nil && l.replayed {
		err = l.writeMark(l.size, true)
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", l.path, cerr)
	}
	l.markF.Close()
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
