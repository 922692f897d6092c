package conn

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the connections' Prometheus collectors.
type Metrics struct {
	Connections   prometheus.Gauge
	FramesIn      prometheus.Counter
	FramesOut     prometheus.Counter
	Writes        prometheus.Counter // write batches: FramesOut/Writes is the batching achieved
	Errors        *prometheus.CounterVec
	SlowConsumers prometheus.Counter
	Refused       prometheus.Counter // connections refused at MaxConns
	// RefusedPerAddr counts upgrades refused at MaxConnsPerAddr.
	RefusedPerAddr prometheus.Counter
	WriteTimeouts  prometheus.Counter // connections closed with a write stuck past WriteTimeout
	// RateLimitWaits counts the times a reader held a client's next frame
	// for a token; RateLimitCloses the clients closed for staying over.
	RateLimitWaits  prometheus.Counter
	RateLimitCloses prometheus.Counter
	FrameTimeouts   prometheus.Counter // connections closed with a message stalled past FrameReadTimeout
}

// NewMetrics registers the connections' collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_connections", Help: "Open client WebSocket connections."}),
		FramesIn:    prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_frames_in_total", Help: "Frames received from clients."}),
		FramesOut:   prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_frames_out_total", Help: "Frames written to clients."}),
		Writes: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_writes_total",
			Help: "Batches of frames written to clients, each with one system call (unless larger than 64 KB)."}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wschat_user_errors_total", Help: "Error frames sent to clients, by code."},
			[]string{"code"}),
		SlowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_queue_drops_total", Help: "Clients disconnected because their send queue overflowed (twice its limits, with frames other than room messages)."}),
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
	}
	reg.MustRegister(m.Connections, m.FramesIn, m.FramesOut, m.Writes, m.Errors,
		m.SlowConsumers, m.Refused, m.RefusedPerAddr, m.WriteTimeouts, m.RateLimitWaits, m.RateLimitCloses, m.FrameTimeouts)
	return m
}
