package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wschat/wschat/services/protocol"
)

func open(t testing.TB, dir string, fsync bool) (*Log, [][]byte) {
	t.Helper()
	l, err := Open(dir, Options{Fsync: fsync})
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	if err := l.Replay(func(p []byte) error {
		got = append(got, bytes.Clone(p))
		return nil
	}); err != nil {
		l.Close()
		t.Fatal(err)
	}
	return l, got
}

func payload(i int) []byte {
	m := protocol.Message{Room: "r", Seq: uint64(i), Text: fmt.Sprintf("hello %d", i), TS: 1}
	js, _ := json.Marshal(m)
	return AppendRecord(nil, fmt.Sprintf("m%d", i), "i1", js)
}

func TestAppendRecordMatchesJSON(t *testing.T) {
	m := protocol.Message{Room: "r\"\n", Seq: 7, ID: "c1", From: "é", UID: "u", Text: "a\u2028b<>&", TS: 42}
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"", "inst-1"} {
		want, _ := json.Marshal(Record{MID: "m\x00id", Inst: inst, Msg: m})
		got := AppendRecord(nil, "m\x00id", inst, js)
		if !bytes.Equal(got, want) {
			t.Fatalf("AppendRecord\n got %s\nwant %s", got, want)
		}
		r, err := DecodeRecord(got)
		if err != nil || r.Msg != m || r.Inst != inst {
			t.Fatalf("DecodeRecord = %+v, %v", r, err)
		}
	}
}

func TestAppendSyncReplay(t *testing.T) {
	dir := t.TempDir()
	l, got := open(t, dir, true)
	if len(got) != 0 {
		t.Fatalf("new log replayed %d records", len(got))
	}
	var want [][]byte
	for i := 1; i <= 10; i++ {
		p := payload(i)
		want = append(want, p)
		l.Append(p)
		if i%3 == 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil { // Close syncs the rest
		t.Fatal(err)
	}
	l, got = open(t, dir, true)
	defer l.Close()
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("replayed %d records, want %d", len(got), len(want))
	}
	st, _ := os.Stat(filepath.Join(dir, FileName))
	if l.Size() != st.Size() {
		t.Fatalf("Size = %d, file has %d", l.Size(), st.Size())
	}
}

func TestNothingWrittenBeforeSync(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, false)
	defer l.Close()
	l.Append(payload(1))
	if !l.Pending() {
		t.Fatal("Pending = false after Append")
	}
	st, _ := os.Stat(filepath.Join(dir, FileName))
	if st.Size() != 0 {
		t.Fatalf("file has %d bytes before Sync", st.Size())
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(filepath.Join(dir, FileName))
	if st.Size() != RecordSize(payload(1)) {
		t.Fatalf("file has %d bytes after Sync, want %d", st.Size(), RecordSize(payload(1)))
	}
}

