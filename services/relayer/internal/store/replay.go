package store

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MarkName is the file holding the log's acknowledged length: Sync writes
// the log's size there after the batch is written (and fsynced) and before
// anything of it is acknowledged or delivered, so every byte anyone was
// told of lies below the mark. Replay uses it to tell a write torn by a
// crash (past the mark: nobody was told of it, its numbers were never
// handed out) from lost acknowledged data (below it).
//
// The mark costs one pwrite per batch and is not fsynced: a process crash
// leaves it exact (the page cache survives); a power loss may leave it
// behind the log, never ahead, since with RELAY_FSYNC the log is fsynced
// before the mark is written, and whatever a power loss tears past a
// stale mark was not fsynced and so not acknowledged.
const MarkName = "ACKED"

// markLen is the mark's fixed size: "%020d %08x\n", the length and the
// CRC-32C of its 20 digits, so that a torn or foreign mark reads as none.
const markLen = 30

func encodeMark(n int64) []byte {
	b := fmt.Appendf(make([]byte, 0, markLen), "%020d", n)
	return fmt.Appendf(b, " %08x\n", crc32.Checksum(b, castagnoli))
}

// readMark reads the mark; ok is false when there is none (a data
// directory of an older relayer) or it is damaged.
func readMark(f *os.File) (n int64, ok bool) {
	var b [markLen + 1]byte
	if m, _ := f.ReadAt(b[:], 0); m != markLen || b[20] != ' ' || b[29] != '\n' {
		return 0, false
	}
	n, err := strconv.ParseInt(string(b[:20]), 10, 64)
	sum, serr := strconv.ParseUint(string(b[21:29]), 16, 32)
	if err != nil || serr != nil || uint32(sum) != crc32.Checksum(b[:20], castagnoli) || n < 0 {
		return 0, false
	}
	return n, true
}

// writeMark records that the first n bytes of the log may have been
// acknowledged; durable makes the mark itself survive a power loss.
func (l *Log) writeMark(n int64, durable bool) error {
	if _, err := l.markF.WriteAt(encodeMark(n), 0); err != nil {
		return fmt.Errorf("write %s: %w", MarkName, err)
	}
	if durable {
		if err := l.markF.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", MarkName, err)
		}
	}
	l.mark, l.markOK = n, true
	return nil
}

// Damage is what Replay found wrong with the log and what it did about it.
type Damage struct {
	// Regions are the byte ranges (of the log as it was) that held no
	// intact record, in order.
	Regions []Region
	// Missing counts acknowledged bytes the log no longer has at all: it
	// ends before the mark without any damaged bytes (cut at a record
	// boundary).
	Missing int64
	// AckedLost: acknowledged records may be gone, so the log got a new
	// epoch.
	AckedLost bool
	// Salvaged counts the intact records after the first damaged region,
	// kept.
	Salvaged int
	// Lost are the messages known lost: per room, the numbers missing
	// between its last record before a damaged region and its first
	// after it. Messages of rooms with no record after the damage are
	// lost too, but their numbers cannot be told (Regions has their bytes).
	Lost []Lost
	// Copy is where the damaged log was kept before it was repaired; empty
	// when it was not copied (a torn tail nobody was told of).
	Copy string
}

// Region is a damaged byte range [From, To) of the log.
type Region struct {
	From, To int64
	Reason   string
}

// Lost is a range of sequence numbers [From, To] of one room known lost.
type Lost struct {
	Room     string
	From, To uint64
}

func (x Lost) String() string {
	return fmt.Sprintf("%q %d-%d", x.Room, x.From, x.To)
}

// LostMessages counts the messages in d.Lost.
func (d *Damage) LostMessages() uint64 {
	var n uint64
	for _, x := range d.Lost {
		n += x.To - x.From + 1
	}
	return n
}

// LostBytes counts the bytes of the damaged regions and the missing ones.
func (d *Damage) LostBytes() int64 {
	n := d.Missing
	for _, r := range d.Regions {
		n += r.To - r.From
	}
	return n
}

