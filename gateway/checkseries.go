package gateway

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/action"
)

// Label value counts of aa_checks_total, for checkSeries.
const (
	nDecisions = int(action.Deny) + 1
	nKinds     = int(action.KindToolResult) + 1
	nModes     = int(action.ModeDisabled) + 1
)

// layers are the layer label values checkSeries caches.
var layers = [...]string{LayerSDK, LayerEnvoy, LayerRuntime, LayerKernel}

// checkSeries caches the aa_checks_total and aa_check_duration_seconds
// series of a Core by label values, so a decision finds its series without
// hashing its label values (about 0.3 µs of a check). Series are looked up
// on first use, as with WithLabelValues, so /metrics shows the same series;
// label values outside the known sets are looked up every time. The vectors'
// series are never deleted, so a cached one stays the exported one.
type checkSeries struct {
	counts    [nDecisions][nKinds][nModes][len(layers)]atomic.Pointer[counterRef]
	durations [nDecisions]atomic.Pointer[observerRef]
}

type counterRef struct{ prometheus.Counter }

type observerRef struct{ prometheus.Observer }

// count returns the aa_checks_total series of one decision.
func (s *checkSeries) count(m *Metrics, d action.Decision, k action.Kind, mode action.Mode, layer string) prometheus.Counter {
	li := -1
	for i, l := range layers {
		if l == layer {
			li = i
			break
		}
	}
	if li < 0 || int(d) >= nDecisions || int(k) >= nKinds || int(mode) >= nModes {
		return m.Checks.WithLabelValues(d.String(), k.String(), mode.String(), layer)
	}
	p := &s.counts[d][k][mode][li]
	if r := p.Load(); r != nil {
		return r.Counter
	}
	c := m.Checks.WithLabelValues(d.String(), k.String(), mode.String(), layer)
	p.Store(&counterRef{c})
	return c
}

// duration returns the aa_check_duration_seconds series of a decision.
func (s *checkSeries) duration(m *Metrics, d action.Decision) prometheus.Observer {
	if int(d) >= nDecisions {
		return m.CheckDuration.WithLabelValues(d.String())
	}
	p := &s.durations[d]
	if r := p.Load(); r != nil {
		return r.Observer
	}
	o := m.CheckDuration.WithLabelValues(d.String())
	p.Store(&observerRef{o})
	return o
}
