package hub

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hub's Prometheus collectors.
type Metrics struct {
	Connections   prometheus.Gauge
	Rooms         prometheus.Gauge
	Memberships   prometheus.Gauge
	FramesIn      prometheus.Counter
	FramesOut     prometheus.Counter
	Writes        prometheus.Counter // write batches: FramesOut/Writes is the batching achieved
	ChatsIn       prometheus.Counter
	Delivered     prometheus.Counter
	Errors        *prometheus.CounterVec
	SlowConsumers prometheus.Counter
	FellBehind    prometheus.Counter // a member's queue was full for a room's message: it catches up from history
	Refused       prometheus.Counter // connections refused at MaxConns
	// RefusedPerAddr counts upgrades refused at MaxConnsPerAddr.
	RefusedPerAddr prometheus.Counter
	WriteTimeouts  prometheus.Counter // connections closed with a write stuck past WriteTimeout
	// RateLimitWaits counts the times a reader held a client's next frame
	// for a token; RateLimitCloses the clients closed for staying over.
	RateLimitWaits  prometheus.Counter
	RateLimitCloses prometheus.Counter
	FrameTimeouts   prometheus.Counter // connections closed with a message stalled past FrameReadTimeout
	LinkUp          prometheus.Gauge
	Fanout          prometheus.Histogram // seconds from sequencing to queued for members
	AckLatency      prometheus.Histogram // seconds from a client's chat to its ack
}

// NewMetrics registers the hub's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &Metrics{
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_connections", Help: "Open client WebSocket connections."}),
		Rooms:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_rooms", Help: "Rooms with local members."}),
		Memberships: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_memberships",
			Help: "Local (connection, room) memberships receiving messages."}),
		FramesIn:  prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_frames_in_total", Help: "Frames received from clients."}),
		FramesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_frames_out_total", Help: "Frames written to clients."}),
		Writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_writes_total",
			Help: "Batches of frames written to clients, each with one system call (unless larger than 64 KB)."}),
		ChatsIn:   prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_messages_in_total", Help: "Chat messages accepted from clients."}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_messages_out_total", Help: "Chat messages queued to local members."}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wschat_user_errors_total", Help: "Error frames sent to clients, by code."},
			[]string{"code"}),
		SlowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_queue_drops_total", Help: "Clients disconnected because their send queue overflowed (twice its limits, with frames other than room messages)."}),
		FellBehind: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_fell_behind_total",
			Help: "Times a member's send queue was full for a message of one of its rooms: it fell behind in the room, to catch up from its history."}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_connections_refused_total",
			Help: "WebSocket upgrades refused (503) because the instance held MAX_CONNS connections."}),
		RefusedPerAddr: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_connections_refused_per_addr_total",
			Help: "WebSocket upgrades refused (429) because their client address held MAX_CONNS_PER_ADDR connections."}),
		WriteTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_write_timeouts_total",
			Help: "Clients disconnected because a write to them made no progress for WRITE_TIMEOUT."}),
		RateLimitWaits: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_rate_limit_waits_total",
			Help: "Times a client's next frame was left unread until its token bucket had a token (RATE_PER_SEC, RATE_BURST)."}),
		RateLimitCloses: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_rate_limit_closes_total",
			Help: "Clients closed with 1008 because their frames waited for tokens without a break for RATE_LIMIT_CLOSE_AFTER."}),
		FrameTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_frame_timeouts_total",
			Help: "Clients closed with 1008 because a message did not arrive whole within FRAME_READ_TIMEOUT of its first byte."}),
		LinkUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_relay_link_up", Help: "1 when the relay link (or the standalone bus) is up."}),
		Fanout: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wschat_user_delivery_latency_seconds",
			Help: "Time from sequencing a message to queueing it for local members.", Buckets: buckets}),
		AckLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wschat_user_ack_latency_seconds",
			Help: "Time from receiving a client's chat to its acknowledgement.", Buckets: buckets}),
	}
	reg.MustRegister(m.Connections, m.Rooms, m.Memberships, m.FramesIn, m.FramesOut, m.Writes, m.ChatsIn, m.Delivered, m.Errors,
		m.SlowConsumers, m.FellBehind, m.Refused, m.RefusedPerAddr, m.WriteTimeouts, m.RateLimitWaits, m.RateLimitCloses, m.FrameTimeouts, m.LinkUp, m.Fanout, m.AckLatency)
	return m
}