// writeLog builds a log of n records and returns the offsets where each
// record starts and the file's path.
func writeLog(t *testing.T, dir string, n int) ([]int64, string) {
	t.Helper()
	l, _ := open(t, dir, false)
	var offs []int64
	for i := 1; i <= n; i++ {
		offs = append(offs, l.Size()+int64(len(l.buf)))
		l.Append(payload(i))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return offs, filepath.Join(dir, FileName)
}

func TestTornAndCorruptTails(t *testing.T) {
	cases := []struct {
		name string
		// damage changes the file; kept is how many records survive.
		damage func(t *testing.T, path string, offs []int64)
		kept   int
		// newEpoch: records after the damage were dropped, acknowledged
		// ones: the log's numbers start over.
		newEpoch bool
	}{
		{"torn header", func(t *testing.T, path string, offs []int64) {
			appendBytes(t, path, []byte{1, 2, 3})
		}, 5, false},
		{"torn payload", func(t *testing.T, path string, offs []int64) {
			st, _ := os.Stat(path)
			os.Truncate(path, st.Size()-4)
		}, 4, false},
		{"corrupt crc in the middle", func(t *testing.T, path string, offs []int64) {
			flipByte(t, path, offs[2]+headerSize+3)
		}, 2, true},
		{"corrupt last record", func(t *testing.T, path string, offs []int64) {
			flipByte(t, path, offs[4]+headerSize+3)
		}, 4, false},
		{"zero length", func(t *testing.T, path string, offs []int64) {
			appendBytes(t, path, make([]byte, 16))
		}, 5, false},
		{"huge length", func(t *testing.T, path string, offs []int64) {
			appendBytes(t, path, []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 'x'})
		}, 5, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			offs, path := writeLog(t, dir, 5)
			before := epochOf(t, dir)
			tc.damage(t, path, offs)
			var logs bytes.Buffer
			l, err := Open(dir, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			if err := l.Replay(func(p []byte) error {
				n++
				if !bytes.Equal(p, payload(n)) {
					t.Errorf("record %d = %s", n, p)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if n != tc.kept {
				t.Fatalf("replayed %d records, want %d", n, tc.kept)
			}
			if changed := l.Epoch() != before; changed != tc.newEpoch {
				t.Fatalf("epoch changed: %v, want %v", changed, tc.newEpoch)
			}
			if !strings.Contains(logs.String(), "truncating") {
				t.Errorf("truncation not logged: %q", logs.String())
			}
			// The log continues cleanly after the truncation point.
			l.Append(payload(n + 1))
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l, got := open(t, dir, false)
			defer l.Close()
			if len(got) != tc.kept+1 || !bytes.Equal(got[tc.kept], payload(tc.kept+1)) {
				t.Fatalf("after repair and append: %d records", len(got))
			}
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x55
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestCompactKeepsRetainedAndContinues(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, true)
	for i := 1; i <= 100; i++ {
		l.Append(payload(i))
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	before := l.Size()
	var keep [][]byte
	for i := 91; i <= 100; i++ {
		keep = append(keep, payload(i))
	}
	if err := l.Compact(slices.Values(keep)); err != nil {
		t.Fatal(err)
	}
	if l.Size() >= before {
		t.Fatalf("size %d after compaction, %d before", l.Size(), before)
	}
	// Appends after compaction go to the new log.
	l.Append(payload(101))
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName+".compact")); !os.IsNotExist(err) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	l, got := open(t, dir, true)
	defer l.Close()
	want := append(keep, payload(101))
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("after compaction replayed %d records, want %d", len(got), len(want))
	}
	for i, p := range got {
		r, err := DecodeRecord(p)
		if err != nil || r.Msg.Seq != uint64(91+i) {
			t.Fatalf("record %d: seq %d, %v", i, r.Msg.Seq, err)
		}
	}
}

func TestStaleCompactionFileIgnored(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 3)
	if err := os.WriteFile(filepath.Join(dir, FileName+".compact"), []byte("partial garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, got := open(t, dir, false)
	defer l.Close()
	if len(got) != 3 {
		t.Fatalf("replayed %d records, want 3", len(got))
	}
}

// When the directory cannot be made durable after a compaction's rename,
// the log fails like a failed Sync: nothing appended after it is
// acknowledged, and a restart replays a whole log.
func TestCompactionDirFsyncFailureStopsTheLog(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 3)
	l, got := open(t, dir, false)
	l.syncDir = func(string) error { return errors.New("injected EIO") }
	if err := l.Compact(func(yield func([]byte) bool) {
		for _, p := range got {
			if !yield(p) {
				return
			}
		}
	}); err == nil || !strings.Contains(err.Error(), "injected EIO") {
		t.Fatalf("Compact: %v, want the directory fsync error", err)
	}
	l.Append(payload(9))
	if err := l.Sync(); err == nil {
		t.Fatal("Sync after a failed compaction succeeded")
	}
	l.Close()
	l2, again := open(t, dir, false)
	defer l2.Close()
	if len(again) != 3 {
		t.Fatalf("replayed %d records, want the 3 compacted ones", len(again))
	}
}

// A second relayer on the same data directory is refused, before it
// touches anything (here: a compaction in progress), and still after a
// compaction replaced the log's file.
func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, false)
	defer l.Close()
	inProgress := filepath.Join(dir, FileName+".compact")
	if err := os.WriteFile(inProgress, []byte("being written"), 0o644); err != nil {
		t.Fatal(err)
	}
	refused := func() {
		t.Helper()
		if l2, err := Open(dir, Options{}); err == nil {
			l2.Close()
			t.Fatal("second Open of the same data dir succeeded")
		} else if !strings.Contains(err.Error(), "DATA_DIR") {
			t.Fatalf("error does not explain itself: %v", err)
		}
	}
	refused()
	if _, err := os.Stat(inProgress); err != nil {
		t.Fatalf("the refused Open removed the owner's compaction file: %v", err)
	}
	os.Remove(inProgress)
	if err := l.Compact(func(yield func([]byte) bool) {}); err != nil {
		t.Fatal(err)
	}
	refused()
}

func BenchmarkAppendSync(b *testing.B) {
	p := payload(1)
	for _, fsync := range []bool{false, true} {
		for _, batch := range []int{1, 100} {
			b.Run(fmt.Sprintf("fsync=%v/batch=%d", fsync, batch), func(b *testing.B) {
				l, _ := open(b, b.TempDir(), fsync)
				defer l.Close()
				b.SetBytes(int64(len(p) * batch))
				b.ReportAllocs()
				for b.Loop() {
					for range batch {
						l.Append(p)
					}
					if err := l.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// A key-only record reads back as one; a message record does not.
func TestKeyOnlyRecord(t *testing.T) {
	rec, err := DecodeRecord(AppendKeyRecord(nil, "m\"1", "inst-a", "lobby", 42))
	if err != nil {
		t.Fatal(err)
	}
	if !rec.KeyOnly() || rec.MID != "m\"1" || rec.Inst != "inst-a" || rec.Room != "lobby" || rec.Seq != 42 {
		t.Fatalf("key-only record read back as %+v", rec)
	}
	msg := AppendRecord(nil, "m2", "inst-a", []byte(`{"room":"lobby","seq":7,"from":"a","uid":"u","id":"c","text":"hi","ts":1}`))
	if rec, err := DecodeRecord(msg); err != nil || rec.KeyOnly() || rec.Msg.Seq != 7 {
		t.Fatalf("message record read back as %+v, %v", rec, err)
	}
}

// A client's session and id read back from both kinds of record, and the
// hand-built JSON is what encoding/json would write.
func TestSessionRecords(t *testing.T) {
	m := protocol.Message{Room: "lobby", Seq: 7, ID: "c\"1", Text: "hi", TS: 1}
	js, _ := json.Marshal(m)
	got := AppendSessionRecord(nil, "m2", "inst-a", "s\"é", js)
	want, _ := json.Marshal(Record{MID: "m2", Inst: "inst-a", Sess: "s\"é", Msg: m})
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendSessionRecord\n got %s\nwant %s", got, want)
	}
	if rec, err := DecodeRecord(got); err != nil || rec.KeyOnly() || rec.Sess != "s\"é" || rec.Msg != m {
		t.Fatalf("message record read back as %+v, %v", rec, err)
	}
	rec, err := DecodeRecord(AppendSessionKeyRecord(nil, "s\"é", "c\"1", "lobby", 42))
	if err != nil || !rec.KeyOnly() || rec.Sess != "s\"é" || rec.CID != "c\"1" || rec.Room != "lobby" || rec.Seq != 42 || rec.MID != "" {
		t.Fatalf("session key-only record read back as %+v, %v", rec, err)
	}
}

// The epoch lives as long as the log: a reopened log keeps it, a new log
// (its file gone) gets a new one.
func TestEpochLivesWithTheLog(t *testing.T) {
	dir := t.TempDir()
	open := func() string {
		t.Helper()
		l, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := l.Replay(func([]byte) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if len(l.Epoch()) != 32 {
			t.Fatalf("epoch %q", l.Epoch())
		}
		return l.Epoch()
	}
	first := open()
	if again := open(); again != first {
		t.Fatalf("reopened log: epoch %s, was %s", again, first)
	}
	if err := os.Remove(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	if fresh := open(); fresh == first {
		t.Fatal("a new log kept the old epoch")
	}
}

// The scan for intact records past the damage reads the log a window at a
// time, and finds one more than a window away; past damage that runs to
// the end, it finds none and the epoch stays.
func TestDamageScanCrossesWindows(t *testing.T) {
	for _, tc := range []struct {
		name     string
		toEnd    bool
		newEpoch bool
	}{{"intact records after 1.5 MiB of damage", false, true}, {"damage to the end", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			offs, path := writeLog(t, dir, 30000) // about 3 MiB
			before := epochOf(t, dir)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			from, to := offs[2], offs[2]+3<<19
			if tc.toEnd {
				st, _ := f.Stat()
				to = st.Size()
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{' '}, int(to-from)), from); err != nil {
				t.Fatal(err)
			}
			f.Close()
			l, got := open(t, dir, false)
			defer l.Close()
			if len(got) != 2 {
				t.Fatalf("kept %d records, want 2", len(got))
			}
			if changed := l.Epoch() != before; changed != tc.newEpoch {
				t.Fatalf("epoch changed: %v, want %v", changed, tc.newEpoch)
			}
		})
	}
}

func epochOf(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, EpochName))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
