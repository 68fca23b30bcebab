package gateway

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
)

// RecordUsage implements PolicyService.RecordUsage: it reconciles the budget
// reservation of an allowed LLM call with the tokens actually used.
func (s *PolicyService) RecordUsage(ctx context.Context, req *v1.RecordUsageRequest) (*v1.RecordUsageResponse, error) {
	c := s.core
	if req.GetDecisionId() == "" {
		return nil, requestStatus(badField("decision_id", "is required: the decision_id of the allowed llm_call"))
	}
	for _, f := range []struct {
		name string
		n    int64
	}{{"prompt_tokens", req.GetPromptTokens()}, {"completion_tokens", req.GetCompletionTokens()}} {
		if f.n < 0 || f.n > MaxTokens {
			return nil, requestStatus(badField(f.name, "must be between 0 and %d (got %d)", MaxTokens, f.n))
		}
	}
	if c.meter == nil {
		return nil, status.Error(codes.FailedPrecondition, "budgets are not enabled on this gateway (no counters backend)")
	}
	r, ok := c.holds.take(req.GetDecisionId())
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition,
			"decision %s has no open budget reservation on this replica: it was already reconciled, is over an hour old, had no budget, or was made by another replica", req.GetDecisionId())
	}
	if ag := req.GetAgent(); ag != nil && (action.AgentID{Org: ag.GetOrgId(), Team: ag.GetTeamId(), Agent: ag.GetAgentId()}) != r.Agent {
		c.holds.put(req.GetDecisionId(), r)
		return nil, requestStatus(badField("agent", "does not match the agent of decision %s", req.GetDecisionId()))
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.limitTO)
	defer cancel()
	cost, err := c.meter.Reconcile(lctx, r, req.GetPromptTokens(), req.GetCompletionTokens())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reconcile budget of decision %s: %v", req.GetDecisionId(), err)
	}
	resp := &v1.RecordUsageResponse{CostUsd: cost.Amount.USD()}
	if sc, err := budget.ScopeOf(r.Agent, policy.BudgetPerAgent); err == nil {
		if st, err := c.meter.Status(lctx, sc.String(), c.Settings(r.Agent).Budgets); err == nil {
			resp.Budgets = budgetStatuses(st)
		}
	}
	return resp, nil
}

// GetBudget implements PolicyService.GetBudget.
func (s *PolicyService) GetBudget(ctx context.Context, req *v1.GetBudgetRequest) (*v1.GetBudgetResponse, error) {
	c := s.core
	sc, err := budget.ParseScope(req.GetScope())
	if err != nil {
		return nil, requestStatus(badField("scope", "%v (use agent/<org>/<team>/<agent>, team/<org>/<team> or org/<org>)", err))
	}
	if c.meter == nil {
		return nil, status.Error(codes.FailedPrecondition, "budgets are not enabled on this gateway (no counters backend)")
	}
	snap := c.Snapshot()
	if snap == nil {
		return nil, status.Error(codes.Unavailable, "no policy loaded")
	}
	st, err := c.meter.Status(ctx, req.GetScope(), snap.Settings(action.AgentID{Org: sc.Org, Team: sc.Team, Agent: sc.Agent}).Budgets)
	if err != nil {
		if errors.Is(err, budget.ErrInvalidScope) {
			return nil, requestStatus(badField("scope", "%v", err))
		}
		return nil, status.Errorf(codes.Unavailable, "read budget %s: %v", req.GetScope(), err)
	}
	return &v1.GetBudgetResponse{Budgets: budgetStatuses(st)}, nil
}

func budgetStatuses(st []budget.Status) []*v1.BudgetStatus {
	out := make([]*v1.BudgetStatus, len(st))
	for i, b := range st {
		out[i] = &v1.BudgetStatus{
			Scope: b.Scope.String(), Window: string(b.Window), WindowStart: b.Start.Format("2006-01-02T15:04:05Z07:00"),
			LimitUsd: b.Limit.USD(), SpentUsd: b.Spent.USD(), RemainingUsd: b.Remaining.USD(), ActionOnExceed: string(b.ActionOnExceed),
		}
	}
	return out
}
