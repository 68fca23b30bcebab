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
	if err := run(context.Background(), options{addr: addr, duration: time.Second, concurrency: 1, conns: 1, target: "opa"}, &bytes.Buffer{}); err == nil {
		t.Fatal("no error for an unknown target")
	}
}
