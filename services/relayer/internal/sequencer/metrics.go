package sequencer

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a link ends, the label of link_drops_total.
const (
	dropSlow      = "slow"      // output buffer over LINK_QUEUE_BYTES
	dropReplaced  = "replaced"  // a newer link of the same instance arrived
	dropKeepalive = "keepalive" // a ping went unanswered
	dropProtocol  = "protocol"  // undecodable frame, or sync not first
	dropPeer      = "peer"      // the ws-user closed it or the connection broke
	dropShutdown  = "shutdown"  // the relayer is stopping
	dropWrite     = "write"     // writing to the connection failed
)

type metrics struct {
	links, rooms, subs, members, logBytes  prometheus.Gauge
	msgsIn, msgsOut, dedup, fetchesRefused prometheus.Counter
	batch, fsync                           prometheus.Histogram
	drops                                  *prometheus.CounterVec
	// What the replay found the log's damage cost (store.Damage).
	lostMsgs, lostBytes, salvaged prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "wschat", "relayer"
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &metrics{
		links:    gauge("links", "Relay links connected now."),
		rooms:    gauge("rooms", "Rooms held in memory."),
		subs:     gauge("subscriptions", "Room subscriptions of all instances."),
		members:  gauge("presence_members", "Members present in rooms, over all instances."),
		logBytes: gauge("log_bytes", "Size of the append-only log."),
		msgsIn:   counter("messages_in_total", "Messages sequenced (duplicates excluded)."),
		msgsOut:  counter("messages_out_total", "Msg frames delivered to links."),
		dedup:    counter("dedup_total", "Publishes answered from the de-duplication index."),
		fetchesRefused: counter("fetches_refused_total",
			"History fetches refused because the link's output was over LINK_QUEUE_BYTES."),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "batch_size",
			Help:    "Frames applied per sequencer batch (one log sync each).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 13),
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "fsync_seconds",
			Help:    "Time to write (and fsync, when enabled) one batch to the log.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		lostMsgs: counter("log_lost_messages_total",
			"Messages found lost to damage of the log at startup, where the numbering around the damage tells (the log names them)."),
		lostBytes: counter("log_lost_bytes_total", "Bytes of the log found damaged or missing at startup."),
		salvaged:  counter("log_salvaged_records_total", "Intact records kept from after damage of the log at startup."),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "link_drops_total",
			Help: "Relay links ended, by reason.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.links, m.rooms, m.subs, m.members, m.logBytes,
		m.msgsIn, m.msgsOut, m.dedup, m.fetchesRefused, m.batch, m.fsync, m.drops, m.lostMsgs, m.lostBytes, m.salvaged} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{dropSlow, dropReplaced, dropKeepalive, dropProtocol, dropPeer, dropShutdown, dropWrite} {
		m.drops.WithLabelValues(r) // export zeros, so rate() works from the start
	}
	return m, nil
}
