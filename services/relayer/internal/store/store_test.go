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

// damageCase is one way a log of five records (all acknowledged: the
// mark is at its end) can be damaged, and what replay must make of it.
type damageCase struct {
	name   string
	damage func(t *testing.T, dir, path string, offs []int64)
	kept   []int // the records replayed, by number
	// newEpoch: acknowledged records may be gone, so the numbers of the
	// log must not be handed out again under its epoch.
	newEpoch bool
	copied   bool   // the damaged log is kept aside, byte for byte
	lost     string // the "lost" the error names
}

func TestTornAndCorruptTails(t *testing.T) {
	cases := []damageCase{
		// Past the mark: a write torn by a crash, which nobody was told of.
		{name: "torn header past the mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			appendBytes(t, path, []byte{1, 2, 3})
		}, kept: []int{1, 2, 3, 4, 5}},
		{name: "torn record past the mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			appendBytes(t, path, recordBytes(payload(6))[:20])
		}, kept: []int{1, 2, 3, 4, 5}},
		{name: "zero length past the mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			appendBytes(t, path, make([]byte, 16))
		}, kept: []int{1, 2, 3, 4, 5}},
		{name: "huge length past the mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			appendBytes(t, path, []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 'x'})
		}, kept: []int{1, 2, 3, 4, 5}},
		// Below the mark: acknowledged records are gone.
		{name: "cut inside an acknowledged record", damage: func(t *testing.T, dir, path string, offs []int64) {
			st, _ := os.Stat(path)
			os.Truncate(path, st.Size()-4)
		}, kept: []int{1, 2, 3, 4}, newEpoch: true, copied: true},
		{name: "cut inside an acknowledged header", damage: func(t *testing.T, dir, path string, offs []int64) {
			os.Truncate(path, offs[4]+3)
		}, kept: []int{1, 2, 3, 4}, newEpoch: true, copied: true},
		{name: "cut at an acknowledged record's start", damage: func(t *testing.T, dir, path string, offs []int64) {
			os.Truncate(path, offs[3])
		}, kept: []int{1, 2, 3}, newEpoch: true},
		{name: "corrupt last record", damage: func(t *testing.T, dir, path string, offs []int64) {
			flipByte(t, path, offs[4]+headerSize+3)
		}, kept: []int{1, 2, 3, 4}, newEpoch: true, copied: true},
		{name: "corrupt record in the middle", damage: func(t *testing.T, dir, path string, offs []int64) {
			flipByte(t, path, offs[2]+headerSize+3)
		}, kept: []int{1, 2, 4, 5}, newEpoch: true, copied: true, lost: `"r" 3-3`},
		// No mark (an older relayer's directory): nothing proves a torn
		// tail was never acknowledged.
		{name: "torn tail without a mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			if err := os.Remove(filepath.Join(dir, MarkName)); err != nil {
				t.Fatal(err)
			}
			appendBytes(t, path, []byte{1, 2, 3})
		}, kept: []int{1, 2, 3, 4, 5}, newEpoch: true, copied: true},
		{name: "torn tail with a damaged mark", damage: func(t *testing.T, dir, path string, offs []int64) {
			flipByte(t, filepath.Join(dir, MarkName), 3)
			appendBytes(t, path, []byte{1, 2, 3})
		}, kept: []int{1, 2, 3, 4, 5}, newEpoch: true, copied: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			offs, path := writeLog(t, dir, 5)
			checkDamage(t, dir, path, offs, tc)
		})
	}
}

// Four flipped bytes inside record 100 of 200: the 199 intact records are
// all kept, the damaged log is kept aside as it was, and exactly record
// 100 is named lost.
func TestCorruptRecordInTheMiddleIsSalvaged(t *testing.T) {
	dir := t.TempDir()
	offs, path := writeLog(t, dir, 200)
	var kept []int
	for i := 1; i <= 200; i++ {
		if i != 100 {
			kept = append(kept, i)
		}
	}
	checkDamage(t, dir, path, offs, damageCase{
		damage: func(t *testing.T, dir, path string, offs []int64) {
			for k := range int64(4) {
				flipByte(t, path, offs[99]+headerSize+20+k)
			}
		},
		kept: kept, newEpoch: true, copied: true, lost: `"r" 100-100`,
	})
}

