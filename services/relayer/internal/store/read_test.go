package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The offsets Replay reports and End predicts are where ReadRecord and a
// Scanner find the records, also records larger than a scan window; a
// Reader keeps reading the log it was opened on after a compaction.
func TestReadByOffset(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, false)
	var offs []int64
	var want [][]byte
	for i := 1; i <= 50; i++ {
		p := payload(i)
		if i == 25 {
			p = AppendRecord(nil, "big", "i1", []byte(`{"room":"r","message":"`+strings.Repeat("b", scanWindow)+`"}`))
		}
		offs = append(offs, l.End())
		want = append(want, p)
		l.Append(p)
		if i%7 == 0 {
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var replayed []int64
	if err := l.Replay(func([]byte) error { replayed = append(replayed, l.ReplayOffset()); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(replayed, offs) {
		t.Fatalf("replay offsets %v, want %v", replayed, offs)
	}
	r, err := l.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	check := func(when string) {
		t.Helper()
		sc := r.Scanner()
		for i, off := range offs {
			p, err := r.ReadRecord(off, nil)
			if err != nil || !bytes.Equal(p, want[i]) {
				t.Fatalf("%s: ReadRecord(%d) = %.40q, %v", when, off, p, err)
			}
			if i%3 == 0 {
				continue // the scanner skips some
			}
			if p, err = sc.Record(off); err != nil || !bytes.Equal(p, want[i]) {
				t.Fatalf("%s: Scanner.Record(%d) = %.40q, %v", when, off, p, err)
			}
		}
	}
	check("replayed")
	if err := l.Compact(slices.Values(want[:3])); err != nil {
		t.Fatal(err)
	}
	check("after a compaction replaced the file")

	if _, err := r.ReadRecord(offs[1]+1, nil); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("read between records: %v, want ErrBadRecord", err)
	}
	if _, err := r.ReadRecord(1<<30, nil); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("read past the end: %v, want ErrBadRecord", err)
	}
	// A record damaged on disk after it was written is refused.
	f, err := os.OpenFile(filepath.Join(dir, FileName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), RecordSize(want[0])+headerSize+3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r2, err := l.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := r2.ReadRecord(RecordSize(want[0]), nil); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("damaged record: %v, want ErrBadRecord", err)
	}
	if _, err := r2.Scanner().Record(RecordSize(want[0])); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("damaged record through a Scanner: %v, want ErrBadRecord", err)
	}
}

// CompactChecked's check failing leaves the log as it was.
func TestCompactCheckedAbandons(t *testing.T) {
	dir := t.TempDir()
	l, _ := open(t, dir, false)
	for i := 1; i <= 3; i++ {
		l.Append(payload(i))
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	size := l.Size()
	boom := errors.New("a record could not be read")
	if err := l.CompactChecked(slices.Values([][]byte{payload(3)}), func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("CompactChecked = %v, want the check's error", err)
	}
	if l.Size() != size {
		t.Fatalf("size %d after an abandoned compaction, want %d", l.Size(), size)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, got := open(t, dir, false)
	defer l.Close()
	if len(got) != 3 {
		t.Fatalf("%d records after an abandoned compaction, want 3", len(got))
	}
	if _, err := os.Stat(filepath.Join(dir, FileName+".compact")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("compaction file left behind: %v", err)
	}
}
