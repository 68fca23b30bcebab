package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// checkAgent reads the agent's registry record (through the in-process
// cache: no store round-trip on the common path) once per check. It denies
// actions of suspended or killed agents and returns the operator's mode
// override (ModeUnspecified when there is none, or when the status already
// decided) and whether the registry knows the agent. Agents it does not know
// are left to the policy (they may be unattributed). Like the audit write,
// the lookup is bounded by the limit timeout, not cut short by a caller who
// has gone (the decision is audited either way), and its bound is a pooled
// boundCtx: a context.WithTimeout under the caller's gRPC context cost about
// 2 µs of an ext_authz check under load.
func (c *Core) checkAgent(ctx context.Context, a *action.Action, out *Outcome, deadline time.Time) (override action.Mode, registered bool) {
	if c.agents == nil {
		return action.ModeUnspecified, false
	}
	ag, err := c.agent(ctx, a.Agent, deadline)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return action.ModeUnspecified, false
	case err != nil:
		c.metrics.storeError(storeOpRegistry, err)
		out.Decision, out.RuleID = action.Deny, "registry"
		out.Reason = "agent registry unavailable, failing closed: " + err.Error()
		return action.ModeUnspecified, false
	case ag.Status == storage.AgentSuspended:
		out.Decision, out.RuleID, out.Reason = action.Deny, "agent-status", "agent suspended: "+ag.StatusReason
		return action.ModeUnspecified, true
	case ag.Status == storage.AgentKilled:
		out.Decision, out.RuleID, out.Reason = action.Deny, "agent-status", "agent killed: "+ag.StatusReason
		return action.ModeUnspecified, true
	}
	return ag.Mode, true
}

// applyAgentMode applies an operator's per-agent enforcement-mode override
// to the policy's outcome (after the credential scan, before limits and
// approvals, which only run in enforce mode):
//
//   - observe: the decision so far becomes the shadow decision, and the
//     answer is allow (limits and approvals are skipped);
//   - disabled: allow without a shadow decision;
//   - enforce: observe documents are enforced (their shadow decision becomes
//     the decision). Documents whose own mode is disabled are not evaluated,
//     so enforce cannot bring them back.
func applyAgentMode(m action.Mode, res *policy.Result, out *Outcome) {
	switch m {
	case action.ModeObserve:
		if out.Mode == action.ModeObserve && res.Mode == action.ModeObserve {
			return // the documents already observe
		}
		// The shadow is the most restrictive of what would be enforced and
		// what observe documents would have decided.
		shadow := max(out.Decision, out.Shadow)
		if out.Decision != action.Allow {
			out.Reason = "agent in observe mode (operator override); would be " + out.Decision.String() + " by " + out.RuleID + ": " + out.Reason
			out.RuleID = "agent-mode/observe"
		}
		out.Shadow = shadow
		out.Decision, out.Mode, out.Redactions = action.Allow, action.ModeObserve, nil
		res.Mode = action.ModeObserve
	case action.ModeDisabled:
		out.Decision, out.Shadow, out.Mode, out.Redactions = action.Allow, action.DecisionUnspecified, action.ModeDisabled, nil
		out.RuleID, out.Reason = "agent-mode/disabled", "enforcement disabled for this agent (operator override)"
		res.Mode = action.ModeDisabled
	case action.ModeEnforce:
		if res.ShadowDecision == action.DecisionUnspecified || out.RuleID != res.RuleID {
			return // no observe document applied, or something else decided
		}
		out.Decision, out.Shadow, out.Mode = res.ShadowDecision, action.DecisionUnspecified, action.ModeEnforce
		out.RuleID, out.Reason = res.ShadowRuleID, res.ShadowReason+" (observe documents enforced by operator override)"
		res.Mode, res.Decision, res.RuleID = action.ModeEnforce, res.ShadowDecision, res.ShadowRuleID
	}
}

// agentPeeker is an AgentStatuses that can answer from memory without
// copying the agent (the gateway's registry cache).
type agentPeeker interface {
	PeekAgent(id action.AgentID) (a *storage.Agent, cached bool)
}

// agent reads an agent's registry entry, read-only: from the cache when it
// holds a fresh answer, else from the registry within the registry timeout
// (and the caller's deadline). An agent cached as unknown is
// storage.ErrNotFound.
func (c *Core) agent(ctx context.Context, id action.AgentID, deadline time.Time) (*storage.Agent, error) {
	if p, ok := c.agents.(agentPeeker); ok {
		if ag, cached := p.PeekAgent(id); cached {
			if ag == nil {
				return nil, storage.ErrNotFound
			}
			return ag, nil
		}
	}
	lctx := bound(ctx, waitFor(c.limitTO, deadline))
	ag, err := c.agents.GetAgent(lctx, id)
	lctx.release()
	return ag, err
}
