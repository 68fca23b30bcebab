package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

func startGateway(t *testing.T) string {
	return servertest.Start(t, "../../examples/policies", nil)
}

// TestServerSideLatency runs each target against a gateway with its HTTP
// listener and checks that the report carries the gateway's own histogram
// for exactly the measured checks (warm-up excluded), consistent with what
// the client saw.
func TestServerSideLatency(t *testing.T) {
	addr, httpAddr := servertest.StartHTTP(t, "../../examples/policies", nil)
	metrics := "http://" + httpAddr + "/metrics"
	for _, target := range []string{"checkaction", "extauthz"} {
		var out bytes.Buffer
		o := options{addr: addr, rate: 300, duration: time.Second, warmup: 300 * time.Millisecond, concurrency: 8, conns: 2,
			json: true, target: target, metrics: metrics}
		if err := run(context.Background(), o, &out); err != nil {
			t.Fatal(err)
		}
		var rep Report
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatal(err)
		}
		s := rep.Server
		if s == nil {
			t.Fatalf("%s: no gateway-side latency in %s", target, out.String())
		}
		if s.Metric != serverMetric(target) || s.Checks != uint64(rep.Requests) {
			t.Fatalf("%s: gateway counted %d checks in %s, the client sent %d (warm-up excluded)", target, s.Checks, s.Metric, rep.Requests)
		}
		// The gateway's time is part of the client's, so its p50 bucket
		// cannot start above the client's p50.
		if s.P50.Lower > rep.P50 || s.P50.Upper < s.P50.Lower || s.P99.Lower < s.P50.Lower {
			t.Fatalf("%s: gateway-side p50 %s / p99 %s against the client's p50 %s", target, s.P50, s.P99, rep.P50)
		}
		for i := 1; i < len(s.Buckets); i++ {
			if s.Buckets[i].Share < s.Buckets[i-1].Share || s.Buckets[i].UpTo <= s.Buckets[i-1].UpTo {
				t.Fatalf("%s: buckets not cumulative: %+v", target, s.Buckets)
			}
		}
		if last := s.Buckets[len(s.Buckets)-1]; last.Share != 1 {
			t.Fatalf("%s: the last bucket holds %.3f of the checks, want all", target, last.Share)
		}
	}
	// The health target has no gateway histogram; text output names the
	// gateway-side line only when there is one.
	var out bytes.Buffer
	if err := run(context.Background(), options{addr: addr, rate: 300, duration: 500 * time.Millisecond, concurrency: 4, conns: 1,
		target: "health", metrics: metrics}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "open loop at 300/s") || strings.Contains(out.String(), "gateway-side") {
		t.Fatalf("health run printed:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), options{addr: addr, duration: 300 * time.Millisecond, concurrency: 4, conns: 1,
		target: "checkaction", metrics: metrics}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "gateway-side (aa_check_duration_seconds, ") {
		t.Fatalf("closed-loop text report has no gateway-side line:\n%s", out.String())
	}
}

func TestQuantileBucket(t *testing.T) {
	bounds := []float64{100e-6, 250e-6, 1e-3}
	before := histogram{bounds: bounds, counts: []uint64{10, 10, 10}, total: 10}
	// 100 checks in the run: 60 within 100µs, 35 in (100µs, 250µs], 4 in
	// (250µs, 1ms], 1 above 1ms.
	after := histogram{bounds: bounds, counts: []uint64{70, 105, 109}, total: 110}
	s, err := serverLatency("m", before, after)
	if err != nil {
		t.Fatal(err)
	}
	if s.Checks != 100 || s.P50 != (QuantileBucket{0, 100 * time.Microsecond}) ||
		s.P99 != (QuantileBucket{250 * time.Microsecond, time.Millisecond}) {
		t.Fatalf("got %d checks, p50 %s, p99 %s", s.Checks, s.P50, s.P99)
	}
	if s.Buckets[1].Share != 0.95 {
		t.Fatalf("share within 250µs %.3f, want 0.95", s.Buckets[1].Share)
	}
	// p99.5 falls past the last bound.
	if q := quantileBucket(bounds, []uint64{60, 95, 99}, 100, 0.995); q.String() != "> 1ms" {
		t.Fatalf("past the last bound: %s", q)
	}
	if _, err := serverLatency("m", after, after); err == nil || !strings.Contains(err.Error(), "no checks") {
		t.Fatalf("no checks in the run: %v", err)
	}
}

func TestLoadClosedAndOpenLoop(t *testing.T) {
	addr := startGateway(t)
	for _, tc := range []struct {
		target string
		rate   float64
	}{{"checkaction", 0}, {"checkaction", 200}, {"extauthz", 0}, {"extauthz", 200}} {
		rate := tc.rate
		var out bytes.Buffer
		o := options{addr: addr, rate: rate, duration: time.Second, concurrency: 8, conns: 2, json: true, target: tc.target}
		if err := run(context.Background(), o, &out); err != nil {
			t.Fatal(err)
		}
		var rep Report
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Requests == 0 || rep.Errors != 0 || rep.P50 <= 0 || rep.P50 > rep.P99 || rep.P99 > rep.Max {
			t.Fatalf("%s at rate %v: implausible report %+v", tc.target, rate, rep)
		}
		if rate > 0 && (rep.Requests < 150 || rep.Requests > 250) {
			t.Fatalf("open loop at %v/s for 1s sent %d requests", rate, rep.Requests)
		}
		// Each request's latency from the schedule is its send lag plus its
		// latency from the send, so it bounds the latter at every quantile.
		if rate > 0 && (rep.LagP50 < 0 || rep.LagP50 > rep.LagP99 || rep.ScheduledP50 < rep.P50 || rep.ScheduledP99 < rep.P99) {
			t.Fatalf("open loop at %v/s: send lag and latency from the schedule inconsistent: %+v", rate, rep)
		}
	}
	if err := run(context.Background(), options{addr: "127.0.0.1:1", duration: time.Second, concurrency: 1, conns: 1, target: "checkaction"}, &bytes.Buffer{}); err == nil {
		t.Fatal("no error against a closed port")
	}
	// The gateway authenticates agents: a token that is not one fails fast,
	// for both targets (ext_authz answers with a denial, not an error).
	for _, target := range []string{"checkaction", "extauthz"} {
		err := run(context.Background(), options{addr: addr, duration: time.Second, concurrency: 1, conns: 1, target: target, token: "aa1.bogus.token"}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "first check") {
			t.Fatalf("%s with a bogus token: %v, want the first check to fail", target, err)
		}
	}
	// A gateway without an HTTP listener: the run still reports, without
	// the gateway side.
	var out bytes.Buffer
	if err := run(context.Background(), options{addr: addr, rate: 100, duration: 300 * time.Millisecond, concurrency: 2, conns: 1, json: true,
		target: "checkaction", metrics: "http://127.0.0.1:1/metrics"}, &out); err != nil || strings.Contains(out.String(), `"server"`) {
		t.Fatalf("unreachable -metrics: %v, %s", err, out.String())
	}
	if err := run(context.Background(), options{addr: addr, duration: time.Second, concurrency: 1, conns: 1, target: "opa"}, &bytes.Buffer{}); err == nil {
		t.Fatal("no error for an unknown target")
	}
}
