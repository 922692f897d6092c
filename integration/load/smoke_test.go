package load

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// runLoad runs the generator as the command would and parses its JSON line.
func runLoad(t *testing.T, args ...string) *Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	getenv := func(k string) string { return map[string]string{"LOG_LEVEL": "warn"}[k] }
	if err := Run(ctx, append([]string{"wsload"}, args...), getenv, &stdout, &stderr); err != nil {
		t.Fatalf("wsload %v: %v\n%s", args, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one JSON line, got %q", stdout.String())
	}
	var res Result
	if err := json.Unmarshal([]byte(lines[0]), &res); err != nil {
		t.Fatalf("result %q: %v", lines[0], err)
	}
	t.Logf("%s", stderr.String())
	return &res
}

func TestSmokeFanout(t *testing.T) {
	users := startCluster(t, 2)
	urls := fmt.Sprintf("ws://%s/ws,ws://%s/ws", users[0].Addr, users[1].Addr)
	for _, proto := range []string{"extended", "seed"} {
		t.Run(proto, func(t *testing.T) {
			res := runLoad(t, "-protocol", proto, "-urls", urls, "-rooms", "4", "-members", "5",
				"-publishers", "2", "-rate", "20", "-warmup", "300ms", "-duration", "1s", "-drain", "3s",
				"-pids", fmt.Sprint(os.Getpid()), "-tier-pids", fmt.Sprint(os.Getpid()), "-prefix", "smoke-"+proto)
			if res.Conns != 20 || res.ConnectFailed != 0 {
				t.Fatalf("conns %d, failed %d", res.Conns, res.ConnectFailed)
			}
			// 8 publishers at 20/s for 1 s, each message to 5 members.
			if res.Sent < 8*18 || res.Expected != res.Sent*5 {
				t.Fatalf("sent %d, expected %d", res.Sent, res.Expected)
			}
			if res.Lost != 0 || res.Duplicated != 0 || res.OutOfOrder != 0 || res.Delivered != res.Expected || res.ErrorCount != 0 {
				t.Fatalf("delivery: %+v", res)
			}
			l := res.Latency
			if l == nil || l.Count != res.Delivered || !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Fatalf("latency %+v", l)
			}
			if res.Connect == nil || res.Connect.Count != 20 || res.Connect.P99 <= 0 {
				t.Fatalf("connect %+v", res.Connect)
			}
			if proto == "extended" && (res.Acked < res.Sent || res.Join.Count != 20) {
				t.Fatalf("acked %d of %d, joins %+v", res.Acked, res.Sent, res.Join)
			}
			s := res.Server
			if s == nil || s.CPUMicros <= 0 || s.MemEnd <= 0 || s.CPUPerMsgUs <= 0 {
				t.Fatalf("server usage %+v", s)
			}
			// The relay tier here is this process, the servers too: its CPU
			// is apart, over the messages sent and over those delivered.
			tier := res.Tier
			if tier == nil || tier.CPUMicros <= 0 || tier.CPUPerPublishUs <= 0 || tier.CPUPerMsgUs <= 0 ||
				math.Abs(tier.CPUPerPublishUs-float64(tier.CPUMicros)/float64(res.Sent)) > 0.01 ||
				tier.CPUPerPublishUs < tier.CPUPerMsgUs {
				t.Fatalf("relay tier usage %+v (sent %d, delivered %d)", tier, res.Sent, res.Delivered)
			}
		})
	}
}

func TestSmokeIdleAndStorm(t *testing.T) {
	users := startCluster(t, 2)
	urls := fmt.Sprintf("ws://%s/ws,ws://%s/ws", users[0].Addr, users[1].Addr)
	pid := fmt.Sprint(os.Getpid())
	res := runLoad(t, "-mode", "idle", "-urls", urls, "-conns", "30", "-members", "10", "-hold", "200ms", "-pids", pid)
	if res.Conns != 30 || res.ErrorCount != 0 || res.Server == nil || res.Server.MemEnd <= 0 || res.Setup.Count != 30 {
		t.Fatalf("idle: %+v", res)
	}
	res = runLoad(t, "-mode", "storm", "-protocol", "seed", "-urls", urls, "-conns", "60", "-members", "10",
		"-storm-start", "50", "-storm-factor", "2", "-storm-step", "400ms", "-storm-max-p99", "5s")
	st := res.Storm
	// 20 conns at 50/s, then 40 at 100/s (sustained at what it achieved:
	// at least 90 of them a second), then the cap.
	if st == nil || len(st.Steps) != 2 || st.Stopped != "cap" || st.BestRate < 90 || st.BestRate > 100 ||
		st.BestRatePerInstance != round(st.BestRate/2) || res.Conns != 60 ||
		st.PeakAchieved < st.Steps[0].Achieved || st.PeakAchievedPerInstance != round(st.PeakAchieved/2) {
		t.Fatalf("storm: %+v %+v", res, st)
	}
	res = runLoad(t, "-mode", "burst", "-protocol", "seed", "-urls", urls, "-conns", "60", "-members", "10",
		"-connect-concurrency", "8", "-pids", fmt.Sprint(os.Getpid()))
	bu := res.Burst
	if bu == nil || res.Conns != 60 || res.ConnectFailed != 0 || res.Setup.Count != 60 || bu.Concurrency != 8 || bu.WallS <= 0 ||
		math.Abs(bu.Rate*bu.WallS-60) > 0.005*bu.Rate+1 || bu.RatePerInstance != math.Round(bu.Rate/2) || bu.ServerCPUPerConnUs <= 0 {
		t.Fatalf("burst: %+v %+v", res, bu)
	}
	// A rate no server can reach (40 setups completing within 10 µs) is
	// not "sustained", even though every connection succeeds; nor is half
	// of it, the one bisection step the cap leaves room for.
	res = runLoad(t, "-mode", "storm", "-protocol", "seed", "-urls", urls, "-conns", "65", "-members", "10",
		"-storm-start", "4000000", "-storm-max-rate", "4000000", "-storm-step", "10us", "-storm-min-achieved", "1")
	if st := res.Storm; st == nil || len(st.Steps) != 2 || st.Steps[0].OK || st.Steps[1].OK || !st.Steps[1].Refine ||
		st.Steps[1].Rate != 2000000 || st.Steps[1].Conns != 20 || res.Conns != 60 || st.Stopped != "failure" || st.BestRate != 0 {
		t.Fatalf("storm beyond reach: %+v %+v", res, st)
	}
	// The same step cut short by the cap ends the storm at the cap: its
	// rate is not judged, and it is not a sustained rate either.
	res = runLoad(t, "-mode", "storm", "-protocol", "seed", "-urls", urls, "-conns", "30", "-members", "10",
		"-storm-start", "4000000", "-storm-max-rate", "4000000", "-storm-step", "10us", "-storm-min-achieved", "1")
	if st := res.Storm; st == nil || len(st.Steps) != 1 || !st.Steps[0].Partial || !st.Steps[0].OK || st.Stopped != "cap" || st.BestRate != 0 {
		t.Fatalf("storm cut by the cap: %+v", st)
	}
}
