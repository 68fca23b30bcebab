package gateway

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
)

// ErrNoReservation reports usage for a decision that has no open budget
// reservation: none was made, it was settled already, or it expired.
var ErrNoReservation = errors.New("no open budget reservation")

// ErrBudgetsDisabled reports a budget call on a gateway without counters.
var ErrBudgetsDisabled = errors.New("budgets are not enabled on this gateway (no counters backend)")

// Usage is the outcome of reconciling an allowed LLM call with the tokens it used.
type Usage struct {
	// Agent is the agent whose reservation was reconciled.
	Agent action.AgentID
	// Cost is the actual cost of the call.
	Cost budget.Cost
	// Budgets is the agent's budget status after reconciliation (best effort).
	Budgets []budget.Status
}

// ReconcileUsage settles the budget reservation made when decisionID (an
// allowed LLM_CALL) was decided, charging the tokens actually used instead
// of the estimate. When agent is not nil it must be the agent of the
// decision. It is called by RecordUsage and by the ext_proc server when an
// LLM response passes through Envoy. Errors wrap ErrBudgetsDisabled,
// ErrNoReservation or a *RequestError; any other error is a counters fault.
func (c *Core) ReconcileUsage(ctx context.Context, decisionID string, agent *action.AgentID, promptTokens, completionTokens int64) (Usage, error) {
	if decisionID == "" {
		return Usage{}, badField("decision_id", "is required: the decision_id of the allowed llm_call")
	}
	for _, f := range []struct {
		name string
		n    int64
	}{{"prompt_tokens", promptTokens}, {"completion_tokens", completionTokens}} {
		if f.n < 0 || f.n > MaxTokens {
			return Usage{}, badField(f.name, "must be between 0 and %d (got %d)", MaxTokens, f.n)
		}
	}
	if c.meter == nil {
		return Usage{}, ErrBudgetsDisabled
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.limitTO)
	defer cancel()
	if agent != nil {
		// Whose reservation it is, read without taking it: a report by
		// another agent changes nothing, so it cannot race the owner's.
		h, err := c.peekHold(lctx, decisionID)
		if err != nil {
			if !errors.Is(err, ErrNoReservation) {
				c.metrics.storeError(storeOpCounters, err)
			}
			return Usage{}, err
		}
		if *agent != h.Reservation.Agent {
			return Usage{}, badField("agent", "does not match the agent of decision %s", decisionID)
		}
	}
	h, err := c.takeHold(lctx, decisionID)
	if err != nil {
		if !errors.Is(err, ErrNoReservation) {
			c.metrics.storeError(storeOpCounters, err)
		}
		return Usage{}, err
	}
	r := h.Reservation
	cost, err := c.meter.Reconcile(lctx, r, promptTokens, completionTokens)
	if err != nil {
		c.metrics.storeError(storeOpCounters, err)
		c.metrics.UsageReconciled.WithLabelValues("error").Inc()
		return Usage{}, fmt.Errorf("reconcile budget of decision %s: %w", decisionID, err)
	}
	c.metrics.UsageReconciled.WithLabelValues("ok").Inc()
	c.metrics.BudgetSpend.WithLabelValues(r.Agent.Org, r.Agent.Team).Add(cost.Amount.USD())
	c.recordCost(lctx, r.Agent, cost)
	u := Usage{Agent: r.Agent, Cost: cost}
	if sc, err := budget.ScopeOf(r.Agent, policy.BudgetPerAgent); err == nil {
		if st, err := c.meter.Status(lctx, sc.String(), c.Settings(r.Agent).Budgets); err == nil {
			u.Budgets = st
		} else {
			c.metrics.storeError(storeOpCounters, err)
		}
	}
	return u, nil
}

// RecordUsage implements PolicyService.RecordUsage: it reconciles the budget
// reservation of an allowed LLM call with the tokens actually used.
func (s *PolicyService) RecordUsage(ctx context.Context, req *v1.RecordUsageRequest) (*v1.RecordUsageResponse, error) {
	proven, err := s.auth.AuthenticateProto(ctx, "RecordUsage", req.GetCredentialToken(), req.GetAgent())
	if err != nil {
		return nil, err
	}
	var agent *action.AgentID
	if ag := req.GetAgent(); ag != nil {
		agent = &action.AgentID{Org: ag.GetOrgId(), Team: ag.GetTeamId(), Agent: ag.GetAgentId()}
	}
	if s.auth.Enabled() {
		agent = &proven // the decision must be the proven agent's
	}
	u, err := s.core.ReconcileUsage(ctx, req.GetDecisionId(), agent, req.GetPromptTokens(), req.GetCompletionTokens())
	var re *RequestError
	switch {
	case errors.As(err, &re):
		return nil, requestStatus(re)
	case errors.Is(err, ErrBudgetsDisabled), errors.Is(err, ErrNoReservation):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &v1.RecordUsageResponse{CostUsd: u.Cost.Amount.USD(), Budgets: budgetStatuses(u.Budgets)}, nil
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
