package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ServerLatency is the gateway's own account of the checks answered during
// the measured run: the change in its latency histogram between a scrape
// of /metrics before the run and one after. It covers the time from the
// gateway receiving a check to answering it (durable audit write included),
// without the network, the gRPC transport or the client, so it separates
// what the gateway adds from what the machine's scheduling and loopback
// cost. A histogram only knows its buckets, so quantiles are reported as
// the bucket that holds them.
type ServerLatency struct {
	Metric string `json:"metric"`
	Checks uint64 `json:"checks"`
	// Buckets lists, for each upper bound, the share of the run's checks
	// answered within it.
	Buckets []BucketShare `json:"buckets"`
	// P50 and P99 are the buckets holding those quantiles: above Lower
	// and at most Upper (Upper is +Inf past the last bound).
	P50 QuantileBucket `json:"p50"`
	P99 QuantileBucket `json:"p99"`
}

// BucketShare is the share of checks answered within UpTo.
type BucketShare struct {
	UpTo  time.Duration `json:"up_to_ns"`
	Share float64       `json:"share"`
}

// QuantileBucket bounds a quantile to one histogram bucket.
type QuantileBucket struct {
	Lower time.Duration `json:"lower_ns"`
	Upper time.Duration `json:"upper_ns"` // math.MaxInt64 when past the last bound
}

func (q QuantileBucket) String() string {
	if q.Upper == math.MaxInt64 {
		return fmt.Sprintf("> %s", q.Lower)
	}
	if q.Lower == 0 {
		return fmt.Sprintf("≤ %s", q.Upper)
	}
	return fmt.Sprintf("in (%s, %s]", q.Lower, q.Upper)
}

// serverMetric is the histogram the gateway keeps for target, or "" when
// it keeps none (health).
func serverMetric(target string) string {
	switch target {
	case "checkaction":
		return "aa_check_duration_seconds"
	case "extauthz":
		return "aa_extauthz_check_duration_seconds"
	}
	return ""
}

// histogram is the cumulative bucket counts of one histogram, summed over
// its label sets.
type histogram struct {
	bounds []float64 // seconds, ascending
	counts []uint64  // cumulative
	total  uint64
}

// scrapeHistogram reads metric from the Prometheus text exposition at url.
func scrapeHistogram(ctx context.Context, url, metric string) (histogram, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return histogram{}, fmt.Errorf("scrape %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return histogram{}, fmt.Errorf("scrape %s: parse the metrics: %w", url, err)
	}
	fam, ok := families[metric]
	if !ok || fam.GetType() != dto.MetricType_HISTOGRAM {
		return histogram{}, fmt.Errorf("scrape %s: no histogram %s (is this an agent-assembly gateway's /metrics?)", url, metric)
	}
	var h histogram
	for i, m := range fam.GetMetric() {
		hist := m.GetHistogram()
		bs := hist.GetBucket()
		if i == 0 {
			for _, b := range bs {
				h.bounds = append(h.bounds, b.GetUpperBound())
			}
			h.counts = make([]uint64, len(bs))
		}
		if len(bs) != len(h.bounds) {
			return histogram{}, fmt.Errorf("scrape %s: %s has label sets with different buckets", url, metric)
		}
		for j, b := range bs {
			h.counts[j] += b.GetCumulativeCount()
		}
		h.total += hist.GetSampleCount()
	}
	return h, nil
}

// serverLatency is the run's share of the histogram: after minus before.
func serverLatency(metric string, before, after histogram) (*ServerLatency, error) {
	if len(after.bounds) == 0 {
		return nil, fmt.Errorf("%s has no observations", metric)
	}
	if len(before.bounds) != 0 && len(before.bounds) != len(after.bounds) {
		return nil, fmt.Errorf("%s changed its buckets during the run", metric)
	}
	n := after.total - before.total
	if after.total < before.total || n == 0 {
		return nil, fmt.Errorf("%s counted no checks during the run (was the gateway restarted?)", metric)
	}
	s := &ServerLatency{Metric: metric, Checks: n}
	cum := make([]uint64, len(after.bounds))
	for i := range after.bounds {
		cum[i] = after.counts[i]
		if len(before.counts) != 0 {
			cum[i] -= before.counts[i]
		}
		s.Buckets = append(s.Buckets, BucketShare{UpTo: seconds(after.bounds[i]), Share: float64(cum[i]) / float64(n)})
	}
	s.P50, s.P99 = quantileBucket(after.bounds, cum, n, 0.5), quantileBucket(after.bounds, cum, n, 0.99)
	return s, nil
}

// quantileBucket finds the bucket holding quantile q of n observations.
func quantileBucket(bounds []float64, cum []uint64, n uint64, q float64) QuantileBucket {
	rank := uint64(math.Ceil(q * float64(n)))
	lower := time.Duration(0)
	for i, c := range cum {
		if c >= rank {
			return QuantileBucket{Lower: lower, Upper: seconds(bounds[i])}
		}
		lower = seconds(bounds[i])
	}
	return QuantileBucket{Lower: lower, Upper: math.MaxInt64}
}

func seconds(s float64) time.Duration {
	if math.IsInf(s, 1) {
		return math.MaxInt64
	}
	return time.Duration(math.Round(s * 1e9))
}

// printServerLatency writes the one-line summary: the quantile buckets and
// the shares within the bounds the targets are stated in.
func printServerLatency(w io.Writer, s *ServerLatency) {
	fmt.Fprintf(w, "gateway-side (%s, %d checks): p50 %s  p99 %s", s.Metric, s.Checks, s.P50, s.P99)
	for _, b := range s.Buckets {
		if b.UpTo == 250*time.Microsecond || b.UpTo == time.Millisecond {
			fmt.Fprintf(w, "  within %s %.1f%%", b.UpTo, 100*b.Share)
		}
	}
	fmt.Fprintln(w)
}
