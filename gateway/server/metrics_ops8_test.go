package server

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// scrape returns the value of the sample of /metrics that matches sample (a
// regexp of the series, without its value), or -1 when there is none.
func scrape(t *testing.T, g *testGateway, sample string) float64 {
	t.Helper()
	resp, err := http.Get(g.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^` + sample + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatalf("sample %s: %v", sample, err)
	}
	return v
}

// TestStoreErrorsMetric closes a running gateway's store under it: the next
// check is denied, and aa_store_errors_total counts the agent registry read
// and the audit append that failed (the latter also in
// aa_audit_append_errors_total); the pending approvals gauge cannot be read,
// so its sample is left out and the failed read counted.
func TestStoreErrorsMetric(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	for _, op := range []string{"audit_append", "registry", "approvals", "counters", "policy_versions", "costs"} {
		if v := scrape(t, g, `aa_store_errors_total\{op="`+op+`"\}`); v != 0 {
			t.Fatalf("aa_store_errors_total{op=%q} = %v before any failure, want 0", op, v)
		}
	}
	if v := scrape(t, g, `aa_approvals_pending`); v != 0 {
		t.Fatalf("aa_approvals_pending = %v with a working store and no approval, want 0", v)
	}

	if err := g.srv.Store().Close(); err != nil {
		t.Fatal(err)
	}
	// An agent the registry cache has not seen, so the registry is asked.
	resp, err := g.client.CheckAction(context.Background(), toolReq(agent("acme", "eng", "fresh-1"), "git_status", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_DENY || resp.GetPolicyRuleId() != "audit" {
		t.Fatalf("check with the store closed: %v, want DENY by audit", resp)
	}
	for _, op := range []string{"registry", "audit_append"} {
		if v := scrape(t, g, `aa_store_errors_total\{op="`+op+`"\}`); v < 1 {
			t.Errorf("aa_store_errors_total{op=%q} = %v after the store failed, want at least 1", op, v)
		}
	}
	if v := scrape(t, g, `aa_audit_append_errors_total`); v < 1 {
		t.Errorf("aa_audit_append_errors_total = %v, want at least 1", v)
	}
	if v := scrape(t, g, `aa_approvals_pending`); v != -1 {
		t.Errorf("aa_approvals_pending = %v with the store closed, want no sample", v)
	}
	if v := scrape(t, g, `aa_store_errors_total\{op="approvals"\}`); v < 1 {
		t.Errorf("aa_store_errors_total{op=\"approvals\"} = %v after scrapes that could not count approvals, want at least 1", v)
	}
}
