package sequencer

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	rooms, subs, members, logBytes         prometheus.Gauge
	msgsIn, msgsOut, dedup, fetchesRefused prometheus.Counter
	batch, fsync                           prometheus.Histogram
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
	}
	for _, c := range []prometheus.Collector{m.rooms, m.subs, m.members, m.logBytes,
		m.msgsIn, m.msgsOut, m.dedup, m.fetchesRefused, m.batch, m.fsync, m.lostMsgs, m.lostBytes, m.salvaged} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
