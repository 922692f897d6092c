package linkserver

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wschat/wschat/services/relayer/internal/sequencer"
)

// The reasons the transport ends a link; the sequencer has its own.
const (
	dropKeepalive sequencer.Drop = "keepalive" // a ping went unanswered
	dropPeer      sequencer.Drop = "peer"      // the ws-user closed it or the connection broke
	dropWrite     sequencer.Drop = "write"     // writing to the connection failed
	// sequencer.DropProtocol too: an undecodable frame, sync not first, a
	// message over MaxFrameBytes.
)

type metrics struct {
	links prometheus.Gauge
	drops *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "wschat", "relayer"
	m := &metrics{
		links: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "links",
			Help: "Relay links connected now."}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "link_drops_total",
			Help: "Relay links ended, by reason."}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.links, m.drops} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []sequencer.Drop{sequencer.DropSlow, sequencer.DropReplaced, dropKeepalive,
		sequencer.DropProtocol, dropPeer, sequencer.DropShutdown, dropWrite} {
		m.drops.WithLabelValues(string(r)) // export zeros, so rate() works from the start
	}
	return m, nil
}

func (m *metrics) drop(why sequencer.Drop) { m.drops.WithLabelValues(string(why)).Inc() }
