package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
)

// replicas starts two aa-gateway processes on one fresh PostgreSQL schema
// and one Redis key prefix, as two replicas behind a load balancer would run.
func replicas(t *testing.T) [2]*gatewayProc {
	t.Helper()
	pgURL, redisURL := os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pgURL == "" || redisURL == "" {
		t.Skip("AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	name, store := pgtest.Schema(t, "replica")
	key := filepath.Join(t.TempDir(), "k")
	var out [2]*gatewayProc
	for i := range out {
		out[i] = startProc(t, "-store", store, "-counters", pgtest.WithParam(redisURL, "prefix", name+":"),
			"-secrets-key-file", key, "-replica-id", fmt.Sprintf("gw-%d", i))
	}
	return out
}

// hammer sends n concurrent copies of req to each replica and counts the
// decisions.
func hammer(t *testing.T, gws [2]*gatewayProc, req *v1.CheckActionRequest, perReplica int) (allowed, denied int64, reasons map[string]int) {
	t.Helper()
	var a, d atomic.Int64
	var mu sync.Mutex
	reasons = map[string]int{}
	var wg sync.WaitGroup
	for _, g := range gws {
		policy, _ := g.client(t)
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < perReplica/16; i++ {
					resp, err := policy.CheckAction(context.Background(), req)
					if err != nil {
						t.Error(err)
						return
					}
					switch resp.GetDecision() {
					case v1.Decision_ALLOW:
						a.Add(1)
					default:
						d.Add(1)
						mu.Lock()
						reasons[resp.GetPolicyRuleId()]++
						if resp.GetPolicyRuleId() == "registry" && reasons["registry"] == 1 {
							t.Logf("registry denial: %s", resp.GetReason())
						}
						mu.Unlock()
					}
				}
			}()
		}
	}
	wg.Wait()
	return a.Load(), d.Load(), reasons
}

// TestReplicasShareRateLimit: coder-1 may call git_* tools 120 times an hour
// (a token bucket of 120). 400 calls spread over two replicas must allow
// 120 (plus at most the refill during the test) and never more.
func TestReplicasShareRateLimit(t *testing.T) {
	gws := replicas(t)
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_fetch"}}}
	start := time.Now()
	allowed, denied, reasons := hammer(t, gws, req, 400)
	refill := int64(time.Since(start).Seconds()*120/3600) + 1
	t.Logf("allowed %d, denied %d (%v) in %s", allowed, denied, reasons, time.Since(start).Round(time.Millisecond))
	if allowed < 120 || allowed > 120+refill {
		t.Fatalf("two replicas allowed %d calls of a 120/hour limit (refill allowance %d)", allowed, refill)
	}
	if reasons["coding-agent/tools[git_*]/limit_per_hour"] != int(denied) {
		t.Fatalf("denials not all by the rate limit: %v", reasons)
	}
}

// TestReplicasShareBudget: the research team has a $50 daily budget; each
// call is estimated at exactly $1 (gpt-4o: 100k prompt tokens at $2.50/M
// plus 75k completion tokens at $10/M). Two replicas must allow exactly 50.
func TestReplicasShareBudget(t *testing.T) {
	gws := replicas(t)
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "research", AgentId: "researcher-1"},
		Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: 100000, CompletionTokens: 75000}}}
	allowed, denied, reasons := hammer(t, gws, req, 96)
	t.Logf("allowed %d, denied %d (%v)", allowed, denied, reasons)
	if allowed != 50 {
		t.Fatalf("two replicas allowed %d one-dollar calls against a $50 budget, want exactly 50", allowed)
	}
	if reasons["research-agent/budget"] != int(denied) {
		t.Fatalf("denials not all by the budget: %v", reasons)
	}
	resp, err := func() (*v1.GetBudgetResponse, error) {
		p, _ := gws[1].client(t)
		return p.GetBudget(context.Background(), &v1.GetBudgetRequest{Scope: "team/acme/research"})
	}()
	if err != nil {
		t.Fatal(err)
	}
	var daily *v1.BudgetStatus
	for _, b := range resp.GetBudgets() {
		if b.GetWindow() == "daily" {
			daily = b
		}
	}
	if daily == nil || daily.GetSpentUsd() != 50 || daily.GetRemainingUsd() != 0 {
		t.Fatalf("GetBudget after the run: %v", resp)
	}
}