// checkDamage damages the log of writeLog as tc says, replays it and
// checks what replay made of it, then that the repaired log replays the
// same records under the same epoch and takes appends.
func checkDamage(t *testing.T, dir, path string, offs []int64, tc damageCase) {
	t.Helper()
	before := epochOf(t, dir)
	tc.damage(t, dir, path, offs)
	damaged, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	l, err := Open(dir, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	if err := l.Replay(func(p []byte) error {
		r, err := DecodeRecord(p)
		if err != nil || !bytes.Equal(p, payload(int(r.Msg.Seq))) {
			t.Errorf("replayed %s", p)
		}
		got = append(got, int(r.Msg.Seq))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, tc.kept) {
		t.Fatalf("replayed records %v, want %v", got, tc.kept)
	}
	if changed := l.Epoch() != before; changed != tc.newEpoch {
		t.Fatalf("epoch changed: %v, want %v (logs: %s)", changed, tc.newEpoch, logs.String())
	}
	if epochOf(t, dir) != l.Epoch() {
		t.Fatal("the new epoch is not the directory's")
	}
	copies, _ := filepath.Glob(path + ".damaged-*")
	if tc.copied {
		if len(copies) != 1 {
			t.Fatalf("copies of the damaged log: %v", copies)
		}
		if b, err := os.ReadFile(copies[0]); err != nil || !bytes.Equal(b, damaged) {
			t.Fatalf("the copy %s is not the damaged log as it was (%d bytes, want %d): %v", copies[0], len(b), len(damaged), err)
		}
	} else if len(copies) != 0 {
		t.Fatalf("a damaged log copied needlessly: %v", copies)
	}
	entry := damageLog(t, logs.String())
	if entry == nil {
		t.Fatalf("the damage is not logged: %q", logs.String())
	}
	if level := entry["level"]; (level == "ERROR") != tc.newEpoch {
		t.Errorf("logged at %v, want ERROR exactly when acknowledged records may be lost", level)
	}
	if lost, _ := entry["lost"].(string); lost != tc.lost {
		t.Errorf("logged lost %q, want %q", lost, tc.lost)
	}
	if tc.copied && entry["copy"] != copies[0] {
		t.Errorf("the log names the copy %v, want %s", entry["copy"], copies[0])
	}
	// The repaired log replays the same records, whole, under the same
	// epoch, and continues cleanly.
	next := tc.kept[len(tc.kept)-1] + 1
	l.Append(payload(next))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	l, err = Open(dir, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var again [][]byte
	if err := l.Replay(func(p []byte) error { again = append(again, bytes.Clone(p)); return nil }); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for _, i := range append(tc.kept, next) {
		want = append(want, payload(i))
	}
	if !slices.EqualFunc(again, want, bytes.Equal) || l.Epoch() != epochOf(t, dir) || logs.Len() > 0 {
		t.Fatalf("after repair and append: %d records, want %d; logs %q", len(again), len(want), logs.String())
	}
}

// damageLog returns the logged entry about the log's damage.
func damageLog(t *testing.T, logs string) map[string]any {
	t.Helper()
	for line := range strings.Lines(logs) {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if msg, _ := e["msg"].(string); strings.Contains(msg, "log") && (e["level"] == "ERROR" || e["level"] == "WARN") {
			return e
		}
	}
	return nil
}

// recordBytes is payload p as a record on disk.
func recordBytes(p []byte) []byte {
	l := Log{}
	l.Append(p)
	return l.buf
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
// time, and finds the next one more than a window away; damage that runs
// to the end leaves the records before it.
func TestDamageScanCrossesWindows(t *testing.T) {
	for _, toEnd := range []bool{false, true} {
		t.Run(fmt.Sprint("to the end ", toEnd), func(t *testing.T) {
			dir := t.TempDir()
			offs, path := writeLog(t, dir, 30000) // about 3 MiB
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			from, to := offs[2], offs[2]+3<<19 // 1.5 MiB of damage
			if toEnd {
				st, _ := f.Stat()
				to = st.Size()
			}
			if _, err := f.WriteAt(bytes.Repeat([]byte{' '}, int(to-from)), from); err != nil {
				t.Fatal(err)
			}
			f.Close()
			var want [][]byte
			for i, off := range offs {
				if i < 2 || off >= to {
					want = append(want, payload(i+1))
				}
			}
			l, got := open(t, dir, false)
			defer l.Close()
			if !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("kept %d records, want %d", len(got), len(want))
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

// crash lets go of l as a killed process would: no final sync, no mark.
func crash(l *Log) {
	l.f.Close()
	l.markF.Close()
	l.unlock()
	l.lock.Close()
}

// The mark follows every Sync and compaction, so after a crash (no Close)
// a write torn past it keeps the epoch, and a log cut below it does not.
func TestMarkFollowsSyncAndCompaction(t *testing.T) {
	for _, tc := range []struct {
		name     string
		compact  bool
		cut      bool // cut inside the last synced record instead of tearing a write past it
		newEpoch bool
	}{
		{"torn write after syncs", false, false, false},
		{"torn write after a compaction", true, false, false},
		{"cut after syncs", false, true, true},
		{"cut after a compaction", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _ := open(t, dir, true)
			for i := 1; i <= 5; i++ {
				l.Append(payload(i))
				if err := l.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			want := []int{1, 2, 3, 4, 5}
			if tc.compact {
				if err := l.Compact(slices.Values([][]byte{payload(4), payload(5)})); err != nil {
					t.Fatal(err)
				}
				want = []int{4, 5}
			}
			if m, ok := readMark(l.markF); !ok || m != l.Size() {
				t.Fatalf("mark %d (%v), log size %d", m, ok, l.Size())
			}
			size := l.Size()
			before := l.Epoch()
			crash(l)
			path := filepath.Join(dir, FileName)
			if tc.cut {
				os.Truncate(path, size-1)
				want = want[:len(want)-1]
			} else {
				appendBytes(t, path, recordBytes(payload(6))[:30]) // the start of a batch a kill -9 cut short
			}
			l, got := open(t, dir, true)
			defer l.Close()
			if len(got) != len(want) || !bytes.Equal(got[len(got)-1], payload(want[len(want)-1])) {
				t.Fatalf("replayed %d records, want %v", len(got), want)
			}
			if changed := l.Epoch() != before; changed != tc.newEpoch {
				t.Fatalf("epoch changed: %v, want %v", changed, tc.newEpoch)
			}
		})
	}
}

// A data directory whose log was deleted starts a new log whatever its
// old mark says: nothing of the new log is missing.
func TestNewLogIgnoresAnOldMark(t *testing.T) {
	dir := t.TempDir()
	writeLog(t, dir, 3)
	os.Remove(filepath.Join(dir, FileName))
	var logs bytes.Buffer
	l, err := Open(dir, Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Replay(func([]byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if logs.Len() > 0 {
		t.Fatalf("a new log reported damage: %s", logs.String())
	}
}

// An earlier copy of a damaged log is never overwritten.
func TestDamagedCopiesAccumulate(t *testing.T) {
	dir := t.TempDir()
	_, path := writeLog(t, dir, 3)
	for range 2 {
		st, _ := os.Stat(path)
		os.Truncate(path, st.Size()-1)
		l, _ := open(t, dir, false)
		l.Close()
	}
	copies, _ := filepath.Glob(path + ".damaged-*")
	if len(copies) != 2 {
		t.Fatalf("copies %v, want two", copies)
	}
}

// Without a copy of the damaged log (no space for it, say), replay fails
// with an error that says what to do, and changes nothing.
func TestNoRepairWithoutACopy(t *testing.T) {
	dir := t.TempDir()
	offs, path := writeLog(t, dir, 5)
	flipByte(t, path, offs[2]+headerSize+3)
	damaged, _ := os.ReadFile(path)
	before := epochOf(t, dir)
	l, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.syncDir = func(string) error { return errors.New("injected ENOSPC") }
	err = l.Replay(func([]byte) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "free") || !strings.Contains(err.Error(), "injected ENOSPC") {
		t.Fatalf("Replay: %v, want an error about the copy", err)
	}
	after, _ := os.ReadFile(path)
	copies, _ := filepath.Glob(path + ".damaged-*")
	if !bytes.Equal(after, damaged) || epochOf(t, dir) != before || len(copies) != 0 {
		t.Fatalf("a failed copy changed things: log same %v, epoch same %v, copies %v",
			bytes.Equal(after, damaged), epochOf(t, dir) == before, copies)
	}
}
