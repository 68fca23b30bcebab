package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/alerts"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Alerter takes alerts from the decision path. alerts.Engine implements it;
// Raise must never block.
type Alerter interface {
	Raise(a storage.Alert)
}

// CostRecorder is the cost ledger ReconcileUsage writes each settled LLM
// call to. storage.CostLedger implements it.
type CostRecorder interface {
	RecordCost(ctx context.Context, e storage.CostEntry) error
}

// alertHooks are the optional alert and cost sinks of a Core.
type alertHooks struct {
	alerter atomic.Pointer[Alerter]
	costs   atomic.Pointer[CostRecorder]
}

// SetAlerts makes the core raise alerts on a (nil stops) and record the
// cost of settled LLM usage in costs (nil stops). Either can be set at any
// time; checks in flight see the old or the new value.
func (c *Core) SetAlerts(a Alerter, costs CostRecorder) {
	if a == nil {
		c.hooks.alerter.Store(nil)
	} else {
		c.hooks.alerter.Store(&a)
	}
	if costs == nil {
		c.hooks.costs.Store(nil)
	} else {
		c.hooks.costs.Store(&costs)
	}
}

func (c *Core) raise(a storage.Alert) {
	if p := c.hooks.alerter.Load(); p != nil {
		if a.Time.IsZero() {
			a.Time = c.now()
		}
		(*p).Raise(a)
	}
}

func details(v map[string]any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte(`{}`)
	}
	return b
}

// skipViolation lists the rules whose denials are not policy violations:
// backend failures (logged and counted elsewhere), limits (their own
// alerts) and agents already suspended or killed (alerted when it happened).
var skipViolation = map[string]bool{"audit": true, "registry": true, "rate limit": true, "budget": true,
	"data": true, "agent-status": true, "approval": true}

// alertDecision raises the alerts a decided action calls for: a blocked
// (critical) or redacted (warning) credential, or a policy violation
// (a DENY by a rule: warning; by a document's default: info). The common case, an
// allow with nothing found, costs one comparison.
func (c *Core) alertDecision(a *action.Action, out *Outcome) {
	if out.Decision == action.Allow || c.hooks.alerter.Load() == nil {
		return
	}
	base := storage.Alert{Agent: a.Agent, Source: "decision:" + out.DecisionID}
	switch {
	case out.RuleID == "data.credential_action" || (out.Decision == action.Redact && len(out.Redactions) > 0):
		base.ID, base.Kind = alerts.ID(alerts.KindCredentialLeak, out.DecisionID), alerts.KindCredentialLeak
		base.Severity, base.Summary = storage.SeverityCritical, fmt.Sprintf("blocked a %s carrying credentials from %s", a.Kind, a.Agent)
		if out.Decision == action.Redact {
			base.Severity, base.Summary = storage.SeverityWarning, fmt.Sprintf("redacted credentials from a %s of %s", a.Kind, a.Agent)
		}
		base.Details = details(map[string]any{"decision_id": out.DecisionID, "decision": out.Decision.String(),
			"action": a.Kind.String(), "rule": out.RuleID, "reason": out.Reason, "policy_version": out.Version})
	case out.Decision == action.Deny && !out.Limited && !skipViolation[out.RuleID] && !strings.HasSuffix(out.RuleID, "/budget"):
		base.ID, base.Kind = alerts.ID(alerts.KindPolicyViolation, out.DecisionID), alerts.KindPolicyViolation
		base.Severity = storage.SeverityWarning
		if out.RuleID == "default" || strings.HasSuffix(out.RuleID, "/default") {
			base.Severity = storage.SeverityInfo
		}
		base.Summary = fmt.Sprintf("denied a %s of %s by rule %s", a.Kind, a.Agent, out.RuleID)
		base.Details = details(map[string]any{"decision_id": out.DecisionID, "action": a.Kind.String(),
			"rule": out.RuleID, "reason": out.Reason, "policy_version": out.Version})
	default:
		return
	}
	c.raise(base)
}

// alertThreshold raises a budget threshold alert once per budget window
// and threshold: every replica derives the same id from the counter key.
func (c *Core) alertThreshold(e budget.Event) {
	sev := storage.SeverityWarning
	if e.Threshold >= 95 {
		sev = storage.SeverityCritical
	}
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindBudgetThreshold, e.Key, strconv.Itoa(e.Threshold)), Kind: alerts.KindBudgetThreshold, Severity: sev,
		Agent:   action.AgentID{Org: e.Scope.Org, Team: e.Scope.Team, Agent: e.Scope.Agent},
		Summary: fmt.Sprintf("%s budget of %s passed %d%%: spent %s of %s", e.Window, e.Scope, e.Threshold, e.Spent, e.Limit),
		Details: details(map[string]any{"scope": e.Scope.String(), "window": string(e.Window), "window_start": e.Start.UTC().Format(time.RFC3339),
			"threshold_percent": e.Threshold, "spent_usd": e.Spent.USD(), "limit_usd": e.Limit.USD(), "policy": e.Policy, "observe": e.Mode == action.ModeObserve}),
		Source: "budget:" + e.Key,
	})
}

