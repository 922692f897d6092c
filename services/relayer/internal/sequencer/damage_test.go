package sequencer

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wschat/wschat/services/protocol/link"
	"github.com/wschat/wschat/services/relayer/internal/linktest"
	"github.com/wschat/wschat/services/relayer/internal/store"
)

// recordOffsets returns where each record of the log at path starts.
func recordOffsets(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for off := 0; off+8 <= len(b); off += 8 + int(binary.LittleEndian.Uint32(b[off:])) {
		offs = append(offs, int64(off))
	}
	return offs
}

func flipBytes(t *testing.T, path string, off int64, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(n) {
		b[off+i] ^= 0x55
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Whatever happened to the log, a restarted relayer never hands out a
// number it handed out before under the same epoch: where acknowledged
// records may be gone it makes a new one, where the damage lies past
// everything acknowledged (a write torn by a crash) it keeps its epoch and
// its numbers. A corrupt record in the middle costs that record only.
func TestRestartOnADamagedLogNeverReusesASeq(t *testing.T) {
	const n = 200
	for _, tc := range []struct {
		name     string
		damage   func(t *testing.T, path string, offs []int64)
		newEpoch bool
		last     uint64 // the room's last seq after the restart
		lost     float64
	}{
		{"cut inside the last acknowledged record", func(t *testing.T, path string, offs []int64) {
			st, _ := os.Stat(path)
			os.Truncate(path, st.Size()-5)
		}, true, n - 1, 0},
		{"last record torn after its header", func(t *testing.T, path string, offs []int64) {
			os.Truncate(path, offs[n-1]+10)
		}, true, n - 1, 0},
		{"cut at the last record's start", func(t *testing.T, path string, offs []int64) {
			os.Truncate(path, offs[n-1])
		}, true, n - 1, 0},
		{"flipped bytes in the last record", func(t *testing.T, path string, offs []int64) {
			flipBytes(t, path, offs[n-1]+20, 4)
		}, true, n - 1, 0},
		{"flipped bytes in record 100 of 200", func(t *testing.T, path string, offs []int64) {
			flipBytes(t, path, offs[99]+20, 4)
		}, true, n, 1},
		{"a write torn past everything acknowledged", func(t *testing.T, path string, offs []int64) {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, '{', '"'}) // a batch's first bytes
		}, false, n, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			h := start(t, dir, nil)
			p := h.dial("p")
			p.Sync()
			var frames []*link.Frame
			for i := range n {
				frames = append(frames, linktest.PubFrame(fmt.Sprint("old", i), "r", "old"))
			}
			p.Send(frames...)
			handed := map[uint64]string{} // seq → mid
			for range n {
				a := p.Expect(link.OpAck)
				handed[a.Seq] = a.MID
			}
			epoch := h.s.st.Epoch()
			if err := h.stop(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, store.FileName)
			tc.damage(t, path, recordOffsets(t, path))

			h2 := start(t, dir, nil)
			if changed := h2.s.st.Epoch() != epoch; changed != tc.newEpoch {
				t.Fatalf("epoch changed: %v, want %v (logs: %s)", changed, tc.newEpoch, h2.logs.String())
			}
			c := h2.dial("p")
			if sub := c.Sync(link.RoomState{Room: "r"})[0]; sub.Seq != tc.last {
				t.Fatalf("room r at seq %d after the restart, want %d", sub.Seq, tc.last)
			}
			for i := range 5 {
				c.Pub(fmt.Sprint("new", i), "r", "new")
				a := c.Next()
				for a.T == link.OpMsg { // its own message: c subscribes r
					a = c.Next()
				}
				if a.T != link.OpAck {
					t.Fatalf("got %+v, want an ack", a)
				}
				if mid, ok := handed[a.Seq]; ok && h2.s.st.Epoch() == epoch {
					t.Fatalf("seq %d handed out again under epoch %s: to %s, before to %s", a.Seq, epoch, a.MID, mid)
				}
			}
			if got := testutil.ToFloat64(h2.s.m.lostMsgs); got != tc.lost {
				t.Errorf("log_lost_messages_total %v, want %v", got, tc.lost)
			}
		})
	}
}
