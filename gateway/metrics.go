package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/ratelimit"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Store operations, the op label of aa_store_errors_total.
const (
	storeOpAuditAppend    = "audit_append"    // audit records (decisions, rejections, governance)
	storeOpRegistry       = "registry"        // agent registry reads and status changes
	storeOpCounters       = "counters"        // rate limit and budget counters
	storeOpApprovals      = "approvals"       // approval requests and their events
	storeOpPolicyVersions = "policy_versions" // stored policy versions and activations
	storeOpCosts          = "costs"           // the cost ledger
)

var storeOps = []string{storeOpAuditAppend, storeOpRegistry, storeOpCounters, storeOpApprovals, storeOpPolicyVersions, storeOpCosts}

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
	// StoreErrors counts errors the gateway got from the store (other than
	// not found, conflict, invalid argument and a caller's cancellation), by
	// operation.
	StoreErrors *prometheus.CounterVec
	// BudgetReserved counts the estimated cost of LLM calls charged to
	// budget counters when they were allowed, in US dollars, by org and team.
	BudgetReserved *prometheus.CounterVec
	// BudgetSpend counts the actual cost of LLM calls settled with the
	// tokens they used, in US dollars, by org and team.
	BudgetSpend *prometheus.CounterVec

	// auditWriteOK and auditWriteError are AuditWrite's two series, looked
	// up once: in os durability every check is a batch of its own, and the
	// label lookup cost about 0.5 µs of each.
	auditWriteOK, auditWriteError prometheus.Observer
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
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "store_errors_total",
			Help: "Errors from the store, by operation (audit_append, registry, counters, approvals, policy_versions, costs); not found, conflict and invalid-argument answers are not errors. audit_append errors other than reported events also count in aa_audit_append_errors_total.",
		}, []string{"op"}),
		BudgetReserved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "budget_reserved_usd_total",
			Help: "Estimated cost of allowed LLM calls charged to budget counters (prompt tokens and the maximum completion), in US dollars, by the agent's org and team.",
		}, []string{"org", "team"}),
		BudgetSpend: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "budget_spend_usd_total",
			Help: "Actual cost of LLM calls settled with the tokens they used (RecordUsage, ext_proc), in US dollars, by the agent's org and team; the cost ledger's amounts.",
		}, []string{"org", "team"}),
	}
	for _, op := range storeOps {
		m.StoreErrors.WithLabelValues(op) // present at 0 before the first error
	}
	m.auditWriteOK, m.auditWriteError = m.AuditWrite.WithLabelValues("ok"), m.AuditWrite.WithLabelValues("error")
	if reg != nil {
		reg.MustRegister(m.Checks, m.CheckDuration, m.Rejected, m.AuditErrors, m.PolicyReloads, m.PolicyInfo, m.AuditBatch, m.AuditWrite, m.BudgetThresholds, m.CredentialFindings, m.UsageReconciled,
			m.StoreErrors, m.BudgetReserved, m.BudgetSpend)
	}
	return m
}

// storeError counts err under op unless it is nil or not a store fault: not
// found, conflict, an invalid argument (such as a bad cursor), the caller's
// cancellation, or a bad budget scope, token count or rate limit (the
// request's or the policy's fault).
func (m *Metrics) storeError(op string, err error) {
	if err == nil || errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrConflict) ||
		errors.Is(err, storage.ErrInvalid) || errors.Is(err, context.Canceled) || errors.Is(err, budget.ErrInvalidScope) ||
		errors.Is(err, budget.ErrInvalidUsage) || errors.Is(err, ratelimit.ErrInvalidLimit) {
		return
	}
	m.StoreErrors.WithLabelValues(op).Inc()
}

// storeStatus counts err under op (see storeError) and maps it to a gRPC
// status as the package's storeStatus does.
func (m *Metrics) storeStatus(op, what string, err error) error {
	m.storeError(op, err)
	return storeStatus(what, err)
}

// maxPendingApprovals is the most approvals one list call returns (the
// store's maximum); aa_approvals_pending does not count beyond it.
const maxPendingApprovals = 1000

// pendingApprovals is the aa_approvals_pending collector: at each scrape it
// counts the approvals in the store still waiting for a decision.
type pendingApprovals struct {
	c    *Core
	desc *prometheus.Desc
}

// PendingApprovals returns a collector of aa_approvals_pending, the
// approvals waiting for a human decision, read from the store (shared by
// every replica) at each scrape, within a 2 second timeout. A failed read
// counts in aa_store_errors_total{op="approvals"} and leaves the sample
// out of that scrape. Without an approval store it collects nothing.
func (c *Core) PendingApprovals() prometheus.Collector {
	return pendingApprovals{c: c, desc: prometheus.NewDesc("aa_approvals_pending",
		"Approval requests waiting for a human decision and not yet expired, across replicas (read from the store at scrape; at most 1000 are counted).", nil, nil)}
}

// Describe implements prometheus.Collector.
func (p pendingApprovals) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

// Collect implements prometheus.Collector.
func (p pendingApprovals) Collect(ch chan<- prometheus.Metric) {
	if p.c.approvals == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	aps, err := p.c.approvals.ListApprovals(ctx, storage.ApprovalFilter{Status: storage.ApprovalPending, Limit: maxPendingApprovals})
	if err != nil {
		p.c.metrics.storeError(storeOpApprovals, err)
		p.c.log.WarnContext(ctx, "count pending approvals", "err", err)
		return
	}
	now, n := p.c.now(), 0
	for _, ap := range aps {
		if ap.Status == storage.ApprovalPending && now.Before(ap.ExpiresAt) {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(n))
}

// ObserveBatch records one group commit; it lets Metrics serve as the audit
// writer's metrics sink.
func (m *Metrics) ObserveBatch(records int, write time.Duration, err error) {
	m.AuditBatch.Observe(float64(records))
	o, result := m.auditWriteOK, "ok"
	if err != nil {
		o, result = m.auditWriteError, "error"
	}
	if o == nil { // a Metrics not made by NewMetrics
		o = m.AuditWrite.WithLabelValues(result)
	}
	o.Observe(write.Seconds())
}
