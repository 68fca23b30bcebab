package extauthz

import (
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/action"
)

// Metrics are the ext_authz server's Prometheus collectors. The decisions
// themselves are counted by the decision core (aa_checks_total with
// layer="envoy"); these count what Envoy was answered.
type Metrics struct {
	// Answers counts Check answers by HTTP status (200 for allowed) and decision.
	Answers *prometheus.CounterVec
	// Duration is the time to answer one Check, injection included.
	Duration prometheus.Histogram
	// Uninspected counts requests judged on headers alone (body too large,
	// truncated or not sent).
	Uninspected prometheus.Counter
	// Malformed counts check requests that could not be mapped to an action.
	Malformed prometheus.Counter
	// InjectionFailures counts allowed requests denied because a credential
	// could not be injected.
	InjectionFailures prometheus.Counter

	// answers caches the Answers series by status and decision, looked up
	// on first use (so /metrics is unchanged): hashing two label values
	// per Check cost more than the rest of observe.
	answers [len(answerStatuses)][int(action.Deny) + 1]atomic.Pointer[counterRef]
}

// answerStatuses are the HTTP statuses whose Answers series are cached.
var answerStatuses = [...]int{200, 403, 429, 503}

type counterRef struct{ prometheus.Counter }

// NewMetrics creates the collectors and registers them with reg (which may be nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extauthz", Name: "answers_total",
			Help: "ext_authz Check answers, by HTTP status (200 = allowed) and decision.",
		}, []string{"status", "decision"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "aa", Subsystem: "extauthz", Name: "check_duration_seconds",
			Help:    "Time to answer one ext_authz Check, every action and credential injection included.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 150e-3, 200e-3},
		}),
		Uninspected: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extauthz", Name: "body_uninspected_total",
			Help: "Requests judged on headers alone because the body was over the limit, truncated or not sent.",
		}),
		Malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extauthz", Name: "malformed_total",
			Help: "Check requests without usable HTTP attributes, denied.",
		}),
		InjectionFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Subsystem: "extauthz", Name: "injection_failures_total",
			Help: "Allowed requests denied because a credential could not be injected.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Answers, m.Duration, m.Uninspected, m.Malformed, m.InjectionFailures)
	}
	return m
}

// observe counts one answered verdict.
func (m *Metrics) observe(v verdict, d time.Duration) {
	m.answer(v).Inc()
	m.Duration.Observe(d.Seconds())
}

// answer returns the Answers series of v.
func (m *Metrics) answer(v verdict) prometheus.Counter {
	st := 200
	if !allowed(v) {
		st = v.status
	}
	si := slices.Index(answerStatuses[:], st)
	if si < 0 || int(v.Decision) >= len(m.answers[0]) {
		return m.Answers.WithLabelValues(strconv.Itoa(st), v.Decision.String())
	}
	p := &m.answers[si][v.Decision]
	if r := p.Load(); r != nil {
		return r.Counter
	}
	c := m.Answers.WithLabelValues(strconv.Itoa(st), v.Decision.String())
	p.Store(&counterRef{c})
	return c
}
