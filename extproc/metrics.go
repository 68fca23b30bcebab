package extproc

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the external processor's Prometheus collectors.
type Metrics struct {
	// Requests counts processed requests by ext_authz decision (allow,
	// redact) or "unchecked" (denied: no ext_authz decision) and "malformed".
	Requests *prometheus.CounterVec
	// Bodies counts request bodies with findings, by outcome (redacted,
	// blocked, alerted).
	Bodies *prometheus.CounterVec
	// Usage counts LLM responses by what happened to the budget reservation
	// (reconciled, released, unknown, error).
	Usage *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (which may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extproc", Name: "requests_total",
			Help: "Requests seen by the external processor, by ext_authz decision (unchecked ones are denied).",
		}, []string{"decision"}),
		Bodies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extproc", Name: "bodies_total",
			Help: "Request bodies in which credentials were found, by outcome (redacted, blocked, alerted).",
		}, []string{"outcome"}),
		Usage: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extproc", Name: "llm_usage_total",
			Help: "LLM responses by what happened to the budget reservation (reconciled, released, unknown, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Bodies, m.Usage)
	}
	return m
}
