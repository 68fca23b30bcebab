package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// applyLimits enforces the tool rate limit and the LLM budget of an action
// the policy allowed. Backend failures deny (fail closed).
func (c *Core) applyLimits(ctx context.Context, av *agentView, a *action.Action, res *policy.Result, out *Outcome, registered bool, deadline time.Time) {
	if res.Mode != action.ModeEnforce {
		return
	}
	if (a.Kind != action.KindToolCall || res.ToolLimitPerHour <= 0) &&
		(a.Kind != action.KindLLMCall || c.meter == nil || len(av.settings.Budgets) == 0) {
		return // nothing to count, so no backend call and no timer
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), waitFor(c.limitTO, deadline))
	defer cancel()
	if res.ToolLimitPerHour > 0 && a.Kind == action.KindToolCall {
		if c.limiter == nil {
			return
		}
		r, err := c.limiter.AllowTool(lctx, a.Agent, a.Tool.Name, res.ToolLimitPerHour, c.now())
		if err != nil {
			c.metrics.storeError(storeOpCounters, err)
			c.denyBackend(ctx, out, "rate limit", err)
			return
		}
		if !r.Allowed {
			out.Decision, out.Limited, out.RetryAfter = action.Deny, true, r.RetryAfter
			out.RuleID = res.RuleID + "/limit_per_hour"
			out.Reason = fmt.Sprintf("rate limit: %s may call %s at most %d times per hour; retry in %s",
				a.Agent, a.Tool.Name, r.Limit, r.RetryAfter.Round(time.Second))
			return
		}
	}
	if a.Kind != action.KindLLMCall || c.meter == nil {
		return
	}
	budgets := av.settings.Budgets
	if len(budgets) == 0 {
		return
	}
	r, err := c.meter.Reserve(lctx, a.Agent, budgets, a.LLM.Provider, a.LLM.Model, a.LLM.PromptTokens, a.LLM.CompletionTokens)
	if err != nil {
		c.metrics.storeError(storeOpCounters, err)
		c.denyBackend(ctx, out, "budget", err)
		return
	}
	if !r.Allowed {
		ex := r.Exceeded
		out.Decision, out.Limited, out.RetryAfter = action.Deny, true, ex.RetryAfter
		out.RuleID = ex.Policy + "/budget"
		out.Reason = "budget: " + ex.String()
		suspended := false
		if ex.Action == policy.BudgetSuspend && registered {
			reason := "budget exceeded: " + ex.String()
			if err := c.agents.SetAgentStatus(lctx, a.Agent, storage.AgentSuspended, reason); err != nil && !errors.Is(err, storage.ErrNotFound) {
				c.metrics.storeError(storeOpRegistry, err)
				c.log.ErrorContext(ctx, "suspend agent over budget", "agent", a.Agent.String(), "err", err)
			} else if err == nil {
				suspended = true
			}
			out.Reason += "; agent suspended"
		}
		c.alertExhausted(a, ex, out, suspended)
		return
	}
	if len(r.Holds) > 0 {
		c.metrics.BudgetReserved.WithLabelValues(a.Agent.Org, a.Agent.Team).Add(r.Cost.Amount.USD())
	}
	c.putHold(lctx, out.DecisionID, r)
}

func (c *Core) denyBackend(ctx context.Context, out *Outcome, what string, err error) {
	c.log.ErrorContext(ctx, what+" backend failed; denying", "decision_id", out.DecisionID, "err", err)
	out.Decision, out.RuleID = action.Deny, what
	out.Reason = what + " backend unavailable, failing closed: " + err.Error()
}

// onThreshold logs budget threshold crossings.
func (c *Core) onThreshold(e budget.Event) {
	c.log.Warn("budget threshold crossed", "threshold_percent", e.Threshold, "scope", e.Scope.String(),
		"window", string(e.Window), "spent", e.Spent.String(), "limit", e.Limit.String(), "policy", e.Policy)
	c.metrics.BudgetThresholds.WithLabelValues(fmt.Sprint(e.Threshold), string(e.Window)).Inc()
	c.alertThreshold(e)
}
