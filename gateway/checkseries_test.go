package gateway

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/agent-assembly/agent-assembly/action"
)

// TestCheckSeries: cached series are the vectors' own, for known and unknown
// label values alike.
func TestCheckSeries(t *testing.T) {
	m := NewMetrics(nil)
	var s checkSeries
	for range 2 {
		s.count(m, action.Allow, action.KindNetworkCall, action.ModeEnforce, LayerEnvoy).Inc()
		s.count(m, action.Deny, action.KindLLMCall, action.ModeObserve, LayerSDK).Inc()
		s.count(m, action.Allow, action.KindNetworkCall, action.ModeEnforce, "other").Inc()
		s.duration(m, action.Pending).Observe(0.5)
	}
	s.count(m, action.Decision(9), action.Kind(20), action.Mode(7), LayerKernel).Inc()
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"allow", "network_call", "enforce", "envoy"}, 2},
		{[]string{"deny", "llm_call", "observe", "sdk"}, 2},
		{[]string{"allow", "network_call", "enforce", "other"}, 2},
		{[]string{"decision(9)", "kind(20)", "mode(7)", "kernel"}, 1},
	} {
		var pb dto.Metric
		if err := m.Checks.WithLabelValues(c.labels...).Write(&pb); err != nil {
			t.Fatal(err)
		}
		if got := pb.GetCounter().GetValue(); got != c.want {
			t.Errorf("aa_checks_total%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if n := series(m.Checks); n != 4 {
		t.Errorf("%d aa_checks_total series, want 4", n)
	}
	if n := series(m.CheckDuration); n != 1 {
		t.Errorf("%d aa_check_duration_seconds series, want 1", n)
	}
}

func series(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 100)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

func BenchmarkCheckSeries(b *testing.B) {
	m := NewMetrics(nil)
	b.Run("cached", func(b *testing.B) {
		var s checkSeries
		for b.Loop() {
			s.count(m, action.Allow, action.KindNetworkCall, action.ModeEnforce, LayerEnvoy).Inc()
			s.duration(m, action.Allow).Observe(0.001)
		}
	})
	b.Run("WithLabelValues", func(b *testing.B) {
		for b.Loop() {
			m.Checks.WithLabelValues("allow", "network_call", "enforce", LayerEnvoy).Inc()
			m.CheckDuration.WithLabelValues("allow").Observe(0.001)
		}
	})
}
