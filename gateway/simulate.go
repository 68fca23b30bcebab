package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Simulation bounds.
const (
	// DefaultSimulateHours is the audit window replayed when none is asked.
	DefaultSimulateHours = 24
	// MaxSimulateHours caps the window (31 days).
	MaxSimulateHours = 31 * 24
	// DefaultSimulateChanges is how many changed actions are listed by default.
	DefaultSimulateChanges = 100
	// MaxSimulateChanges caps the changed actions listed.
	MaxSimulateChanges = 1000
	// MaxSimulateRecords caps the records replayed: the newest are replayed
	// first, so a busy window is cut at its oldest end.
	MaxSimulateRecords = 200_000
)

// AuditQuerier is what simulation and topology read from the audit log.
type AuditQuerier interface {
	QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error)
}

// SimulatePolicy implements PolicyService.SimulatePolicy: it replays the
// decisions recorded in the last hours against candidate documents and
// reports how the decisions would change. Nothing is stored or audited.
//
// What is replayed is what the audit log holds: the normalised action with
// tool arguments already redacted and without the agent's labels or the
// request's prompt and body. Decisions made after policy evaluation (budgets,
// rate limits, credential scanning, approvals, agent status) are assumed to
// repeat when the candidate lets the action reach them.
func (s *PolicyService) SimulatePolicy(ctx context.Context, req *v1.SimulatePolicyRequest) (*v1.SimulatePolicyResponse, error) {
	if s.audit == nil {
		return nil, status.Error(codes.FailedPrecondition, "this gateway has no audit log to replay")
	}
	if len(req.GetDocuments()) == 0 {
		return nil, requestStatus(badField("documents", "at least one candidate document is required"))
	}
	if _, err := documentSources(req.GetDocuments()); err != nil {
		return nil, requestStatus(err)
	}
	hours, limit := int(req.GetHours()), int(req.GetLimit())
	switch {
	case hours < 0 || hours > MaxSimulateHours:
		return nil, requestStatus(badField("hours", "must be between 1 and %d", MaxSimulateHours))
	case hours == 0:
		hours = DefaultSimulateHours
	}
	switch {
	case limit < 0 || limit > MaxSimulateChanges:
		return nil, requestStatus(badField("limit", "must be between 1 and %d", MaxSimulateChanges))
	case limit == 0:
		limit = DefaultSimulateChanges
	}
	docs, problems := parseSources(req.GetDocuments())
	if len(problems) > 0 {
		return nil, problemsStatus(problems)
	}
	snap, err := compile(docs, policy.Version(docs))
	if err != nil {
		return nil, problemsStatus(policyProblems(err))
	}
	until := s.core.now()
	sim := Simulate(ctx, s.audit, snap, until.Add(-time.Duration(hours)*time.Hour), until, limit)
	if sim.Err != nil {
		return nil, status.Errorf(codes.Unavailable, "read audit log: %v", sim.Err)
	}
	return sim.Response, nil
}

// WithAudit gives SimulatePolicy the audit log to replay, and returns s.
func (s *PolicyService) WithAudit(a AuditQuerier) *PolicyService {
	s.audit = a
	return s
}

// Simulation is the result of Simulate.
type Simulation struct {
	Response *v1.SimulatePolicyResponse
	// Truncated is set when MaxSimulateRecords stopped the replay.
	Truncated bool
	Err       error
}

// Simulate replays decision records from [since, until), newest first,
// against snap.
func Simulate(ctx context.Context, audit AuditQuerier, snap *policy.Snapshot, since, until time.Time, limit int) Simulation {
	resp := &v1.SimulatePolicyResponse{RecordedCounts: map[string]int64{}, SimulatedCounts: map[string]int64{}}
	q := storage.AuditQuery{Event: storage.EventDecision, Since: since, Until: until, Limit: 1000}
	for {
		page, err := audit.QueryAudit(ctx, q)
		if err != nil {
			return Simulation{Err: err}
		}
		for _, rec := range page.Records {
			if resp.Replayed >= MaxSimulateRecords {
				resp.Truncated = true
				return Simulation{Response: resp, Truncated: true}
			}
			replay(snap, rec, resp, limit)
		}
		if page.NextCursor == "" || len(page.Records) == 0 {
			return Simulation{Response: resp}
		}
		q.Cursor = page.NextCursor
	}
}

