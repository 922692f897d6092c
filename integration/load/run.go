// Package load is wsload, the load generator of wschat: open-loop fan-out
// traffic, idle connections and connection storms against running ws-user
// instances, measuring delivery, latency and the servers' CPU and memory.
// See README.md for the flags and cmd/wsload for the command.
package load

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wschat/wschat/services/protocol"
)

// Run parses args (args[0] is the program name), runs one load run and
// writes one JSON line (Result) to stdout and a readable summary to stderr.
// getenv supplies LOG_LEVEL.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	var level slog.Level
	if s := getenv("LOG_LEVEL"); s != "" {
		if err := level.UnmarshalText([]byte(s)); err != nil {
			return fmt.Errorf("configuration: LOG_LEVEL: %w", err)
		}
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTime)
	defer cancel()
	server, tier, err := cfg.targets(ctx)
	if err != nil {
		return err
	}
	r := newRunner(cfg, log, server)
	r.tier = tier
	if perPair := cfg.conns / len(cfg.urls) / max(len(cfg.sources), 1); perPair > manyPerSource {
		// Linux's connect() takes even local ports first and searches
		// them for a free one, slower and slower as they fill: past
		// ~12,000 connections to one destination the generator, not the
		// server, sets the pace.
		log.Warn("many connections from one source address to one destination: the kernel's search for a free local port will slow the run down; spread them over more -source addresses (127.0.0.2,127.0.0.3,...)",
			"per_source_and_destination", perPair)
	}
	var res *Result
	switch cfg.mode {
	case "fanout":
		res, err = r.fanout(ctx)
	case "idle":
		res, err = r.idle(ctx)
	case "storm":
		res, err = r.storm(ctx)
	case "burst":
		res, err = r.burst(ctx)
	}
	if err != nil {
		return fmt.Errorf("%s run: %w", cfg.mode, err)
	}
	line, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	writeSummary(stderr, res)
	return nil
}

// manyPerSource is the number of connections from one source address to
// one destination past which connect() slows down (see Run).
const manyPerSource = 10000

// runner holds what every mode shares.
type runner struct {
	cfg    *config
	log    *slog.Logger
	server usage
	tier   usage // the relay tier's processes, reported apart (fan-out)
	self   usage
	epoch  time.Time
	errs   errCounter
	// closing is set before the generator closes its own connections, so
	// the resulting read errors are not counted.
	closing    atomic.Bool
	connectLat *recorder
	joinLat    *recorder
	setupLat   *recorder
	tlsConfig  *tls.Config
}

func newRunner(cfg *config, log *slog.Logger, server usage) *runner {
	return &runner{
		cfg:        cfg,
		log:        log,
		server:     server,
		self:       usage{targets: procTargets([]int{os.Getpid()})},
		epoch:      time.Now(),
		errs:       errCounter{m: map[string]int64{}},
		connectLat: newRecorder(runtime.GOMAXPROCS(0) * 2),
		joinLat:    newRecorder(runtime.GOMAXPROCS(0) * 2),
		setupLat:   newRecorder(runtime.GOMAXPROCS(0) * 2),
		tlsConfig:  &tls.Config{InsecureSkipVerify: cfg.insecure}, //nolint:gosec // opt-in for self-signed test stacks
	}
}

// now is the monotonic time since the run started, in nanoseconds: the
// clock of the schedule and of every latency.
func (r *runner) now() int64 { return int64(time.Since(r.epoch)) }

// sleepUntil waits until the run's clock reaches t.
func (r *runner) sleepUntil(ctx context.Context, t int64) error {
	d := time.Duration(t - r.now())
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type errCounter struct {
	mu sync.Mutex
	m  map[string]int64
}

func (e *errCounter) add(kind string, n int64) {
	e.mu.Lock()
	e.m[kind] += n
	e.mu.Unlock()
}

func (e *errCounter) snapshot() (map[string]int64, int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int64, len(e.m))
	var total int64
	for k, v := range e.m {
		out[k] = v
		total += v
	}
	return out, total
}

