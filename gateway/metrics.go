package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the decision core's Prometheus collectors.
type Metrics struct {
	Checks        *prometheus.CounterVec
	CheckDuration *prometheus.HistogramVec
	Rejected      *prometheus.CounterVec
	AuditErrors   prometheus.Counter
	PolicyReloads *prometheus.CounterVec
	PolicyInfo    *prometheus.GaugeVec
	AuditBatch    prometheus.Histogram
	// CredentialFindings counts credentials found in actions.
	CredentialFindings *prometheus.CounterVec
	// BudgetThresholds counts budget windows crossing 80% and 95%.
	BudgetThresholds *prometheus.CounterVec
	AuditWrite       *prometheus.HistogramVec
	// UsageReconciled counts budget reservations settled with actual usage, by result.
	UsageReconciled *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (which may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "checks_total",
			Help: "Decisions answered, by enforced decision, action kind, enforcement mode and the layer that asked (sdk, envoy, runtime, kernel).",
		}, []string{"decision", "kind", "mode", "layer"}),
		CheckDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "aa", Name: "check_duration_seconds",
			Help:    "Time from receiving a check to answering it, including the durable audit write.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3},
		}, []string{"decision"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "requests_rejected_total",
			Help: "Malformed requests rejected before evaluation, by offending field.",
		}, []string{"field"}),
		AuditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Name: "audit_append_errors_total",
			Help: "Audit writes that failed; each one turned its decision into a deny.",
		}),
		PolicyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "policy_reloads_total",
			Help: "Policy reload attempts by result (applied, rejected, unchanged).",
		}, []string{"result"}),
		PolicyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "aa", Name: "policy_version_info",
			Help: "The active policy version (value 1).",
		}, []string{"version"}),
		CredentialFindings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "credential_findings_total",
			Help: "Credentials and PII found in actions, by kind and the policy's credential_action.",
		}, []string{"kind", "credential_action"}),
		BudgetThresholds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "budget_threshold_crossings_total",
			Help: "Budget windows whose spend crossed a threshold (80 or 95 percent of the limit).",
		}, []string{"threshold", "window"}),
		AuditBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "aa", Name: "audit_batch_records",
			Help:    "Records made durable by one group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		AuditWrite: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "aa", Name: "audit_write_seconds",
			Help:    "Duration of one group commit (transaction and fsync), by result.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1},
		}, []string{"result"}),
		UsageReconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "usage_reconciled_total",
			Help: "LLM budget reservations settled with the tokens actually used, by result (ok, error).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Checks, m.CheckDuration, m.Rejected, m.AuditErrors, m.PolicyReloads, m.PolicyInfo, m.AuditBatch, m.AuditWrite, m.BudgetThresholds, m.CredentialFindings, m.UsageReconciled)
	}
	return m
}

// ObserveBatch records one group commit; it lets Metrics serve as the audit
// writer's metrics sink.
func (m *Metrics) ObserveBatch(records int, write time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.AuditBatch.Observe(float64(records))
	m.AuditWrite.WithLabelValues(result).Observe(write.Seconds())
}
