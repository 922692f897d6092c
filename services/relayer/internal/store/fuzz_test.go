package store

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wschat/wschat/services/protocol"
)

// Whatever a record's payload holds, DecodeRecord never panics, and what
// a reader takes from it is what the encoders write back: a record
// survives a compaction's re-encoding (AppendSessionRecord,
// AppendKeyRecord, AppendSessionKeyRecord) unchanged.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(payload(1))
	f.Add(AppendKeyRecord(nil, "m9", "i1", "lobby", 9))
	f.Add(AppendSessionKeyRecord(nil, "s1", "c1", "lobby", 9))
	f.Add(AppendSessionRecord(nil, "m1", "i1", "s1", []byte(`{"room":"r","seq":1,"id":"c1","message":"hi","ts":1}`)))
	f.Add([]byte(`{"mid":"m","msg":{"room":"r","seq":1,"message":"caf\xe9","ts":1}}`))
	f.Add([]byte(`{"mid":"m","inst":"i","msg":{"room":"","seq":0},"room":"r","seq":18446744073709551615}`))
	f.Add([]byte(`{"mid":1}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeRecord(p)
		if err != nil {
			return
		}
		var again []byte
		switch {
		case r.KeyOnly() && r.Sess != "" && r.CID != "":
			again = AppendSessionKeyRecord(nil, r.Sess, r.CID, r.Room, r.Seq)
		case r.KeyOnly():
			again = AppendKeyRecord(nil, r.MID, r.Inst, r.Room, r.Seq)
		default:
			again = AppendSessionRecord(nil, r.MID, r.Inst, r.Sess, protocol.AppendMessage(nil, &r.Msg))
		}
		r2, err := DecodeRecord(again)
		if err != nil {
			t.Fatalf("%q read as %+v, re-encoded as %q, which does not decode: %v", p, r, again, err)
		}
		if read(r2) != read(r) {
			t.Fatalf("%q read as %+v, re-encoded and read as %+v", p, r, r2)
		}
	})
}

// read is what the sequencer takes from a record (its replay): a key-only
// record's key, room and seq (the key is the session and client id when
// both are set, else mid and instance); a message's mid, instance,
// session and message (its client id is the message's).
func read(r Record) Record {
	switch {
	case r.KeyOnly() && r.Sess != "" && r.CID != "":
		return Record{Sess: r.Sess, CID: r.CID, Room: r.Room, Seq: r.Seq}
	case r.KeyOnly():
		return Record{MID: r.MID, Inst: r.Inst, Room: r.Room, Seq: r.Seq}
	default:
		return Record{MID: r.MID, Inst: r.Inst, Sess: r.Sess, Msg: r.Msg}
	}
}

// Replay over arbitrary bytes: a log of n intact records, one byte of it
// changed (x != 0) and arbitrary bytes after it. Replay never panics or
// fails; every record before the damage is read back, in order; the
// damaged record is never handed out; and the log goes on: a record
// appended after the replay is read back by the next, with everything the
// first read.
func FuzzReplay(f *testing.F) {
	f.Add(uint8(3), uint32(0), uint8(0), []byte(nil))              // intact
	f.Add(uint8(3), uint32(20), uint8(0x40), []byte(nil))          // a payload byte of the first record
	f.Add(uint8(3), uint32(1), uint8(0xff), []byte(nil))           // a length byte: implausible
	f.Add(uint8(2), uint32(0), uint8(0), []byte{0x05, 0, 0})       // a torn header
	f.Add(uint8(2), uint32(0), uint8(0), []byte{4, 0, 0, 0, 1, 2}) // a torn record
	f.Add(uint8(0), uint32(0), uint8(0), []byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(5), uint32(150), uint8(1), []byte("garbage after a damaged middle"))
	f.Fuzz(func(t *testing.T, n uint8, pos uint32, x uint8, tail []byte) {
		n %= 8
		dir := memDir(t)
		l, _ := open(t, dir, false)
		var orig [][]byte
		var ends []int // each record's end offset in the file
		end := 0
		for i := range int(n) {
			p := payload(i)
			l.Append(p)
			orig = append(orig, p)
			end += int(RecordSize(p))
			ends = append(ends, end)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, FileName)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		damaged := len(orig) // index of the damaged record
		if x != 0 && len(b) > 0 {
			at := int(pos % uint32(len(b)))
			b[at] ^= x
			damaged, _ = slices.BinarySearch(ends, at+1)
		}
		b = append(b, tail...)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}

		l, got := open(t, dir, false)
		if len(got) < damaged || !slices.EqualFunc(got[:damaged], orig[:damaged], bytes.Equal) {
			l.Close()
			t.Fatalf("replay read %d records, want at least the %d before the damage, unchanged", len(got), damaged)
		}
		if damaged < len(orig) {
			for _, p := range got {
				if !slices.ContainsFunc(orig, func(o []byte) bool { return bytes.Equal(o, p) }) {
					l.Close()
					t.Fatalf("replay handed out %q, not a record written (the damaged one?)", p)
				}
			}
		}
		next := AppendKeyRecord(nil, "after", "i1", "r", 1)
		l.Append(next)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l, again := open(t, dir, false)
		defer l.Close()
		if want := append(slices.Clone(got), next); !slices.EqualFunc(again, want, bytes.Equal) {
			t.Fatalf("after appending to the replayed log, the next replay read %d records, want the %d read before and the new one", len(again), len(got))
		}
	})
}

// memDir is a temporary directory in memory where there is one (Linux's
// /dev/shm): Open and Close fsync, which on a disk costs milliseconds per
// input, and a fuzz run wants thousands.
func memDir(t *testing.T) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "wschat-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