// errKind names a connection error for the error counts.
func errKind(err error) string {
	var ce *closeError
	switch {
	case errors.As(err, &ce):
		return fmt.Sprintf("closed_%d", ce.code)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "conn_lost"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn_refused"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no_local_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, errProtocol):
		return "ws_protocol"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

// conn is one generator connection and, in fan-out mode, its receiver
// state. Fields below the line are owned by the reader goroutine and read
// by others only after it exited.
type conn struct {
	r     *runner
	idx   int
	ws    *wsConn
	room  *room // nil outside fan-out mode
	shard int

	delivered atomic.Int64 // measured messages, first copies only

	joined    bool     // seed: saw a message of its room
	bits      []uint64 // publisher × counter: received already
	words     int      // bitmap words per publisher
	maxSeen   []int32  // per publisher, highest counter seen
	dups, ooo int64
	acks      int64
}

// connect dials connection i: URL and source address round-robin, each
// URL from every source in turn (i%len(urls) alone would pair the two
// lists up when their lengths share a factor).
func (r *runner) connect(ctx context.Context, i int) (*wsConn, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.connectTimeout)
	defer cancel()
	u := r.cfg.urls[i%len(r.cfg.urls)]
	o := dialOptions{readBuf: r.cfg.readBuffer, tlsConfig: r.tlsConfig}
	if len(r.cfg.sources) > 0 {
		o.local = r.cfg.sources[(i/len(r.cfg.urls))%len(r.cfg.sources)]
	}
	start := r.now()
	ws, err := dialWS(ctx, u, o)
	if err != nil {
		return nil, 0, err
	}
	return ws, r.now() - start, nil
}

// setup opens connection i and joins room: hello and join answered by
// welcome and joined (extended), or join-room alone (seed, no answer).
// It returns the time from dial to joined.
func (r *runner) setup(ctx context.Context, i int, room string) (*wsConn, int64, error) {
	start := r.now()
	ws, connectNs, err := r.connect(ctx, i)
	if err != nil {
		r.errs.add("connect_"+errKind(err), 1)
		return nil, 0, err
	}
	r.connectLat.record(i, connectNs)
	_ = ws.nc.SetDeadline(time.Now().Add(r.cfg.connectTimeout))
	fail := func(what string, err error) (*wsConn, int64, error) {
		r.errs.add(what+"_"+errKind(err), 1)
		ws.nc.Close()
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	if step, err := r.join(ws, i, room); err != nil {
		return fail(step, err)
	}
	_ = ws.nc.SetDeadline(time.Time{})
	setupNs := r.now() - start
	r.setupLat.record(i, setupNs)
	return ws, setupNs, nil
}

// join joins connection i to room in the run's protocol, recording the
// join's latency where the server answers it; step names what failed.
func (r *runner) join(ws *wsConn, i int, room string) (step string, err error) {
	if r.cfg.centrifugo() {
		joinStart := r.now()
		if err := centrifugoSetup(ws, i, room); err != nil {
			return "join", err
		}
		r.joinLat.record(i, r.now()-joinStart)
		return "", nil
	}
	joinType := protocol.TypeJoinRoom
	if r.cfg.extended() {
		if err := writeJSON(ws, protocol.Inbound{Type: protocol.TypeHello, Nick: fmt.Sprintf("load%d", i)}); err != nil {
			return "hello", err
		}
		if err := awaitFrame(ws, protocol.TypeWelcome); err != nil {
			return "hello", err
		}
		joinType = protocol.TypeJoin
	}
	joinStart := r.now()
	if err := writeJSON(ws, protocol.Inbound{Type: joinType, Room: room, ID: "j"}); err != nil {
		return "join", err
	}
	if r.cfg.extended() {
		if err := awaitFrame(ws, protocol.TypeJoined); err != nil {
			return "join", err
		}
		r.joinLat.record(i, r.now()-joinStart)
	}
	return "", nil
}

func writeJSON(ws *wsConn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return ws.writeFrame(opText, b)
}

// serverErr is an error frame received while waiting for an answer.
type serverErr string

func (e serverErr) Error() string { return "server error " + string(e) }

// awaitFrame reads until a frame of type want, skipping others (presence).
func awaitFrame(ws *wsConn, want string) error {
	var f serverFrame
	for {
		_, p, err := ws.readMessage()
		if err != nil {
			return err
		}
		if !scanFrame(p, &f) {
			return fmt.Errorf("%w: frame %.80q is not a JSON object", errProtocol, p)
		}
		switch string(f.typ) {
		case want:
			return nil
		case protocol.TypeError:
			return serverErr(f.code)
		}
	}
}

// readLoop receives until the connection ends.
func (c *conn) readLoop() {
	var f serverFrame
	for {
		op, p, err := c.ws.readMessage()
		if err != nil {
			if !c.r.closing.Load() {
				c.r.errs.add("read_"+errKind(err), 1)
			}
			return
		}
		if op != opText {
			c.r.errs.add("binary_frame", 1)
			continue
		}
		c.onFrame(p, &f)
	}
}

// onFrame is the receive hot path: no allocation on chat and ack frames.
func (c *conn) onFrame(p []byte, f *serverFrame) {
	if c.r.cfg.centrifugo() {
		c.onCentrifugo(p, f)
		return
	}
	if !scanFrame(p, f) {
		c.r.errs.add("bad_frame", 1)
		return
	}
	switch string(f.typ) {
	case protocol.TypeChat:
		if c.room != nil {
			c.onChat(f)
		}
	case protocol.TypeAck:
		c.acks++
	case protocol.TypeError:
		c.r.errs.add("server_"+string(f.code), 1)
	}
}

func (c *conn) onChat(f *serverFrame) {
	now := c.r.now()
	rm := c.room
	if string(f.room) != rm.name {
		c.r.errs.add("wrong_room", 1)
		return
	}
	if !c.joined {
		c.joined = true
		rm.ready.Add(1)
	}
	if len(f.message) > 0 && f.message[0] == textProbe {
		return
	}
	pub, ctr, sched, ok := parseLoadText(f.message)
	if !ok {
		c.r.errs.add("bad_message", 1)
		return
	}
	p := pub - rm.firstPub
	if p < 0 || p >= len(c.maxSeen) || ctr >= rm.perPub {
		c.r.errs.add("bad_counter", 1)
		return
	}
	w, bit := p*c.words+ctr>>6, uint64(1)<<(ctr&63)
	if c.bits[w]&bit != 0 {
		c.dups++
		return
	}
	c.bits[w] |= bit
	if int32(ctr) < c.maxSeen[p] {
		c.ooo++
	} else {
		c.maxSeen[p] = int32(ctr)
	}
	if rm.measured(sched) {
		c.delivered.Add(1)
		rm.lat.record(c.shard, now-sched)
	}
}

// openAll runs setup for n connections, at most -connect-concurrency at a
// time and at most -connect-rate per second.
func (r *runner) openAll(ctx context.Context, n int, fn func(i int)) {
	sem := make(chan struct{}, r.cfg.connectConcurrency)
	var wg sync.WaitGroup
	start := r.now()
	for i := 0; i < n; i++ {
		if r.cfg.connectRate > 0 {
			if r.sleepUntil(ctx, start+int64(float64(i)*1e9/r.cfg.connectRate)) != nil {
				break
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

// closeAll closes the generator's connections and waits for their readers.
func (r *runner) closeAll(conns []*conn, readers *sync.WaitGroup) {
	if r.closing.Swap(true) {
		return
	}
	for _, c := range conns {
		if c != nil {
			c.ws.close(1000)
		}
	}
	readers.Wait()
}

// Usage is CPU time and memory of a set of processes over a window.
type Usage struct {
	Targets     []string `json:"targets,omitempty"`
	CPUMicros   int64    `json:"cpu_us"`
	CPUPercent  float64  `json:"cpu_percent"` // of one core, over the window
	MemBase     int64    `json:"mem_base_bytes"`
	MemStart    int64    `json:"mem_start_bytes"`
	MemEnd      int64    `json:"mem_end_bytes"`
	MemPerConn  float64  `json:"mem_per_conn_bytes"` // (end - base) / connections
	CPUPerMsgUs float64  `json:"cpu_us_per_msg,omitempty"`
	// CPUPerPublishUs is per message published (sent), for the relay
	// tier, whose work grows with publishes more than with deliveries.
	CPUPerPublishUs float64 `json:"cpu_us_per_publish,omitempty"`
}

func makeUsage(u usage, base, start, end snap, window time.Duration, conns int) *Usage {
	out := &Usage{
		CPUMicros: end.cpuMicros - start.cpuMicros,
		MemBase:   base.memBytes,
		MemStart:  start.memBytes,
		MemEnd:    end.memBytes,
	}
	for _, t := range u.targets {
		out.Targets = append(out.Targets, t.String())
	}
	if window > 0 {
		out.CPUPercent = round(float64(out.CPUMicros) / float64(window.Microseconds()) * 100)
	}
	if conns > 0 {
		out.MemPerConn = round(float64(end.memBytes-base.memBytes) / float64(conns))
	}
	return out
}

func round(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func urlsOf(c *config) []string {
	out := make([]string, len(c.urls))
	for i, u := range c.urls {
		out[i] = u.String()
	}
	return out
}
