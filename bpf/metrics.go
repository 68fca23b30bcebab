package bpf

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the kernel layer's counters: verdict events written to
// the ring buffer, verdicts dropped because it was full, and governed
// cgroups. Register it on the runtime's registry.
type Collector struct {
	g                       *Governor
	events, drops, governed *prometheus.Desc
}

// NewCollector returns a Collector for g.
func NewCollector(g *Governor) *Collector {
	return &Collector{
		g:        g,
		events:   prometheus.NewDesc("aa_bpf_events_total", "Kernel verdicts written to the ring buffer.", nil, nil),
		drops:    prometheus.NewDesc("aa_bpf_ringbuf_drops_total", "Kernel verdicts lost because the ring buffer was full (the verdict was still enforced).", nil, nil),
		governed: prometheus.NewDesc("aa_bpf_governed_cgroups", "Cgroups with an agent entry in the kernel maps.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.drops
	ch <- c.governed
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.g.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.events, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(st.Events))
	ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(st.Drops))
	ch <- prometheus.MustNewConstMetric(c.governed, prometheus.GaugeValue, float64(len(c.g.Governed())))
}

var _ prometheus.Collector = (*Collector)(nil)
