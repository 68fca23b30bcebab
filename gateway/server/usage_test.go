package server

import (
	"context"
	"math"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// llmCall checks a gpt-4o call of researcher-1, whose team has a $50 daily
// budget in the example policy: $0.0025 per 1k prompt tokens and $0.01 per
// 1k completion tokens, so 100k + 10k reserve $0.35.
func llmCall(t *testing.T, g *testGateway) string {
	t.Helper()
	resp, err := g.client.CheckAction(context.Background(), &v1.CheckActionRequest{Agent: researcher, Context: &v1.CheckActionRequest_LlmCall{
		LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: 100_000, CompletionTokens: 10_000}}})
	if err != nil || resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("LLM call: %v %v", resp, err)
	}
	return resp.GetDecisionId()
}

// teamDailySpend reads research's daily spend through g.
func teamDailySpend(t *testing.T, g *testGateway) float64 {
	t.Helper()
	resp, err := g.client.GetBudget(context.Background(), &v1.GetBudgetRequest{Scope: "team/acme/research"})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.GetBudgets() {
		if b.GetWindow() == "daily" {
			return b.GetSpentUsd()
		}
	}
	t.Fatalf("no daily budget in %v", resp)
	return 0
}

func wantSpend(t *testing.T, g *testGateway, want float64) {
	t.Helper()
	if got := teamDailySpend(t, g); math.Abs(got-want) > 1e-9 {
		t.Fatalf("team daily spend = %v, want %v", got, want)
	}
}

func usage(g *testGateway, id string, prompt, completion int64, who *v1.AgentId) error {
	_, err := g.client.RecordUsage(context.Background(), &v1.RecordUsageRequest{Agent: who, DecisionId: id, PromptTokens: prompt, CompletionTokens: completion})
	return err
}

// checkSettleOnce drives the reservation life cycle with the LLM call checked
// on a and its usage reported to b (the same gateway, or another replica).
func checkSettleOnce(t *testing.T, a, b *testGateway) {
	t.Helper()
	id := llmCall(t, a)
	wantSpend(t, b, 0.35)
	// Another agent cannot settle it, and trying leaves it for its own.
	if err := usage(b, id, 1, 1, coder); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "does not match the agent") {
		t.Fatalf("usage reported by another agent: %v, want InvalidArgument", err)
	}
	if err := usage(b, id, 200_000, 20_000, researcher); err != nil {
		t.Fatalf("RecordUsage: %v", err)
	}
	wantSpend(t, a, 0.70)
	// Settled once: a second report, to either gateway, changes nothing.
	for _, g := range []*testGateway{a, b} {
		err := usage(g, id, 1_000_000, 0, researcher)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no open budget reservation") {
			t.Fatalf("second RecordUsage: %v, want FailedPrecondition naming no open reservation", err)
		}
	}
	wantSpend(t, b, 0.70)
	if err := usage(a, "0197a4b0-0000-7000-8000-00000000abcd", 1, 1, researcher); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("usage for an unknown decision: %v, want FailedPrecondition", err)
	}
}

func TestUsageSettlesOnce(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	checkSettleOnce(t, g, g)
}

// TestUsageSettlesOnAnyReplica reserves on one replica and reports usage to
// the other (as when Envoy's ext_proc stream reaches another replica than its
// ext_authz check): the reservation lives in Redis, so either replica settles
// it, exactly once.
func TestUsageSettlesOnAnyReplica(t *testing.T) {
	a, b := sharedReplicas(t)
	checkSettleOnce(t, a, b)
	// Concurrent reports of one decision to both replicas: one settles.
	id := llmCall(t, a)
	errs := make(chan error, 2)
	for _, g := range []*testGateway{a, b} {
		go func() { errs <- usage(g, id, 0, 0, researcher) }()
	}
	ok := 0
	for range 2 {
		if err := <-errs; err == nil {
			ok++
		} else if status.Code(err) != codes.FailedPrecondition {
			t.Fatal(err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of two concurrent reports settled the reservation, want 1", ok)
	}
	wantSpend(t, a, 0.70) // released at zero
}

// Reports by another agent, however many and however timed, never make the
// owner's report miss its reservation: they read it without taking it.
func TestUsageOfAnotherAgentCannotRaceTheOwner(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	for range 20 {
		id := llmCall(t, g)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := usage(g, id, 1, 1, coder); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.FailedPrecondition {
						t.Errorf("usage by another agent: %v", err)
						return
					}
				}
			})
		}
		err := usage(g, id, 100_000, 10_000, researcher)
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("the owner's report while other agents report the same decision: %v", err)
		}
	}
}
