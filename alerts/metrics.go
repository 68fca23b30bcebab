package alerts

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	raised      *prometheus.CounterVec
	dropped     prometheus.Counter
	storeErrors prometheus.Counter
	deliveries  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		raised: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "alerts_total",
			Help: "Alerts this replica stored, by kind and severity.",
		}, []string{"kind", "severity"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Name: "alerts_dropped_total",
			Help: "Alerts dropped because the queue in front of the store was full or the engine was closed.",
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Name: "alert_store_errors_total",
			Help: "Alerts that could not be stored.",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "alert_webhook_deliveries_total",
			Help: "Webhook delivery outcomes: delivered, retried (one per retry), failed (gave up after the last attempt), dropped (queue full), silenced, abandoned (shutdown).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.raised, m.dropped, m.storeErrors, m.deliveries)
	}
	return m
}
