package server

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// TestMetricFamilies drives a real gateway through a check, an Envoy node
// that ACKs, one that NACKs and a runtime reporting a kernel verdict and ring
// buffer drops, then scrapes /metrics and checks that each family operators
// alert on is there, with its type, its labels and its unit in the name.
func TestMetricFamilies(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	if _, err := g.client.CheckAction(ctx, toolReq(coder, "git_status", "")); err != nil {
		t.Fatal(err)
	}
	_, err := v1.NewAuditServiceClient(g.conn).ReportEvents(ctx, &v1.ReportEventsRequest{Reporter: "host-1/runtime", KernelDrops: 2,
		Events: []*v1.ReportedEvent{{EventId: "k1", Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.Now(), Action: netReq(coder, "evil.example.com", 443),
			Decision: v1.Decision_DENY, RuleId: "kernel", Reason: "connect denied in the kernel"}}})
	if err != nil {
		t.Fatal(err)
	}
	// A pending approval, and an LLM call under research's team budget:
	// gpt-4o at $0.0025 per 1k prompt and $0.01 per 1k completion tokens
	// reserves $0.35 and settles at $0.70.
	if r, err := g.client.CheckAction(ctx, rmReq(`{"command":"rm -rf build"}`)); err != nil || r.GetDecision() != v1.Decision_PENDING {
		t.Fatalf("check needing approval: %v %v", r, err)
	}
	llm, err := g.client.CheckAction(ctx, &v1.CheckActionRequest{Agent: researcher, Context: &v1.CheckActionRequest_LlmCall{
		LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: 100_000, CompletionTokens: 10_000}}})
	if err != nil || llm.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("LLM call: %v %v", llm, err)
	}
	if _, err := g.client.RecordUsage(ctx, &v1.RecordUsageRequest{Agent: researcher, DecisionId: llm.GetDecisionId(), PromptTokens: 200_000, CompletionTokens: 20_000}); err != nil {
		t.Fatalf("RecordUsage: %v", err)
	}
	adsAnswer(t, g.conn, "acme/research/researcher-1", "")
	adsAnswer(t, g.conn, "acme/eng/coder-1", "Proto constraint validation failed: metrics test")

	// family: name, type, and a sample that must be present (a regexp on
	// one exposition line).
	want := []struct{ name, typ, sample string }{
		// checks by decision, layer and action type; decision latency
		{"aa_checks_total", "counter", `aa_checks_total\{decision="allow",kind="tool_call",layer="sdk",mode="enforce"\} 1`},
		{"aa_check_duration_seconds", "histogram", `aa_check_duration_seconds_bucket\{decision="allow",le="\+Inf"\} [1-9]`},
		// audit commit batch size and latency
		{"aa_audit_batch_records", "histogram", `aa_audit_batch_records_count [1-9]`},
		{"aa_audit_write_seconds", "histogram", `aa_audit_write_seconds_count\{result="ok"\} [1-9]`},
		// xDS pushes, ACKs, NACKs
		{"aa_xds_pushes_total", "counter", `aa_xds_pushes_total\{.*\} [1-9]`},
		{"aa_xds_acks_total", "counter", `aa_xds_acks_total\{.*\} [1-9]`},
		{"aa_xds_nacks_total", "counter", `aa_xds_nacks_total\{.*\} [1-9]`},
		// eBPF ring buffer drops a runtime reports, as alerts (the kernel
		// layer's own counters, aa_bpf_*, are served by aa-runtime exec
		// --metrics: bpf/network_test.go)
		{"aa_alerts_total", "counter", `aa_alerts_total\{.*kind="ebpf_drops".*\} [1-9]`},
		// budget spend: estimates charged when allowed, actual cost settled
		{"aa_budget_reserved_usd_total", "counter", `aa_budget_reserved_usd_total\{org="acme",team="research"\} 0\.35`},
		{"aa_budget_spend_usd_total", "counter", `aa_budget_spend_usd_total\{org="acme",team="research"\} 0\.7`},
		// pending approvals
		{"aa_approvals_pending", "gauge", `aa_approvals_pending 1`},
		// store errors (each operation present at 0; metrics_ops8_test.go
		// makes them move)
		{"aa_store_errors_total", "counter", `aa_store_errors_total\{op="registry"\} 0`},
		{"aa_audit_append_errors_total", "counter", `aa_audit_append_errors_total 0`},
		{"aa_alert_store_errors_total", "counter", `aa_alert_store_errors_total 0`},
		// operator and agent authentication refusals
		{"aa_operator_auth_unaudited_total", "counter", `aa_operator_auth_unaudited_total 0`},
	}
	var body string
	var missing []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(g.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body, missing = string(b), nil
		for _, w := range want {
			if !strings.Contains(body, "# TYPE "+w.name+" "+w.typ+"\n") {
				missing = append(missing, "# TYPE "+w.name+" "+w.typ)
			}
			if !regexp.MustCompile(`(?m)^` + w.sample + `$`).MatchString(body) {
				missing = append(missing, w.sample)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks:\n  %s\n\n%s", strings.Join(missing, "\n  "), familyLines(body))
		}
	}
}

// familyLines keeps the aa_ TYPE lines of an exposition, for failure output.
func familyLines(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "# TYPE aa_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