// alertExhausted raises one alert per exhausted budget window (not one per
// refused call), and one when the refusal suspends the agent.
func (c *Core) alertExhausted(a *action.Action, ex *budget.Exceeded, out *Outcome, suspended bool) {
	d := map[string]any{"scope": ex.Scope.String(), "window": string(ex.Window), "window_start": ex.Start.UTC().Format(time.RFC3339),
		"spent_usd": ex.Spent.USD(), "limit_usd": ex.Limit.USD(), "requested_usd": ex.Requested.USD(), "policy": ex.Policy,
		"action_on_exceed": string(ex.Action), "first_decision_id": out.DecisionID}
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindBudgetExhausted, ex.Key), Kind: alerts.KindBudgetExhausted, Severity: storage.SeverityCritical,
		Agent: a.Agent, Summary: "budget exhausted: " + ex.String(), Details: details(d), Source: "budget:" + ex.Key,
	})
	if suspended {
		c.raise(storage.Alert{
			ID: alerts.ID(alerts.KindAgentSuspended, a.Agent.String(), ex.Key), Kind: alerts.KindAgentSuspended, Severity: storage.SeverityCritical,
			Agent: a.Agent, Summary: fmt.Sprintf("agent %s suspended: budget exceeded", a.Agent), Details: details(d), Source: "budget:" + ex.Key,
		})
	}
}

// AlertAgentStatus raises an alert when an operator (named by ctx)
// suspends or kills an agent; resuming raises nothing.
func (c *Core) AlertAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, previous storage.AgentStatus, reason string) {
	by := auth.Principal(ctx)
	if st != storage.AgentSuspended && st != storage.AgentKilled {
		return
	}
	now := c.now()
	sev := storage.SeverityWarning
	if st == storage.AgentKilled {
		sev = storage.SeverityCritical
	}
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindAgentSuspended, id.String(), string(st), strconv.FormatInt(now.UnixNano(), 10)), Time: now,
		Kind: alerts.KindAgentSuspended, Severity: sev, Agent: id,
		Summary: fmt.Sprintf("agent %s %s: %s", id, st, reason),
		Details: details(map[string]any{"status": string(st), "previous": string(previous), "reason": reason, "by": by}),
		Source:  "agent:" + id.String(),
	})
}

// AlertXDSNack raises an alert when an Envoy or gRPC node rejects a
// configuration version; repeated NACKs of one version raise it once.
func (c *Core) AlertXDSNack(node, typeURL, version, detail string) {
	short := typeURL[strings.LastIndexByte(typeURL, '.')+1:]
	var agent action.AgentID
	if parts := strings.SplitN(node, "/", 3); len(parts) == 3 {
		agent = action.AgentID{Org: parts[0], Team: parts[1], Agent: parts[2]}
	}
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindXDSNack, node, typeURL, version), Kind: alerts.KindXDSNack, Severity: storage.SeverityWarning,
		Agent:   agent,
		Summary: fmt.Sprintf("xDS node %s rejected %s version %s: %s", node, short, version, detail),
		Details: details(map[string]any{"node": node, "type_url": typeURL, "version": version, "error": detail}),
		Source:  "xds:" + node + ":" + version,
	})
}

// AlertKernelDrops raises an alert when a runtime reports that its eBPF
// ring buffer lost events (total is the runtime's running count). The id
// covers the reporter and the count's power of two, so a runtime that keeps
// dropping raises one alert each time its count doubles, not one per report.
func (c *Core) AlertKernelDrops(reporter string, total uint64) {
	if total == 0 {
		return
	}
	n := strconv.FormatUint(total, 10)
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindEBPFDrops, reporter, strconv.Itoa(bits.Len64(total))), Kind: alerts.KindEBPFDrops, Severity: storage.SeverityWarning,
		Summary: fmt.Sprintf("runtime %s lost %s kernel events from its ring buffer: those actions were enforced but not audited", reporter, n),
		Details: details(map[string]any{"reporter": reporter, "dropped_total": total}),
		Source:  "runtime:" + reporter,
	})
}

// alertChainBreak raises a critical alert for an audit chain that failed
// verification, once per chain and first bad record.
func (c *Core) alertChainBreak(rep storage.VerifyReport) {
	if rep.OK {
		return
	}
	seq := strconv.FormatInt(rep.FirstBadSeq, 10)
	c.raise(storage.Alert{
		ID: alerts.ID(alerts.KindAuditChainBreak, rep.Chain, seq), Kind: alerts.KindAuditChainBreak, Severity: storage.SeverityCritical,
		Summary: fmt.Sprintf("audit chain %s is broken at record %s: %s", rep.Chain, seq, rep.Problem),
		Details: details(map[string]any{"chain": rep.Chain, "first_bad_seq": rep.FirstBadSeq, "problem": rep.Problem, "records": rep.Records}),
		Source:  "audit:" + rep.Chain + ":" + seq,
	})
}

// recordCost adds a settled LLM call to the cost ledger. The budget is
// already settled; a ledger failure is logged, not returned.
func (c *Core) recordCost(ctx context.Context, agent action.AgentID, cost budget.Cost) {
	p := c.hooks.costs.Load()
	if p == nil {
		return
	}
	e := storage.CostEntry{Agent: agent, Model: cost.Model, Day: c.now().UTC().Format(time.DateOnly),
		MicroUSD: int64(cost.Amount), PromptTokens: cost.PromptTokens, CompletionTokens: cost.CompletionTokens, Requests: 1}
	if err := (*p).RecordCost(ctx, e); err != nil {
		c.metrics.storeError(storeOpCosts, err)
		c.log.ErrorContext(ctx, "record cost", "agent", agent.String(), "model", cost.Model, "err", err)
	}
}
