package load

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestWriteTable(t *testing.T) {
	fan := Result{Label: "W1", Mode: "fanout", Protocol: "seed", Rooms: 100, Members: 10, Publishers: 1, RatePerPublisher: 40,
		Conns: 1000, DeliveredPerSec: 40000, Latency: &Latency{P50: 1.5, P99: 9.25, Max: 20},
		Server: &Usage{CPUPercent: 80, CPUPerMsgUs: 20.04, MemPerConn: 75000}, Tier: &Usage{CPUPercent: 30, CPUPerPublishUs: 75.04}}
	idle := Result{Label: "W3", Mode: "idle", Protocol: "extended", Conns: 19000, TotalConns: 38000, HoldS: 10,
		Server: &Usage{MemPerConn: 21500}}
	storm := Result{Label: "W4", Mode: "storm", Protocol: "extended", URLs: []string{"ws://a/ws", "ws://b/ws"}, Conns: 19000, Setup: &Latency{P50: 3, P99: 90, Max: 120},
		Storm: &Storm{BestRate: 3375, BestRatePerInstance: 1687.5, PeakAchieved: 6100, PeakAchievedPerInstance: 3050, Stopped: "failure"}}
	burst := Result{Label: "W4b", Mode: "burst", Protocol: "seed", URLs: []string{"ws://a/ws", "ws://b/ws"}, Conns: 19000, Setup: &Latency{P50: 12, P99: 70.4, Max: 130},
		Burst: &Burst{Concurrency: 128, WallS: 2.5, Rate: 7600, RatePerInstance: 3800, ServerCPUPerConnUs: 180, TCPDrops: map[string]int64{"ListenDrops": 3}}, Server: &Usage{CPUPercent: 95}}
	floor := Result{Label: "floor", Mode: "floor", Conns: 1000, RatePerPublisher: 40000, DeliveredPerSec: 40000,
		Server: &Usage{CPUPercent: 25, CPUPerMsgUs: 8}}
	farFloor := Result{Label: "floor", Mode: "floor", Conns: 1000, RatePerPublisher: 400000, DeliveredPerSec: 400000,
		Server: &Usage{CPUPercent: 90, CPUPerMsgUs: 2}}
	var in strings.Builder
	for _, r := range []Result{fan, idle, idle, storm, burst, floor, farFloor} { // two idle generator processes
		b, _ := json.Marshal(r)
		in.Write(append(b, '\n'))
	}
	var out strings.Builder
	if err := WriteTable(strings.NewReader(in.String()), &out); err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 8 {
		t.Fatalf("want header, separator and 6 rows (the idle run once), got:\n%s", out.String())
	}
	for i, want := range []string{
		// 20.04 µs against the floor nearest in rate, 8 µs at 40,000/s.
		"| W1 | seed | 1000 | 40000 | 1.5 / 9.2 / 20 | 20.0 µs | 2.50 | 80 % | 75.0 KB | 0 / 0 / 0 | 100 rooms × 10, 1 pub/room at 40/s; relay tier 75.0 µs per publish (30 % of a core) |",
		"| W3 | extended | 38000 | – | – | – | – | 0 % | 21.5 KB |",
		"storm on 2 instance(s): sustained 3375 conn/s (1688 per instance), peak achieved 6100 (3050 per instance), stopped by failure",
		"| W4b | seed | 19000 | – | setup 12 / 70 / 130 | – | – | 95 % | – | – | burst: 128 at a time over 2 instance(s), all set up in 2.50 s: 7600 conn/s (3800 per instance), 180 µs of server CPU each; kernel: map[ListenDrops:3] |",
		"| floor | – | 1000 | 40000 | – | 8.0 µs | – | 25 % |",
	} {
		if !strings.Contains(rows[2+i], want) {
			t.Fatalf("row %d = %q, want it to contain %q", i, rows[2+i], want)
		}
	}
	if err := WriteTable(strings.NewReader("not json\n"), &out); err == nil {
		t.Fatal("garbage input accepted")
	}
}