// Damage reports what the last Replay found wrong; nil when the log was
// whole.
func (l *Log) Damage() *Damage { return l.damage }

// span is a byte range [from, to) of the log holding intact records.
type span struct{ from, to int64 }

// Replay calls fn with the payload (the Record JSON) of every intact
// record, in order, past any damage: records after a damaged region are
// salvaged. fn's slice is only valid during the call; an error from fn
// aborts the replay, and nothing has been changed then.
//
// Damage past the acknowledged mark is a write torn by a crash: nobody was
// told of it, it is cut off and logged as a warning. Any other damage —
// the mark not known, the log shorter than the mark, a bad record below
// it — may have cost acknowledged records whose numbers clients hold: the
// damaged log is first copied aside (DATA_DIR/wschat.log.damaged-<time>),
// the log gets a new epoch, is rewritten from its intact records, and what
// was lost is logged as an error (Damage has it too).
func (l *Log) Replay(fn func(payload []byte) error) error {
	end, err := l.f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	r := bufio.NewReaderSize(nil, 1<<20)
	seek := func(at int64) error {
		if _, err := l.f.Seek(at, io.SeekStart); err != nil {
			return fmt.Errorf("replay %s: %w", l.path, err)
		}
		r.Reset(l.f)
		return nil
	}
	if err := seek(0); err != nil {
		return err
	}
	var (
		off, from int64 // the next record; where the current intact run began
		runs      []span
		damaged   []Region
		payload   []byte
		records   int
		salvaged  int
	)
	for {
		p, bad, err := readRecord(r, &payload)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("replay %s at offset %d: %w", l.path, off, err)
		}
		if bad != "" {
			if off > from {
				runs = append(runs, span{from, off})
			}
			next, found, err := l.nextIntact(off, end)
			if err != nil {
				return err
			}
			if !found {
				damaged = append(damaged, Region{off, end, bad})
				off, from = end, end
				break
			}
			damaged = append(damaged, Region{off, next, bad})
			off, from = next, next
			if err := seek(next); err != nil {
				return err
			}
			continue
		}
		l.at = off
		if err := fn(p); err != nil {
			return fmt.Errorf("replay %s at offset %d: %w", l.path, off, err)
		}
		off += RecordSize(p)
		records++
		if len(damaged) > 0 {
			salvaged++
		}
	}
	if off > from {
		runs = append(runs, span{from, off})
	}
	l.size = off // repaired below when damaged
	if err := l.repair(end, runs, damaged, records, salvaged); err != nil {
		return err
	}
	// From here every byte of the log may be acknowledged.
	if err := l.writeMark(l.size, true); err != nil {
		return err
	}
	l.replayed = true
	return nil
}

// readRecord reads the record at r's position into *buf. bad says why the
// bytes there are no intact record; err is io.EOF at the log's clean end.
func readRecord(r *bufio.Reader, buf *[]byte) (payload []byte, bad string, err error) {
	var hdr [headerSize]byte
	n, err := io.ReadFull(r, hdr[:])
	if err == io.ErrUnexpectedEOF {
		return nil, fmt.Sprintf("torn header (%d of %d bytes)", n, headerSize), nil
	}
	if err != nil {
		return nil, "", err
	}
	size, ok := recordLength(hdr[:])
	if !ok {
		return nil, fmt.Sprintf("implausible record length %d", size), nil
	}
	if cap(*buf) < int(size) {
		*buf = make([]byte, size)
	}
	p := (*buf)[:size]
	if n, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Sprintf("torn record (%d of %d bytes)", n, size), nil
		}
		return nil, "", err
	}
	if !intact(hdr[:], p) {
		return nil, "CRC mismatch", nil
	}
	return p, "", nil
}

