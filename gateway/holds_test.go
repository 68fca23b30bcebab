package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

var researcher = action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}

// budgetCore is the example policy with in-memory counters: the research
// team has a $50 daily budget.
func budgetCore(t *testing.T, a Auditor) *Core {
	t.Helper()
	pricing, err := budget.DefaultPricing()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCore(Options{Audit: a, Chain: "unit", Counters: memory.NewCounters(nil), Pricing: pricing})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(exampleSnapshot(t))
	return c
}

// gpt-4o, 100k prompt + 10k completion tokens: $0.35 reserved.
func researchLLM() *v1.CheckActionRequest {
	return &v1.CheckActionRequest{
		Agent:   &v1.AgentId{OrgId: researcher.Org, TeamId: researcher.Team, AgentId: researcher.Agent},
		Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: 100_000, CompletionTokens: 10_000}},
	}
}

func teamSpend(t *testing.T, c *Core) budget.MicroUSD {
	t.Helper()
	sc, err := budget.ScopeOf(researcher, policy.BudgetPerTeam)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.meter.Status(context.Background(), sc.String(), c.Settings(researcher).Budgets)
	if err != nil || len(st) == 0 {
		t.Fatalf("budget status: %v %v", st, err)
	}
	return st[0].Spent
}

// TestAuditFailureReleasesBudget: an LLM call allowed and reserved, then
// denied because its audit record could not be written, never runs, so its
// estimate goes back; the next call, audited, is charged.
func TestAuditFailureReleasesBudget(t *testing.T) {
	rec := &recorder{err: errors.New("disk on fire")}
	c := budgetCore(t, rec)
	ctx := context.Background()
	resp, err := c.Check(ctx, researchLLM())
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "audit log unavailable") {
		t.Fatalf("LLM call with the audit log down: %v %v, want a fail-closed deny", resp, err)
	}
	if got := teamSpend(t, c); got != 0 {
		t.Fatalf("team spend after a call denied for its audit write = %s, want 0", got)
	}
	if _, err := c.ReconcileUsage(ctx, resp.GetDecisionId(), nil, 1, 1); !errors.Is(err, ErrNoReservation) {
		t.Fatalf("usage for the denied call: %v, want ErrNoReservation", err)
	}
	rec.mu.Lock()
	rec.err = nil
	rec.mu.Unlock()
	resp, err = c.Check(ctx, researchLLM())
	if err != nil || resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("LLM call with the audit log back: %v %v", resp, err)
	}
	if got, want := teamSpend(t, c), budget.MicroUSD(350_000); got != want {
		t.Fatalf("team spend = %s, want %s", got, want)
	}
	u, err := c.ReconcileUsage(ctx, resp.GetDecisionId(), &researcher, 200_000, 20_000)
	if err != nil || u.Cost.Amount != 700_000 {
		t.Fatalf("ReconcileUsage = %+v, %v; want $0.70", u, err)
	}
	if got, want := teamSpend(t, c), budget.MicroUSD(700_000); got != want {
		t.Fatalf("team spend after usage = %s, want %s", got, want)
	}
}