// replay evaluates one record and counts it.
func replay(snap *policy.Snapshot, rec *storage.AuditRecord, resp *v1.SimulatePolicyResponse, limit int) {
	if rec.Kind == action.KindUnspecified {
		return
	}
	a, err := decodePayload(rec.Kind, rec.Payload)
	if err != nil {
		return
	}
	a.Agent, a.Time, a.SessionID, a.TraceID, a.SpanID = rec.Agent, rec.Time, rec.SessionID, rec.TraceID, rec.SpanID
	if a.Kind == action.KindAgentSpawn {
		a.Spawn.Child = childOf(rec.Payload, rec.Agent)
	}
	res := snap.Evaluate(policy.Input{Action: &a})
	simulated, rule := res.Decision, res.RuleID
	if postPolicy(rec.RuleID) && reachesStage(rec.RuleID, res.Decision) {
		simulated, rule = rec.Decision, rec.RuleID
	}
	resp.Replayed++
	resp.RecordedCounts[decisionToProto(rec.Decision).String()]++
	resp.SimulatedCounts[decisionToProto(simulated).String()]++
	if simulated == rec.Decision {
		return
	}
	resp.Changed++
	if len(resp.Changes) < limit {
		resp.Changes = append(resp.Changes, &v1.SimulatedChange{
			DecisionId: rec.ID, Agent: agentToProto(rec.Agent), ActionType: v1.ActionType(rec.Kind),
			Summary: summarize(&a), Recorded: decisionToProto(rec.Decision), Simulated: decisionToProto(simulated),
			SimulatedRuleId: rule,
		})
	}
}

// postPolicy reports whether a recorded rule id names a stage after policy
// evaluation rather than a policy rule.
func postPolicy(rule string) bool {
	switch rule {
	case "approval", "registry", "agent-status", "data", "data.credential_action", "audit":
		return true
	}
	return strings.HasSuffix(rule, "/limit_per_hour") || strings.HasSuffix(rule, "/budget")
}

// reachesStage reports whether an action the candidate decides d would reach
// the recorded post-policy stage again.
func reachesStage(rule string, d action.Decision) bool {
	if rule == "approval" {
		return d == action.Pending
	}
	return d == action.Allow || d == action.Redact || (rule == "agent-status" || rule == "registry" || rule == "audit") && d != action.Deny
}

// childOf reads the spawned agent id ("org/team/agent") from a payload;
// a bare name is taken to be in the parent's team.
func childOf(payload []byte, parent action.AgentID) action.AgentID {
	var p auditPayload
	if err := json.Unmarshal(payload, &p); err != nil || p.Child == "" {
		return action.AgentID{}
	}
	return parseAgentID(p.Child, parent)
}

func parseAgentID(s string, parent action.AgentID) action.AgentID {
	parts := strings.Split(s, "/")
	if len(parts) == 3 {
		return action.AgentID{Org: parts[0], Team: parts[1], Agent: parts[2]}
	}
	return action.AgentID{Org: parent.Org, Team: parent.Team, Agent: s}
}

// summarize describes an action in a few words.
func summarize(a *action.Action) string {
	switch a.Kind {
	case action.KindLLMCall:
		return fmt.Sprintf("llm %s/%s", a.LLM.Provider, a.LLM.Model)
	case action.KindToolCall:
		if a.Tool.ArgsJSON != "" {
			return clip("tool "+a.Tool.Name+" "+a.Tool.ArgsJSON, 120)
		}
		return "tool " + a.Tool.Name
	case action.KindFileOperation:
		return "file " + a.File.Operation + " " + a.File.Path
	case action.KindNetworkCall:
		if a.Network.Port != 0 {
			return fmt.Sprintf("network %s:%d%s", a.Network.Host, a.Network.Port, a.Network.Path)
		}
		return "network " + a.Network.Host + a.Network.Path
	case action.KindProcessExec:
		return clip("exec "+strings.Join(append([]string{a.Exec.Command}, a.Exec.Args...), " "), 120)
	case action.KindAgentSpawn:
		return "spawn " + a.Spawn.Child.String()
	case action.KindToolResult:
		return "tool result " + a.Result.Name
	}
	return a.Kind.String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func agentToProto(id action.AgentID) *v1.AgentId {
	return &v1.AgentId{OrgId: id.Org, TeamId: id.Team, AgentId: id.Agent}
}
