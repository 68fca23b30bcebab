package budget

import (
	"context"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Status is spend against one limit in one window, as GET /v1/budgets/{scope}
// reports it.
type Status struct {
	// Scope is the unit the budget counts (it may be broader than the scope
	// asked for: an agent's status includes its team and org budgets).
	Scope  Scope
	Policy string
	Mode   action.Mode
	Window Window
	// Start and End bound the window, in the budget's time zone.
	Start     time.Time
	End       time.Time
	Limit     MicroUSD
	Spent     MicroUSD
	Remaining MicroUSD
	// ActionOnExceed is policy.BudgetDeny or policy.BudgetSuspend.
	ActionOnExceed policy.BudgetAction
	Key            string
}

// Status reads the current windows of every budget that constrains scope
// ("agent/<org>/<team>/<agent>", "team/<org>/<team>" or "org/<org>"): for
// an agent its agent, team and org budgets; for a team its team and org
// budgets; for an org its org budgets. budgets are the settings that apply
// to the scope (policy.Snapshot.Settings). Budgets that share a counter are
// reported once, with the most restrictive limit, like Reserve applies
// them.
func (m *Meter) Status(ctx context.Context, scope string, budgets []policy.BudgetSetting) ([]Status, error) {
	sc, err := ParseScope(scope)
	if err != nil {
		return nil, err
	}
	agent := action.AgentID{Org: sc.Org, Team: sc.Team, Agent: sc.Agent}
	var relevant []policy.BudgetSetting
	for _, b := range budgets {
		per := b.Budget.Per
		if per == "" {
			per = policy.BudgetPerAgent
		}
		if sc.covers(per) {
			relevant = append(relevant, b)
		}
	}
	tiers, err := m.tiers(nil, agent, relevant, m.opts.Now())
	if err != nil {
		return nil, fmt.Errorf("budget status of %s: %w", scope, err)
	}
	out := make([]Status, 0, len(tiers))
	for i := range tiers {
		t := &tiers[i]
		h := &t.hold
		ref := &t.enforce
		if !ref.set {
			ref = &t.observe
		}
		v, err := m.c.Counter(ctx, h.Key)
		if err != nil {
			return nil, fmt.Errorf("budget status of %s: read %s %s: %w", scope, h.Scope, h.Window, err)
		}
		spent := MicroUSD(v)
		out = append(out, Status{
			Scope: h.Scope, Policy: h.Policy, Mode: h.Mode, Window: h.Window, Start: h.Start, End: h.End,
			Limit: h.Limit, Spent: spent, Remaining: max(0, h.Limit-spent), ActionOnExceed: ref.action, Key: h.Key,
		})
	}
	return out, nil
}
