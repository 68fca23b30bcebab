package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// recorder is an in-memory Auditor for unit tests; the server tests use real stores.
type recorder struct {
	mu   sync.Mutex
	recs []*storage.AuditRecord
	err  error
	ctxs []error
}

func (r *recorder) Append(ctx context.Context, rec *storage.AuditRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctxs = append(r.ctxs, ctx.Err())
	if r.err != nil {
		return r.err
	}
	r.recs = append(r.recs, rec)
	return nil
}

func (r *recorder) last(t *testing.T) *storage.AuditRecord {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.recs) == 0 {
		t.Fatal("no audit record written")
	}
	return r.recs[len(r.recs)-1]
}

func exampleSnapshot(t testing.TB) *policy.Snapshot {
	t.Helper()
	docs, err := policy.LoadPath(filepath.Join("..", "examples", "policies"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func newTestCore(t testing.TB, a Auditor) *Core {
	t.Helper()
	c, err := NewCore(Options{Audit: a, Chain: "unit", Limits: Limits{MaxPayloadBytes: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(exampleSnapshot(t))
	return c
}

func coderTool(name, args string) *v1.CheckActionRequest {
	return &v1.CheckActionRequest{
		Agent:   &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		TraceId: "trace-1", SessionId: "sess-1",
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: args}},
	}
}

func TestCheckAuditsBeforeAnswering(t *testing.T) {
	rec := &recorder{}
	c := newTestCore(t, rec)
	resp, err := c.Check(context.Background(), coderTool("git_status", `{"short":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("decision %s (%s), want ALLOW", resp.GetDecision(), resp.GetReason())
	}
	r := rec.last(t)
	if r.ID != resp.GetDecisionId() || r.Chain != "unit" || r.Event != storage.EventDecision ||
		r.Agent != (action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}) || r.TraceID != "trace-1" ||
		r.SessionID != "sess-1" || r.Kind != action.KindToolCall || r.Decision != action.Allow ||
		r.RuleID != resp.GetPolicyRuleId() || r.PolicyVersion != resp.GetPolicyVersion() || r.Mode != action.ModeEnforce {
		t.Fatalf("audit record does not carry the decision: %+v", r)
	}
	var p map[string]any
	if err := json.Unmarshal(r.Payload, &p); err != nil || p["name"] != "git_status" || p["kind"] != "tool_call" {
		t.Fatalf("payload %s: %v", r.Payload, err)
	}
}

func TestAuditFailureDenies(t *testing.T) {
	rec := &recorder{err: errors.New("disk full")}
	c := newTestCore(t, rec)
	resp, err := c.Check(context.Background(), coderTool("git_status", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_DENY || resp.GetPolicyRuleId() != "audit" || !strings.Contains(resp.GetReason(), "disk full") {
		t.Fatalf("want fail-closed deny naming the audit error, got %v", resp)
	}
}

func TestNoPolicyDenies(t *testing.T) {
	c, err := NewCore(Options{Audit: &recorder{}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Check(context.Background(), coderTool("git_status", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "no policy loaded") {
		t.Fatalf("want deny without a policy, got %v", resp)
	}
}

func TestCancelledCallerStillAudited(t *testing.T) {
	rec := &recorder{}
	c := newTestCore(t, rec)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Check(ctx, coderTool("git_status", "")); err != nil {
		t.Fatal(err)
	}
	if rec.ctxs[0] != nil {
		t.Fatalf("audit write saw a cancelled context: %v", rec.ctxs[0])
	}
}

func TestRejectedRequestAudited(t *testing.T) {
	rec := &recorder{}
	c := newTestCore(t, rec)
	_, err := c.Check(context.Background(), &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}})
	var re *RequestError
	if !errors.As(err, &re) || re.Field != "context" {
		t.Fatalf("want a RequestError for context, got %v", err)
	}
	r := rec.last(t)
	if r.Event != storage.EventRejected || r.Decision != action.Deny || !strings.Contains(r.Reason, "context:") || r.Agent.Agent != "coder-1" {
		t.Fatalf("rejected record: %+v", r)
	}
}

func TestToActionValidation(t *testing.T) {
	lim := Limits{MaxPayloadBytes: 64}
	ag := &v1.AgentId{OrgId: "o", TeamId: "t", AgentId: "a"}
	cases := []struct {
		name  string
		req   *v1.CheckActionRequest
		field string
	}{
		{"nil", nil, "request"},
		{"no agent", &v1.CheckActionRequest{}, "agent"},
		{"no org", &v1.CheckActionRequest{Agent: &v1.AgentId{TeamId: "t", AgentId: "a"}}, "agent.org_id"},
		{"long trace", &v1.CheckActionRequest{Agent: ag, TraceId: strings.Repeat("x", 300)}, "trace_id"},
		{"no context", &v1.CheckActionRequest{Agent: ag}, "context"},
		{"llm no model", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: "openai"}}}, "llm_call.model"},
		{"llm negative", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Model: "m", PromptTokens: -1}}}, "llm_call.prompt_tokens"},
		{"llm absurd", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Model: "m", CompletionTokens: 1 << 40}}}, "llm_call.completion_tokens"},
		{"llm big prompt", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Model: "m", Prompt: strings.Repeat("p", 100)}}}, "context"},
		{"file no path", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_FileOp{FileOp: &v1.FileOperationContext{Operation: "read"}}}, "file_op.path"},
		{"exec no cmd", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{}}}, "process_exec.command"},
		{"exec big args", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: "x", Args: []string{strings.Repeat("a", 100)}}}}, "process_exec.args"},
		{"spawn no child", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_AgentSpawn{AgentSpawn: &v1.AgentSpawnContext{}}}, "agent_spawn.child.agent_id"},
		{"result big", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_ToolResult{ToolResult: &v1.ToolResultContext{Name: "n", Output: strings.Repeat("o", 100)}}}, "tool_result.output"},
		{"net no host", &v1.CheckActionRequest{Agent: ag, Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Port: 1}}}, "network_call.host"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := toAction(tc.req, lim, time.Now())
			var re *RequestError
			if !errors.As(err, &re) || re.Field != tc.field {
				t.Fatalf("want RequestError on %q, got %v", tc.field, err)
			}
		})
	}
	a, err := toAction(&v1.CheckActionRequest{Agent: ag, ActionType: v1.ActionType_NETWORK_CALL,
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "API.OpenAI.com", Port: 443}}}, lim, time.Now())
	if err != nil || a.Kind != action.KindNetworkCall || a.Network.Host != "api.openai.com" {
		t.Fatalf("valid network call: %+v %v", a, err)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	in := action.Action{Kind: action.KindNetworkCall, Network: action.NetworkCall{Host: "h", Port: 443, Protocol: "https", Method: "GET", Path: "/x"}}
	out, err := decodePayload(in.Kind, encodePayload(&in))
	if err != nil || out.Network != in.Network {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	tool := action.Action{Kind: action.KindToolCall, Tool: action.ToolCall{Name: "t", ArgsJSON: `{"a":1}`}}
	out, err = decodePayload(tool.Kind, encodePayload(&tool))
	if err != nil || out.Tool.Name != "t" || out.Tool.ArgsJSON != `{"a":1}` {
		t.Fatalf("tool round trip: %+v %v", out, err)
	}
}

// nopAuditor accepts every record at once: it isolates the core's own cost.
type nopAuditor struct{}

func (nopAuditor) Append(context.Context, *storage.AuditRecord) error { return nil }

// BenchmarkCoreCheck measures validate + evaluate + payload encoding + answer,
// with a no-op audit writer (storage/groupcommit has the audited figures).
func BenchmarkCoreCheck(b *testing.B) {
	c := newTestCore(b, nopAuditor{})
	req := coderTool("git_status", `{"short":true}`)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

const observeDoc = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: new-egress-rules}
spec:
  scope: {level: team, org: acme, team: eng}
  enforcement_mode: observe
  default: allow
  rules:
    - id: no-git-status
      match: {action: tool_call, name: git_status}
      decision: deny
      reason: trying out a stricter rule
`

// TestObserveModeAllowsAndRecordsShadow: a document in observe mode that
// would deny lets the action through and the audit record carries the
// shadow DENY and the observe document's rule.
func TestObserveModeAllowsAndRecordsShadow(t *testing.T) {
	docs, err := policy.LoadPath(filepath.Join("..", "examples", "policies"))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := policy.Parse("observe.yaml", []byte(observeDoc))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policy.Compile(append(docs, obs), "v-observe")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c, err := NewCore(Options{Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(snap)
	resp, err := c.Check(context.Background(), coderTool("git_status", ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetDecision() != v1.Decision_ALLOW || resp.GetShadowDecision() != v1.Decision_DENY {
		t.Fatalf("observe: decision %s shadow %s, want ALLOW with shadow DENY", resp.GetDecision(), resp.GetShadowDecision())
	}
	r := rec.last(t)
	if r.Decision != action.Allow || r.ShadowDecision != action.Deny || !strings.Contains(r.Reason, "would be deny by new-egress-rules/no-git-status") {
		t.Fatalf("audit record: decision %s shadow %s", r.Decision, r.ShadowDecision)
	}
}

// lateLog is a store slower than the audit timeout: it keeps every record
// (as the group-commit writer still writes a queued record whose caller gave
// up), answering only once ctx ends, except that it answers at once when
// fast is set.
type lateLog struct {
	mu   sync.Mutex
	recs []*storage.AuditRecord
	fast bool
}

func (l *lateLog) Append(ctx context.Context, r *storage.AuditRecord) error {
	l.mu.Lock()
	c := *r
	l.recs = append(l.recs, &c)
	fast := l.fast
	l.fast = true // the store recovers after the first record
	l.mu.Unlock()
	if fast {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestLateAuditRecordOverridden: a decision whose record was not durable
// within the audit timeout is answered DENY; the record, written anyway,
// says ALLOW, so a governance record after it says what was answered.
func TestLateAuditRecordOverridden(t *testing.T) {
	l := &lateLog{}
	c, err := NewCore(Options{Audit: l, Chain: "unit", AuditTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.SetSnapshot(exampleSnapshot(t))
	resp, err := c.Check(context.Background(), coderTool("git_status", `{"short":true}`))
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "audit log unavailable") {
		t.Fatalf("check with a slow audit log: %v %v, want a fail-closed deny", resp, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		n := len(l.recs)
		l.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records, want the late decision and the override", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d, o := l.recs[0], l.recs[1]
	if d.ID != resp.GetDecisionId() || d.Decision != action.Allow {
		t.Fatalf("first record %+v, want the policy's ALLOW of decision %s", d, resp.GetDecisionId())
	}
	if o.Event != storage.EventGovernance || o.Decision != action.Deny || o.RuleID != "audit" ||
		!strings.Contains(o.Reason, d.ID) || !strings.Contains(string(o.Payload), `"decision_id":"`+d.ID+`"`) || o.Agent != d.Agent || o.TraceID != d.TraceID {
		t.Fatalf("override record %+v", o)
	}

	// A record that fails outright (not a timeout) was not queued: no override.
	rec := &recorder{err: errors.New("disk full")}
	c2 := newTestCore(t, rec)
	if resp, _ := c2.Check(context.Background(), coderTool("git_status", "")); resp.GetDecision() != v1.Decision_DENY {
		t.Fatalf("%v", resp)
	}
	time.Sleep(50 * time.Millisecond)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ctxs) != 1 {
		t.Fatalf("%d appends after an outright failure, want 1 (no override)", len(rec.ctxs))
	}
}