// nextIntact finds the first intact record starting after off (one byte
// on): its header's length fits, its payload is a JSON object, and its
// checksum holds. It reads the file a window at a time: damage near the
// start of a large log must not need the log's size in memory. A record's
// JSON cannot hide a header (a length below 16 MiB has a zero byte, JSON
// text has none), so only a checksum collision could mislead it.
func (l *Log) nextIntact(off, end int64) (int64, bool, error) {
	const window = 1 << 20
	buf := make([]byte, window+headerSize)
	var payload []byte
	for base := off + 1; base+headerSize < end; base += window {
		n, err := l.f.ReadAt(buf, base)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, false, fmt.Errorf("scan %s past offset %d: %w", l.path, off, err)
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
				return 0, false, fmt.Errorf("scan %s past offset %d: %w", l.path, off, err)
			}
			if intact(buf[p:], payload) {
				return at - headerSize, true, nil
			}
		}
	}
	return 0, false, nil
}

// repair decides what the damage Replay found means and mends the log:
// runs are its intact byte ranges, damaged the rest, end its size.
func (l *Log) repair(end int64, runs []span, damaged []Region, records, salvaged int) error {
	log := l.opts.Logger
	if len(damaged) == 0 {
		if !l.markOK || l.mark <= end {
			return nil
		}
		// Whole records are missing from the end: a cut at a record
		// boundary, or a power loss without RELAY_FSYNC. Nothing is left
		// to copy or to infer numbers from.
		l.damage = &Damage{Missing: l.mark - end, AckedLost: true}
		log.Error("log is shorter than what was acknowledged: acknowledged records are gone; "+
			"the log gets a new epoch so that gateways start their clients over",
			"path", l.path, "size", end, "acknowledged", l.mark, "missing_bytes", l.mark-end, "records_kept", records)
		return l.newEpoch()
	}
	d := &Damage{Regions: damaged, Salvaged: salvaged}
	l.damage = d
	first := damaged[0].From
	if l.markOK && first >= l.mark && salvaged == 0 {
		// A write torn by a crash: nothing past the mark was acknowledged
		// or delivered, and no number in it was handed out.
		log.Warn("log has a torn tail past what was acknowledged; truncating it",
			"path", l.path, "reason", damaged[0].Reason, "offset", first, "dropped_bytes", end-first,
			"acknowledged", l.mark, "records_kept", records)
		return l.truncate(first)
	}
	// Damage below the mark (or with no mark to tell), or intact records
	// after it, which a crash cannot make: keep the file as it is before
	// anything changes.
	d.AckedLost = !l.markOK || first < l.mark
	var err error
	if d.Copy, err = l.keepCopy(end); err != nil {
		return err
	}
	if d.Lost, err = l.inferLost(runs, damaged); err != nil {
		return err
	}
	regions := make([]string, len(damaged))
	for i, r := range damaged {
		regions[i] = fmt.Sprintf("%d-%d (%s)", r.From, r.To, r.Reason)
	}
	lost := make([]string, len(d.Lost))
	for i, x := range d.Lost {
		lost[i] = x.String()
	}
	attrs := []any{"path", l.path, "copy", d.Copy, "damaged_bytes", strings.Join(regions, ", "),
		"lost", strings.Join(lost, ", "), "lost_messages", d.LostMessages(), "lost_bytes", d.LostBytes(),
		"records_kept", records, "salvaged_after_damage", salvaged, "acknowledged", l.mark, "mark_known", l.markOK}
	if d.AckedLost {
		log.Error("log is damaged where records may have been acknowledged: they are lost (lost: room and numbers where "+
			"the room's numbering around the damage tells, the damaged bytes are in the copy); the log is rewritten "+
			"from every intact record and gets a new epoch so that gateways start their clients over", attrs...)
		// Before the log changes: a crash between the two must not leave
		// a log without those records under the old epoch.
		if err := l.newEpoch(); err != nil {
			return err
		}
	} else {
		log.Warn("log is damaged past what was acknowledged (not by a crash); it is rewritten from every intact record", attrs...)
	}
	if salvaged == 0 {
		return l.truncate(first)
	}
	return l.rewrite(func(w *bufio.Writer) (int64, error) {
		var n int64
		for _, s := range runs {
			m, err := io.Copy(w, io.NewSectionReader(l.f, s.from, s.to-s.from))
			n += m
			if err != nil {
				return n, fmt.Errorf("copy intact records at %d-%d: %w", s.from, s.to, err)
			}
		}
		return n, nil
	})
}

