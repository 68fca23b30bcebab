package gateway

import (
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Explain evaluates req like Check but returns the evaluation trace instead
// of auditing: nothing is recorded and no budget is spent.
func (c *Core) Explain(req *v1.CheckActionRequest) (*v1.CheckActionResponse, []*v1.TraceStep, error) {
	start := c.now()
	a, err := toAction(req, c.limits, start)
	if err != nil {
		return nil, nil, err
	}
	snap := c.snap.Load()
	if snap == nil {
		out := Outcome{Decision: action.Deny, Mode: action.ModeEnforce, RuleID: "default", Reason: "no policy loaded: failing closed"}
		return out.Response(), nil, nil
	}
	res, steps := snap.Explain(policy.Input{Action: &a})
	out := Outcome{Decision: res.Decision, Shadow: res.ShadowDecision, Mode: res.Mode,
		RuleID: res.RuleID, Reason: res.Reason, Version: res.PolicyVersion, Latency: time.Since(start)}
	trace := make([]*v1.TraceStep, 0, len(steps))
	for _, s := range steps {
		trace = append(trace, &v1.TraceStep{
			Document: s.Policy, RuleId: s.RuleID, Matched: s.Matched, Detail: s.Detail,
			Decision: decisionToProto(s.Decision),
		})
	}
	return out.Response(), trace, nil
}
