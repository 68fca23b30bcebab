package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

var reResets = regexp.MustCompile(`resets in [0-9hms.]+`)

// TestAlertsAndCosts drives a budget crossing, an exhaustion and a blocked
// credential through a real gateway and reads them back with aasm alerts
// list/watch, silences and aasm budget costs.
func TestAlertsAndCosts(t *testing.T) {
	addr := servertest.Start(t, "testdata/alerts-policy", servertest.AgentAuthOff)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pol := v1.NewPolicyServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bot := &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "bot"}
	check := func(req *v1.CheckActionRequest) *v1.CheckActionResponse {
		t.Helper()
		req.Agent = bot
		r, err := pol.CheckAction(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	llm := func(prompt, completion int64) *v1.CheckActionResponse {
		return check(&v1.CheckActionRequest{Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{
			Provider: "openai", Model: "gpt-4o", PromptTokens: prompt, CompletionTokens: completion}}})
	}
	probe := func() {
		check(&v1.CheckActionRequest{Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "example.org", Port: 443, Protocol: "https"}}})
	}

	// aasm alerts watch runs until cancelled; probes (default denies, info)
	// are raised until the first shows, so the watch is known to be in place.
	wctx, wcancel := context.WithCancel(ctx)
	var wout, werr syncbuf.Buffer
	wdone := make(chan int, 1)
	go func() {
		wdone <- execute(wctx, []string{"--addr", addr, "-o", "json", "alerts", "watch"}, &wout, &werr)
	}()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(wout.String(), "policy_violation"); {
		if time.Now().After(deadline) {
			t.Fatalf("alerts watch showed nothing: %s", werr.String())
		}
		probe()
		time.Sleep(20 * time.Millisecond)
	}

	r1 := llm(100_000, 10_000)
	if _, err := pol.RecordUsage(ctx, &v1.RecordUsageRequest{Agent: bot, DecisionId: r1.GetDecisionId(), PromptTokens: 200_000, CompletionTokens: 20_000}); err != nil {
		t.Fatal(err)
	}
	r2 := llm(40_000, 0)
	if _, err := pol.RecordUsage(ctx, &v1.RecordUsageRequest{Agent: bot, DecisionId: r2.GetDecisionId(), PromptTokens: 40_000}); err != nil {
		t.Fatal(err)
	}
	if r := llm(100_000, 0); r.GetDecision() != v1.Decision_DENY {
		t.Fatalf("over-budget call: %v", r)
	}
	key := "AKIA" + strings.Repeat("Q", 8) + "EXAMPLE7"
	if r := check(&v1.CheckActionRequest{Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "deploy", ArgsJson: `{"k":"` + key + `"}`}}}); r.GetDecision() != v1.Decision_DENY {
		t.Fatalf("credential call: %v", r)
	}

	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(wout.String(), "credential_leak"); {
		if time.Now().After(deadline) {
			t.Fatalf("alerts watch lacks the credential leak:\n%s", wout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	wcancel()
	if code := <-wdone; code != exitAllow {
		t.Fatalf("alerts watch exited %d after cancel: %s", code, werr.String())
	}
	var kinds []string
	for _, line := range strings.Split(strings.TrimSpace(wout.String()), "\n") {
		var a struct{ Kind, Severity string }
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			t.Fatalf("watch line %q is not JSON: %v", line, err)
		}
		if a.Kind != "policy_violation" {
			kinds = append(kinds, a.Kind+"/"+a.Severity)
		}
	}
	if got := strings.Join(kinds, " "); got != "budget_threshold/warning budget_exhausted/critical credential_leak/critical" {
		t.Fatalf("watched %s", got)
	}

	norm := func(s string) string { return normalize(reResets.ReplaceAllString(s, "resets in <DUR>"), nil) }
	_, out, errOut := run(t, "--addr", addr, "alerts", "list", "--severity", "warning")
	golden(t, "alerts-list.golden", norm(out))
	if errOut != "" {
		t.Fatalf("alerts list stderr: %s", errOut)
	}
	code, out, _ := run(t, "--addr", addr, "alerts", "list", "--severity", "loud")
	if code != exitError {
		t.Fatalf("alerts list --severity loud: exit %d\n%s", code, out)
	}

	// Silences.
	code, out, errOut = run(t, "--addr", addr, "-o", "json", "alerts", "silence", "create", "--kind", "xds_nack", "--agent-prefix", "acme/", "--duration", "2h", "--comment", "envoy upgrade")
	var sil struct {
		ID        string `json:"id"`
		CreatedBy string `json:"created_by"`
	}
	if err := json.Unmarshal([]byte(out), &sil); code != 0 || err != nil || sil.ID == "" {
		t.Fatalf("silence create: exit %d %v\n%s%s", code, err, out, errOut)
	}
	lit := map[string]string{sil.CreatedBy: "<BY>"}
	_, out, _ = run(t, "--addr", addr, "alerts", "silence", "list")
	golden(t, "alerts-silence-list.golden", normalize(out, lit))
	_, out, _ = run(t, "--addr", addr, "alerts", "silence", "delete", sil.ID)
	golden(t, "alerts-silence-delete.golden", normalize(out, lit))
	if _, out, _ = run(t, "--addr", addr, "alerts", "silence", "list"); strings.Contains(out, sil.ID) {
		t.Fatalf("deleted silence still active:\n%s", out)
	}
	if code, _, errOut = run(t, "--addr", addr, "alerts", "silence", "create", "--kind", "xds_nack"); code != exitError || !strings.Contains(errOut, "--duration") {
		t.Fatalf("silence without an end: exit %d: %s", code, errOut)
	}

	// Costs: $0.70 + $0.10 settled; the refused call cost nothing.
	today := time.Now().UTC().Format(time.DateOnly)
	from := time.Now().UTC().AddDate(0, 0, -29).Format(time.DateOnly)
	dl := map[string]string{today: "<TODAY>", from: "<FROM>"}
	_, out, _ = run(t, "--addr", addr, "budget", "costs", "--by", "agent,model")
	golden(t, "budget-costs-agent-model.golden", normalize(out, dl))
	_, out, _ = run(t, "--addr", addr, "budget", "costs", "--by", "team,day")
	golden(t, "budget-costs-team-day.golden", normalize(out, dl))
	_, out, _ = run(t, "--addr", addr, "budget", "costs")
	golden(t, "budget-costs-total.golden", normalize(out, dl))
	if code, _, errOut = run(t, "--addr", addr, "budget", "costs", "--by", "planet"); code != exitError || !strings.Contains(errOut, "group_by") {
		t.Fatalf("costs --by planet: exit %d: %s", code, errOut)
	}
}