func (l *Log) newEpoch() (err error) {
	l.epoch, err = loadEpoch(l.dir, true)
	return err
}

func (l *Log) truncate(at int64) error {
	if err := l.f.Truncate(at); err != nil {
		return fmt.Errorf("truncate damaged tail of %s: %w", l.path, err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("sync truncated %s: %w", l.path, err)
	}
	l.size = at
	return nil
}

// keepCopy copies the first size bytes of the log, byte for byte, to a
// new file beside it, never over an earlier copy. It needs the log's size
// in free space; without it the relayer does not start (the error says
// so) rather than repair a log it could not keep.
func (l *Log) keepCopy(size int64) (string, error) {
	base := l.path + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	for i := range 100 {
		name := base
		if i > 0 {
			name += "-" + strconv.Itoa(i)
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("keep a copy of the damaged log: %w", err)
		}
		_, err = io.Copy(f, io.NewSectionReader(l.f, 0, size))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = l.syncDir(l.dir)
		}
		if err != nil {
			os.Remove(name)
			return "", fmt.Errorf("keep a copy of the damaged log %s (%d bytes; it is not repaired without one, "+
				"so free that much space in %s or move the log away by hand): %w", l.path, size, l.dir, err)
		}
		return name, nil
	}
	return "", fmt.Errorf("keep a copy of the damaged log: 100 copies named %s* exist already", base)
}

// inferLost names the messages the damaged regions held, where the
// numbering of a room around a region tells: its last message record
// before and its first after it.
func (l *Log) inferLost(runs []span, damaged []Region) ([]Lost, error) {
	last := map[string]uint64{}
	var lost []Lost
	ri := 0
	for i, d := range damaged {
		for ; ri < len(runs) && runs[ri].to <= d.From; ri++ {
			if err := l.eachSeq(runs[ri], func(room string, seq uint64) {
				last[room] = max(last[room], seq)
			}); err != nil {
				return nil, err
			}
		}
		next := map[string]uint64{}
		for rj := ri; rj < len(runs) && (i+1 == len(damaged) || runs[rj].to <= damaged[i+1].From); rj++ {
			if err := l.eachSeq(runs[rj], func(room string, seq uint64) {
				if _, ok := next[room]; !ok {
					next[room] = seq
				}
			}); err != nil {
				return nil, err
			}
		}
		for room, seq := range next {
			if before, ok := last[room]; ok && seq > before+1 {
				lost = append(lost, Lost{room, before + 1, seq - 1})
			}
		}
	}
	slices.SortFunc(lost, func(a, b Lost) int { return cmp.Or(cmp.Compare(a.Room, b.Room), cmp.Compare(a.From, b.From)) })
	return lost, nil
}

// eachSeq calls fn with the room and number of every message record in s
// (key-only records are no message: their numbers are not contiguous).
func (l *Log) eachSeq(s span, fn func(room string, seq uint64)) error {
	r := bufio.NewReader(io.NewSectionReader(l.f, s.from, s.to-s.from))
	var buf []byte
	for {
		p, bad, err := readRecord(r, &buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reread %s at %d-%d: %w", l.path, s.from, s.to, err)
		}
		if bad != "" {
			return fmt.Errorf("reread %s at %d-%d: %s, where replay found intact records", l.path, s.from, s.to, bad)
		}
		var rec struct {
			Msg struct {
				Room string `json:"room"`
				Seq  uint64 `json:"seq"`
			} `json:"msg"`
		}
		if json.Unmarshal(p, &rec) == nil && rec.Msg.Room != "" {
			fn(rec.Msg.Room, rec.Msg.Seq)
		}
	}
}
