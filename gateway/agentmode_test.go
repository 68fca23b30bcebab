package gateway

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/cache"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// An org document that allows every tool, and a team document in observe
// mode that would deny one.
const modeDocs = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: org-allow}
spec:
  scope: {level: org, org: acme}
  default: allow
---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: eng-observe}
spec:
  scope: {level: team, org: acme, team: eng}
  enforcement_mode: observe
  tools:
    rm_rf: {allow: false}
    "*": {allow: true}
`

func modeCore(t *testing.T) (*Core, *cache.Store, *recorder) {
	t.Helper()
	var docs []*policy.Document
	for i, src := range strings.Split(modeDocs, "---\n") {
		d, err := policy.Parse("doc"+string(rune('a'+i))+".yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		t.Fatal(err)
	}
	st := cache.Wrap(memory.New(memory.Options{}), cache.Options{})
	rec := &recorder{}
	c, err := NewCore(Options{Audit: rec, Chain: "unit", Agents: st})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(snap)
	if err := st.PutAgent(context.Background(), &storage.Agent{ID: action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}, Status: storage.AgentActive}); err != nil {
		t.Fatal(err)
	}
	return c, st, rec
}

func TestAgentModeOverrideInTheCore(t *testing.T) {
	c, st, rec := modeCore(t)
	ctx := context.Background()
	id := action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}
	check := func(tool string) *v1.CheckActionResponse {
		t.Helper()
		resp, err := c.Check(ctx, coderTool(tool, "{}"))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// No override: the observe document only shadows.
	resp := check("rm_rf")
	if resp.GetDecision() != v1.Decision_ALLOW || resp.GetShadowDecision() != v1.Decision_DENY {
		t.Fatalf("no override: %v, want ALLOW with shadow DENY", resp)
	}
	cases := []struct {
		mode         action.Mode
		tool         string
		decision     v1.Decision
		shadow       v1.Decision
		mode2        v1.EnforcementMode
		rule, reason string
	}{
		// enforce: the observe document's decision is enforced.
		{action.ModeEnforce, "rm_rf", v1.Decision_DENY, v1.Decision_DECISION_UNSPECIFIED, v1.EnforcementMode_ENFORCE, "eng-observe/", "operator override"},
		{action.ModeEnforce, "ls", v1.Decision_ALLOW, v1.Decision_DECISION_UNSPECIFIED, v1.EnforcementMode_ENFORCE, "", ""},
		// observe: allowed, the would-be decision is the shadow.
		{action.ModeObserve, "rm_rf", v1.Decision_ALLOW, v1.Decision_DENY, v1.EnforcementMode_OBSERVE, "", ""},
		// disabled: allowed, nothing shadowed.
		{action.ModeDisabled, "rm_rf", v1.Decision_ALLOW, v1.Decision_DECISION_UNSPECIFIED, v1.EnforcementMode_DISABLED, "agent-mode/disabled", "disabled"},
	}
	for _, tc := range cases {
		if err := st.SetAgentMode(ctx, id, tc.mode); err != nil {
			t.Fatal(err)
		}
		resp := check(tc.tool)
		if resp.GetDecision() != tc.decision || resp.GetShadowDecision() != tc.shadow || resp.GetEnforcementMode() != tc.mode2 ||
			!strings.HasPrefix(resp.GetPolicyRuleId(), tc.rule) || !strings.Contains(resp.GetReason(), tc.reason) {
			t.Fatalf("mode %s, tool %s: %v; want %s shadow %s in %s by %s* (%q)", tc.mode, tc.tool, resp, tc.decision, tc.shadow, tc.mode2, tc.rule, tc.reason)
		}
		r := rec.last(t)
		if r.Mode != action.Mode(tc.mode2) || r.Decision.String() != strings.ToLower(tc.decision.String()) {
			t.Fatalf("mode %s: audited mode %s decision %s", tc.mode, r.Mode, r.Decision)
		}
	}
}

func TestApplyAgentModeObserveOfAnEnforcedDeny(t *testing.T) {
	res := policy.Result{Decision: action.Deny, Mode: action.ModeEnforce, RuleID: "p/r"}
	out := Outcome{Decision: action.Deny, Mode: action.ModeEnforce, RuleID: "p/r", Reason: "no"}
	applyAgentMode(action.ModeObserve, &res, &out)
	if out.Decision != action.Allow || out.Shadow != action.Deny || out.Mode != action.ModeObserve || res.Mode != action.ModeObserve ||
		out.RuleID != "agent-mode/observe" || !strings.Contains(out.Reason, "would be deny by p/r: no") {
		t.Fatalf("observe override of a deny: %+v (res mode %s)", out, res.Mode)
	}
	// Pending becomes allowed (no approval is requested in observe mode).
	res = policy.Result{Decision: action.Pending, Mode: action.ModeEnforce, RuleID: "p/a"}
	out = Outcome{Decision: action.Pending, Mode: action.ModeEnforce, RuleID: "p/a"}
	applyAgentMode(action.ModeObserve, &res, &out)
	if out.Decision != action.Allow || out.Shadow != action.Pending {
		t.Fatalf("observe override of a pending: %+v", out)
	}
	// No override changes nothing.
	before := Outcome{Decision: action.Deny, Mode: action.ModeEnforce, RuleID: "p/r"}
	out = before
	applyAgentMode(action.ModeUnspecified, &res, &out)
	if out.Decision != before.Decision || out.RuleID != before.RuleID || out.Mode != before.Mode {
		t.Fatalf("no override changed the outcome: %+v", out)
	}
}

func TestSuspendedAgentDeniedInEveryMode(t *testing.T) {
	c, st, _ := modeCore(t)
	ctx := context.Background()
	id := action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}
	if err := st.SetAgentStatus(ctx, id, storage.AgentSuspended, "held"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []action.Mode{action.ModeUnspecified, action.ModeEnforce, action.ModeObserve, action.ModeDisabled} {
		if err := st.SetAgentMode(ctx, id, m); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Check(ctx, coderTool("ls", "{}"))
		if err != nil || resp.GetDecision() != v1.Decision_DENY || resp.GetReason() != "agent suspended: held" {
			t.Fatalf("suspended agent in mode %s: %v %v", m, resp, err)
		}
	}
}

func TestSweepMarksStaleAgents(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	st := memory.New(memory.Options{})
	ctx := context.Background()
	for name, seen := range map[string]time.Duration{"fresh": 10 * time.Second, "late": 89 * time.Second, "gone": 91 * time.Second} {
		if err := st.PutAgent(ctx, &storage.Agent{ID: action.AgentID{Org: "o", Team: "t", Agent: name}, Status: storage.AgentActive, LastSeen: now.Add(-seen)}); err != nil {
			t.Fatal(err)
		}
	}
	events, err := NewInvalidations(InvalidationsOptions{Log: st})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCore(t, &recorder{})
	svc, err := NewAgentService(AgentServiceOptions{Registry: st, Issuer: testIssuer(t, st), Events: events, Core: c,
		HeartbeatInterval: 30 * time.Second, StaleAfter: 3, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	n, err := svc.Sweep(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1 agent marked stale", n, err)
	}
	for name, want := range map[string]storage.AgentStatus{"fresh": storage.AgentActive, "late": storage.AgentActive, "gone": storage.AgentStale} {
		a, err := st.GetAgent(ctx, action.AgentID{Org: "o", Team: "t", Agent: name})
		if err != nil || a.Status != want {
			t.Fatalf("%s: %v %v, want %s", name, a, err, want)
		}
	}
}

// BenchmarkCheckRegisteredAgent measures a check of a registered agent, read
// through the registry cache, without and with a mode override: the
// override costs no store round-trip (it rides on the status lookup).
func BenchmarkCheckRegisteredAgent(b *testing.B) {
	for _, m := range []action.Mode{action.ModeUnspecified, action.ModeObserve} {
		name := storage.AgentModeName(m)
		if name == "" {
			name = "none"
		}
		b.Run("override="+name, func(b *testing.B) {
			st := cache.Wrap(memory.New(memory.Options{}), cache.Options{TTL: time.Hour})
			c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit", Agents: st})
			if err != nil {
				b.Fatal(err)
			}
			c.SetSnapshot(exampleSnapshot(b))
			ctx := context.Background()
			id := action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}
			if err := st.PutAgent(ctx, &storage.Agent{ID: id, Status: storage.AgentActive, Labels: map[string]string{"env": "prod"}, Mode: m}); err != nil {
				b.Fatal(err)
			}
			req := coderTool("git_status", `{"short":true}`)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Check(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// ctxAgents is an AgentStatuses that answers one suspended agent and
// records the context error each lookup saw.
type ctxAgents struct {
	mu   sync.Mutex
	errs []error
}

func (r *ctxAgents) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, ctx.Err())
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("registry lookup without a deadline")
	}
	return &storage.Agent{ID: id, Status: storage.AgentSuspended, StatusReason: "test"}, nil
}

func (r *ctxAgents) SetAgentStatus(context.Context, action.AgentID, storage.AgentStatus, string) error {
	return nil
}

// TestCancelledCallerStillChecksAgent: a caller that has gone does not cut
// the registry lookup short (it is bounded by the limit timeout, like the
// audit write), so a suspended agent is denied as suspended, not as a
// registry failure.
func TestCancelledCallerStillChecksAgent(t *testing.T) {
	reg := &ctxAgents{}
	c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit", Agents: reg})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(exampleSnapshot(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	resp, err := c.Check(ctx, coderTool("git_status", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPolicyRuleId() != "agent-status" || !strings.Contains(resp.GetReason(), "agent suspended") {
		t.Fatalf("want the suspension to deny, got %v", resp)
	}
	if len(reg.errs) != 1 || reg.errs[0] != nil {
		t.Fatalf("registry lookups saw %v, want one live context", reg.errs)
	}
}
