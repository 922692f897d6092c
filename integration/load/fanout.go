package load

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// window is the measured interval of scheduled send times. Receivers read
// it while the main goroutine sets it, hence atomics.
type window struct{ start, end atomic.Int64 }

type room struct {
	name     string
	members  []*conn // joined members, fixed before traffic starts
	firstPub int     // global id of its first publisher
	perPub   int     // bound on the counter of each publisher
	lat      *recorder
	win      *window

	ready atomic.Int64 // seed: members that saw a message of the room
	sent  atomic.Int64 // measured messages written
}

func (rm *room) measured(sched int64) bool {
	return sched >= rm.win.start.Load() && sched < rm.win.end.Load()
}

func roomName(prefix string, k int) string { return fmt.Sprintf("%s-r%d", prefix, k) }

func (r *runner) fanout(ctx context.Context) (*Result, error) {
	cfg := r.cfg
	base, selfBase, err := r.sample()
	if err != nil {
		return nil, err
	}
	span := cfg.warmup + cfg.duration
	perPub := int(math.Ceil(span.Seconds()*cfg.rate)) + 1
	words := (perPub + 63) / 64
	win := &window{}
	win.start.Store(math.MaxInt64)
	win.end.Store(math.MaxInt64)
	lat := newRecorder(runtime.GOMAXPROCS(0) * 4)
	rooms := make([]*room, cfg.rooms)
	for k := range rooms {
		rooms[k] = &room{name: roomName(cfg.prefix, k), firstPub: k * cfg.publishers, perPub: perPub, lat: lat, win: win}
	}

	conns := make([]*conn, cfg.rooms*cfg.members)
	var readers sync.WaitGroup
	var failed atomic.Int64
	r.log.Info("connecting", "conns", len(conns), "urls", len(cfg.urls))
	r.openAll(ctx, len(conns), func(i int) {
		rm := rooms[i/cfg.members]
		ws, _, err := r.setup(ctx, i, rm.name)
		if err != nil {
			failed.Add(1)
			r.log.Debug("setup failed", "conn", i, "err", err)
			return
		}
		c := &conn{r: r, idx: i, ws: ws, room: rm, shard: i, words: words,
			bits: make([]uint64, cfg.publishers*words), maxSeen: make([]int32, cfg.publishers)}
		for p := range c.maxSeen {
			c.maxSeen[p] = -1
		}
		conns[i] = c
		readers.Go(c.readLoop)
	})
	defer r.closeAll(conns, &readers)
	established := 0
	for i, c := range conns {
		if c != nil {
			rm := rooms[i/cfg.members]
			rm.members = append(rm.members, c)
			established++
		}
	}
	if established == 0 {
		errs, _ := r.errs.snapshot()
		return nil, fmt.Errorf("no connection could be set up (%v)", errs)
	}
	if !cfg.extended() && !cfg.centrifugo() {
		r.awaitSeedJoins(ctx, rooms)
	}
	if cfg.settle > 0 {
		_ = r.sleepUntil(ctx, r.now()+int64(cfg.settle))
	}

	// The schedule: publisher g of G sends message i at
	// t0 + (g/G + i) / rate, spreading publishers evenly over an interval.
	interval := 1e9 / cfg.rate
	t0 := r.now() + int64(100*time.Millisecond)
	win.start.Store(t0 + int64(cfg.warmup))
	win.end.Store(t0 + int64(span))
	hardStop := t0 + int64(span) + int64(2*time.Second)

	type pubStat struct{ behind, unsent int64 }
	var pubs []*conn
	var pubIDs []int
	for _, rm := range rooms {
		for p := 0; p < cfg.publishers && p < len(rm.members); p++ {
			pubs = append(pubs, rm.members[p])
			pubIDs = append(pubIDs, rm.firstPub+p)
		}
	}
	stats := make([]pubStat, len(pubs))
	samples := make(chan [2]snap, 1)
	tierSamples := make(chan [2]snap, 1)
	selfSamples := make(chan [2]snap, 1)
	go r.sampleWindow(ctx, r.server, win, samples)
	go r.sampleWindow(ctx, r.tier, win, tierSamples)
	go r.sampleWindow(ctx, r.self, win, selfSamples)
	r.log.Info("traffic", "publishers", len(pubs), "rate", cfg.rate, "warmup", cfg.warmup, "duration", cfg.duration)
	var wg sync.WaitGroup
	for g, c := range pubs {
		offset := int64(float64(g) / float64(len(pubs)) * interval)
		wg.Go(func() {
			stats[g].behind, stats[g].unsent = r.publish(ctx, c, pubIDs[g], t0+offset, interval, t0+int64(span), hardStop)
		})
	}
	wg.Wait()
	win0 := <-samples
	tier0 := <-tierSamples
	self0 := <-selfSamples

	var expected int64
	for _, rm := range rooms {
		expected += rm.sent.Load() * int64(len(rm.members))
	}
	delivered := func() int64 {
		var n int64
		for _, c := range conns {
			if c != nil {
				n += c.delivered.Load()
			}
		}
		return n
	}
	// Drain: the last messages are still in flight. Polling the sum keeps
	// the receive path free of shared counters.
	drainEnd := r.now() + int64(cfg.drain)
	for delivered() < expected && r.now() < drainEnd && ctx.Err() == nil {
		_ = r.sleepUntil(ctx, r.now()+int64(10*time.Millisecond))
	}
	r.closeAll(conns, &readers)
	if err := ctx.Err(); err != nil {
		r.errs.add("run_"+errKind(err), 1)
	}

	res := r.result()
	res.Rooms, res.Members, res.Publishers = cfg.rooms, cfg.members, cfg.publishers
	res.RatePerPublisher = cfg.rate
	res.WarmupS, res.DurationS = cfg.warmup.Seconds(), cfg.duration.Seconds()
	res.Conns, res.ConnectFailed = established, int(failed.Load())
	for _, rm := range rooms {
		res.Sent += rm.sent.Load()
	}
	res.Expected = expected
	for _, c := range conns {
		if c == nil {
			continue
		}
		res.Delivered += c.delivered.Load()
		res.Duplicated += c.dups
		res.OutOfOrder += c.ooo
		res.Acked += c.acks
	}
	res.Lost = max(expected-res.Delivered, 0)
	for _, s := range stats {
		res.Unsent += s.unsent
		res.MaxBehindMs = max(res.MaxBehindMs, float64(s.behind)/1e6)
	}
	res.DeliveredPerSec = round(float64(res.Delivered) / cfg.duration.Seconds())
	res.Latency = summarize(lat.merged())
	if !r.server.empty() {
		res.Server = makeUsage(r.server, base, win0[0], win0[1], cfg.duration, established)
		if res.Delivered > 0 {
			res.Server.CPUPerMsgUs = round(float64(res.Server.CPUMicros) / float64(res.Delivered))
		}
	}
	if !r.tier.empty() {
		res.Tier = makeUsage(r.tier, tier0[0], tier0[0], tier0[1], cfg.duration, 0)
		if res.Delivered > 0 {
			res.Tier.CPUPerMsgUs = round(float64(res.Tier.CPUMicros) / float64(res.Delivered))
		}
		if res.Sent > 0 {
			res.Tier.CPUPerPublishUs = round(float64(res.Tier.CPUMicros) / float64(res.Sent))
		}
	}
	res.Generator = makeUsage(r.self, selfBase, self0[0], self0[1], cfg.duration, 0)
	if res.Unsent > 0 {
		r.errs.add("unsent", res.Unsent)
	}
	res.Errors, res.ErrorCount = r.errs.snapshot()
	return res, nil
}

