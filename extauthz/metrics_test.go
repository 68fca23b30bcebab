package extauthz

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// TestAnswerSeries: the cached Answers series are the vector's own, for
// cached and uncached label values alike.
func TestAnswerSeries(t *testing.T) {
	m := NewMetrics(nil)
	out := func(d action.Decision) gateway.Outcome { return gateway.Outcome{Decision: d} }
	for range 2 {
		m.observe(verdict{Outcome: out(action.Allow)}, 0)
		m.observe(verdict{Outcome: out(action.Redact), status: 403}, 0) // allowed: 200
		m.observe(verdict{Outcome: out(action.Deny), status: 429}, 0)
		m.observe(verdict{Outcome: out(action.Pending), status: 403}, 0)
		m.observe(verdict{Outcome: out(action.Deny), status: 401}, 0) // not cached
	}
	m.observe(verdict{Outcome: out(action.Decision(9)), status: 503}, 0)
	for _, c := range []struct {
		status, decision string
		want             float64
	}{
		{"200", "allow", 2}, {"200", "redact", 2}, {"429", "deny", 2}, {"403", "pending", 2},
		{"401", "deny", 2}, {"503", "decision(9)", 1},
	} {
		var pb dto.Metric
		if err := m.Answers.WithLabelValues(c.status, c.decision).Write(&pb); err != nil {
			t.Fatal(err)
		}
		if got := pb.GetCounter().GetValue(); got != c.want {
			t.Errorf("answers{status=%s,decision=%s} = %v, want %v", c.status, c.decision, got, c.want)
		}
	}
	ch := make(chan prometheus.Metric, 100)
	m.Answers.Collect(ch)
	if n := len(ch); n != 6 {
		t.Errorf("%d answer series, want 6", n)
	}
}
