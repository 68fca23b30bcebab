package xds

import "github.com/prometheus/client_golang/prometheus"

// metrics are the control plane's Prometheus collectors.
type metrics struct {
	responses *prometheus.CounterVec
	acks      *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	snapshots *prometheus.CounterVec
	streams   prometheus.Gauge
	backoffs  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "xds", Name: "pushes_total",
			Help: "xDS responses sent to nodes, by resource type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "xds", Name: "acks_total",
			Help: "xDS responses nodes accepted, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "xds", Name: "nacks_total",
			Help: "xDS responses nodes rejected, by resource type.",
		}, []string{"type"}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "xds", Name: "snapshots_total",
			Help: "Node snapshots published (a new version for one node), by flavour (envoy, grpc).",
		}, []string{"flavour"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "aa", Subsystem: "xds", Name: "streams",
			Help: "Open ADS streams.",
		}),
		backoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "xds", Name: "nack_backoffs_total",
			Help: "Rejected versions held back from a node before being offered again, by resource type.",
		}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(m.responses, m.acks, m.nacks, m.snapshots, m.streams, m.backoffs)
	}
	return m
}