// result fills what every mode reports.
// sample reads the CPU and memory of the servers under test and of the
// generator itself, at one moment.
func (r *runner) sample() (server, self snap, err error) {
	if server, err = r.server.sample(); err != nil {
		return server, self, fmt.Errorf("sample servers: %w", err)
	}
	if self, err = r.self.sample(); err != nil {
		return server, self, fmt.Errorf("sample the generator: %w", err)
	}
	return server, self, nil
}

func (r *runner) result() *Result {
	return &Result{
		Label:    r.cfg.label,
		Mode:     r.cfg.mode,
		Protocol: r.cfg.protocol,
		URLs:     urlsOf(r.cfg),
		Members:  r.cfg.members,
		Connect:  summarize(r.connectLat.merged()),
		Join:     summarize(r.joinLat.merged()),
		Setup:    summarize(r.setupLat.merged()),
	}
}

// sampleWindow samples u at the start and at the end of the window.
func (r *runner) sampleWindow(ctx context.Context, u usage, win *window, out chan<- [2]snap) {
	var s [2]snap
	_ = r.sleepUntil(ctx, win.start.Load())
	s[0], _ = u.sample()
	_ = r.sleepUntil(ctx, win.end.Load())
	s[1], _ = u.sample()
	out <- s
}

// publish sends one publisher's open-loop schedule: message i is due at
// first + i*interval and carries that time even when sent late. It returns
// how far behind schedule it fell at worst and how many messages it never
// sent.
func (r *runner) publish(ctx context.Context, c *conn, pubID int, first int64, interval float64, end, hardStop int64) (behind, unsent int64) {
	rm := c.room
	extended := r.cfg.extended()
	frame := make([]byte, 0, 256+r.cfg.size)
	text := make([]byte, 0, 64+r.cfg.size)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	n := 0
	for i := 0; ; i++ {
		sched := first + int64(float64(i)*interval)
		if sched >= end || i >= rm.perPub {
			break
		}
		n++
	}
	for i := range n {
		sched := first + int64(float64(i)*interval)
		now := r.now()
		if d := sched - now; d > 0 {
			timer.Reset(time.Duration(d))
			select {
			case <-timer.C:
			case <-ctx.Done():
				return behind, int64(n - i)
			}
		} else {
			behind = max(behind, -d)
			if now > hardStop {
				return behind, int64(n - i)
			}
		}
		text = appendLoadText(text[:0], pubID, i, sched)
		if pad := r.cfg.size - len(text); pad > 1 {
			text = append(text, ' ')
			for range pad - 1 {
				text = append(text, 'x')
			}
		}
		if r.cfg.centrifugo() {
			frame = appendCentrifugoPublish(frame[:0], rm.name, text, i)
		} else {
			frame = appendChatFrame(frame[:0], rm.name, text, extended, i)
		}
		if err := c.ws.writeFrame(opText, frame); err != nil {
			if !r.closing.Load() {
				r.errs.add("write_"+errKind(err), 1)
			}
			return behind, int64(n - i)
		}
		if rm.measured(sched) {
			rm.sent.Add(1)
		}
	}
	return behind, 0
}

