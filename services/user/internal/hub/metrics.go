package hub

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the hub's Prometheus collectors (the connections' are
// package conn's).
type Metrics struct {
	Rooms       prometheus.Gauge
	Memberships prometheus.Gauge
	ChatsIn     prometheus.Counter
	Delivered   prometheus.Counter
	FellBehind  prometheus.Counter // a member's queue was full for a room's message: it catches up from history
	LinkUp      prometheus.Gauge
	Fanout      prometheus.Histogram   // seconds from sequencing to queued for members
	AckLatency  prometheus.Histogram   // seconds from a client's chat to its ack
	AuthRefused *prometheus.CounterVec // connections and operations refused, by error code
}

// NewMetrics registers the hub's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	buckets := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &Metrics{
		Rooms: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_rooms", Help: "Rooms with local members."}),
		Memberships: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_memberships",
			Help: "Local (connection, room) memberships receiving messages."}),
		ChatsIn:   prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_messages_in_total", Help: "Chat messages accepted from clients."}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_messages_out_total", Help: "Chat messages queued to local members."}),
		FellBehind: prometheus.NewCounter(prometheus.CounterOpts{Name: "wschat_user_fell_behind_total",
			Help: "Times a member's send queue was full for a message of one of its rooms: it fell behind in the room, to catch up from its history."}),
		LinkUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wschat_user_relay_link_up", Help: "1 when the relay link (or the standalone bus) is up."}),
		Fanout: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wschat_user_delivery_latency_seconds",
			Help: "Time from sequencing a message to queueing it for local members.", Buckets: buckets}),
		AckLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wschat_user_ack_latency_seconds",
			Help: "Time from receiving a client's chat to its acknowledgement.", Buckets: buckets}),
		AuthRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wschat_user_auth_refused_total",
			Help: "Connections refused for their token (or its absence), and room operations their token does not allow, by error code."}, []string{"code"}),
	}
	reg.MustRegister(m.Rooms, m.Memberships, m.ChatsIn, m.Delivered, m.FellBehind, m.LinkUp, m.Fanout, m.AckLatency, m.AuthRefused)
	return m
}
