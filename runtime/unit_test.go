package runtime

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/scan"
)

var fakeGitHub = "ghp" + "_" + strings.Repeat("FAKE", 9)

func tool(name, args string) *v1.CheckActionRequest {
	return &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "o", TeamId: "t", AgentId: "a"}, ActionType: v1.ActionType_TOOL_CALL,
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: args}}}
}

func TestRescanLeavesRequestAndCleansCopy(t *testing.T) {
	sc, err := scan.New(scan.Options{})
	if err != nil {
		t.Fatal(err)
	}
	req := tool("x", `{"a":"`+fakeGitHub+`"}`)
	reds, clean := rescan(sc, req)
	if len(reds) != 1 || reds[0].GetPath() != "$.a" {
		t.Fatalf("redactions %v", reds)
	}
	if !strings.Contains(req.GetToolCall().GetArgsJson(), fakeGitHub) {
		t.Fatal("rescan changed the request")
	}
	if strings.Contains(clean.GetToolCall().GetArgsJson(), fakeGitHub) {
		t.Fatalf("clean copy holds the secret: %s", clean.GetToolCall().GetArgsJson())
	}
	exec := &v1.CheckActionRequest{Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: "git", Args: []string{"push", fakeGitHub}}}}
	reds, clean = rescan(sc, exec)
	if len(reds) != 1 || reds[0].GetPath() != "$.args[1]" || strings.Contains(clean.GetProcessExec().GetArgs()[1], fakeGitHub) || exec.GetProcessExec().GetArgs()[1] != fakeGitHub {
		t.Fatalf("exec args: %v %v", reds, clean)
	}
	if reds, clean := rescan(sc, tool("x", `{"a":"b"}`)); reds != nil || clean == nil {
		t.Fatalf("clean request: %v", reds)
	}
}

func TestMergeRedactions(t *testing.T) {
	red := []*v1.Redaction{{Kind: "github_token", Path: "$.a", Start: 0, End: 40}}
	got := mergeRedactions(&v1.CheckActionResponse{Decision: v1.Decision_ALLOW}, red)
	if got.GetDecision() != v1.Decision_REDACT || len(got.GetRedactions()) != 1 {
		t.Fatalf("allow + finding: %v", got)
	}
	got = mergeRedactions(&v1.CheckActionResponse{Decision: v1.Decision_REDACT, Redactions: red}, red)
	if len(got.GetRedactions()) != 1 {
		t.Fatalf("duplicate span added: %v", got)
	}
	if got := mergeRedactions(&v1.CheckActionResponse{Decision: v1.Decision_DENY}, red); got.GetDecision() != v1.Decision_DENY || len(got.GetRedactions()) != 0 {
		t.Fatalf("deny changed: %v", got)
	}
}

func TestCacheRules(t *testing.T) {
	now := time.Unix(0, 0)
	c := newDecisionCache(time.Minute, 2, func() time.Time { return now })
	a, b := tool("x", `{}`), tool("x", `{}`)
	b.TraceId, b.SpanId, b.SessionId, b.CredentialToken = "t", "s", "sess", "tok"
	ka, _ := keyOf(a)
	kb, _ := keyOf(b)
	if ka != kb {
		t.Fatal("trace ids or token changed the cache key")
	}
	if kc, _ := keyOf(tool("x", `{"a":1}`)); kc == ka {
		t.Fatal("different arguments share a key")
	}
	allow := &v1.CheckActionResponse{Decision: v1.Decision_ALLOW, PolicyVersion: "v1"}
	c.put(ka, c.gen.Load(), allow)
	if _, ok := c.get(ka); ok {
		t.Fatal("served while not live")
	}
	c.setLive(true)
	gen := c.gen.Load()
	c.put(ka, gen, allow)
	if got, ok := c.get(ka); !ok || got != allow {
		t.Fatal("miss after put")
	}
	c.invalidate()
	if _, ok := c.get(ka); ok {
		t.Fatal("hit after invalidate")
	}
	c.put(ka, gen, allow) // computed before the invalidation
	if _, ok := c.get(ka); ok {
		t.Fatal("an answer from before the invalidation was stored")
	}
	c.put(ka, c.gen.Load(), allow)
	now = now.Add(2 * time.Minute)
	if _, ok := c.get(ka); ok {
		t.Fatal("hit after the TTL")
	}
	for _, r := range []*v1.CheckActionResponse{
		{Decision: v1.Decision_PENDING},
		{Decision: v1.Decision_REDACT},
		{Decision: v1.Decision_DENY, RetryAfter: durationpb.New(time.Second)},
		{Decision: v1.Decision_ALLOW, ApprovalId: "ap"},
	} {
		if storable(r) {
			t.Errorf("storable(%v)", r)
		}
	}
	llm := &v1.CheckActionRequest{Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{}}}
	if cacheable(llm) || !cacheable(a) {
		t.Error("LLM calls (budgets) must not be cached; tool calls may")
	}
	withApproval := proto.Clone(a).(*v1.CheckActionRequest)
	withApproval.ApprovalId = "ap"
	if cacheable(withApproval) {
		t.Error("a check presenting an approval must reach the gateway")
	}
	c.observe("v2")
	if c.len() != 0 {
		t.Error("a new policy version kept entries")
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Agents: []Agent{{ID: mustID(t, "o/t/a"), Socket: "/run/a.sock"}}, Gateway: "x:1", BufferPath: "/b"}
	for _, tc := range []struct {
		mod  func(*Options)
		want string
	}{
		{func(o *Options) { o.Agents = nil }, "at least one agent"},
		{func(o *Options) { o.Agents[0].Socket = "rel.sock" }, "must be absolute"},
		{func(o *Options) { o.Agents = append(o.Agents, o.Agents[0]) }, "used twice"},
		{func(o *Options) { o.Gateway = "" }, "gateway address is required"},
		{func(o *Options) { o.BufferPath = "" }, "buffer path is required"},
		{func(o *Options) { o.FailMode = "open" }, `fail mode "open"`},
	} {
		o := ok
		o.Agents = append([]Agent(nil), ok.Agents...)
		tc.mod(&o)
		o.setDefaults()
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
	if _, err := ParseAgentID("a/b"); err == nil {
		t.Error("ParseAgentID accepted a/b")
	}
}

func mustID(t *testing.T, s string) action.AgentID {
	t.Helper()
	id, err := ParseAgentID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