// appendChatFrame encodes a client chat frame (protocol.Inbound) by hand:
// text is the generator's own ASCII, so it needs no escaping.
func appendChatFrame(dst []byte, room string, text []byte, withID bool, counter int) []byte {
	dst = append(dst, `{"type":"`+protocol.TypeChat+`","room":`...)
	dst = protocol.AppendString(dst, room)
	dst = append(dst, `,"message":"`...)
	dst = append(dst, text...)
	dst = append(dst, '"')
	if withID {
		// Extended clients get an ack per chat that repeats this id.
		dst = append(dst, `,"id":"c`...)
		dst = appendInt(dst, int64(counter))
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// awaitSeedJoins makes sure every seed member's join took effect: seed
// joins are not acknowledged, so the first member of each room sends probe
// messages until every member has received one (or -join-timeout passes).
func (r *runner) awaitSeedJoins(ctx context.Context, rooms []*room) {
	probe := make([]byte, 0, 128)
	deadline := r.now() + int64(r.cfg.joinTimeout)
	for {
		pending := 0
		for _, rm := range rooms {
			if len(rm.members) == 0 || rm.ready.Load() >= int64(len(rm.members)) {
				continue
			}
			pending++
			probe = appendChatFrame(probe[:0], rm.name, []byte{textProbe}, false, 0)
			if err := rm.members[0].ws.writeFrame(opText, probe); err != nil {
				r.errs.add("probe_"+errKind(err), 1)
			}
		}
		if pending == 0 {
			return
		}
		if r.now() > deadline || r.sleepUntil(ctx, r.now()+int64(50*time.Millisecond)) != nil {
			r.log.Warn("seed joins not all confirmed", "rooms_pending", pending)
			r.errs.add("join_unconfirmed", int64(pending))
			return
		}
	}
}
