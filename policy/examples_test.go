package policy

import (
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

func loadExamples(t testing.TB) *Snapshot {
	t.Helper()
	docs, err := LoadPath("../examples/policies")
	if err != nil {
		t.Fatalf("load examples: %v", err)
	}
	if len(docs) != 4 {
		t.Fatalf("loaded %d example documents, want 4", len(docs))
	}
	s, err := Compile(docs, Fingerprint(docs)[:12])
	if err != nil {
		t.Fatalf("compile examples: %v", err)
	}
	return s
}

// TestExamples checks the decisions the demo shows.
func TestExamples(t *testing.T) {
	s := loadExamples(t)
	support := action.AgentID{Org: "acme", Team: "support", Agent: "support-1"}

	r := check(t, s, toolCall(coder, "git_status", ""), expect{action.Allow, "coding-agent/tools[git_status]"})
	if r.PolicyVersion != s.Version() || len(r.PolicyVersion) != 12 {
		t.Errorf("policy version = %q", r.PolicyVersion)
	}
	r = check(t, s, toolCall(coder, "shell_exec", `{"command":"rm -rf /"}`), expect{action.Pending, "coding-agent/tools[shell_*]"})
	if !r.RequiresApproval || r.ToolLimitPerHour != 30 {
		t.Errorf("shell_exec result = %+v", r)
	}
	check(t, s, netCall(researcher, "en.wikipedia.org", 443), expect{action.Allow, "research-agent/network.allowlist[0]"})
	check(t, s, netCall(researcher, "evil.example.com", 443), expect{action.Deny, "research-agent/network.allowlist"})

	// More of the starter set.
	check(t, s, toolCall(coder, "shell_exec", `{"command":"ls -la"}`), expect{action.Allow, "coding-agent/tools[shell_*]"})
	check(t, s, toolCall(coder, "kubectl", ""), expect{action.Deny, "coding-agent/tools[*]"})
	check(t, s, fileOp(coder, "read", "/workspace/app/main.go"), expect{action.Allow, "coding-agent/filesystem.read[0]"})
	check(t, s, fileOp(coder, "read", "/workspace/app/.env"), expect{action.Deny, "global-baseline/filesystem.deny[0]"})
	check(t, s, fileOp(coder, "read", "/home/dev/.ssh/id_rsa"), expect{action.Deny, "global-baseline/filesystem.deny[2]"})
	check(t, s, execCall(coder, "/usr/bin/curl", "https://example.com"), expect{action.Deny, "coding-agent/process.deny[0]"})
	check(t, s, execCall(coder, "go", "test", "./..."), expect{action.Allow, "coding-agent/process.allow[1]"})
	check(t, s, llmCall(coder, "anthropic", "claude-sonnet-4"), expect{action.Allow, "coding-agent/llm"})
	check(t, s, llmCall(coder, "mistral", "mistral-large"), expect{action.Deny, "coding-agent/llm.providers"})
	check(t, s, netCall(coder, "proxy.golang.org", 443), expect{action.Allow, "coding-agent/network.allowlist[0]"})
	check(t, s, netCall(researcher, "169.254.169.254", 80), expect{action.Deny, "global-baseline/no-cloud-metadata"})
	check(t, s, netCall(researcher, "10.20.3.4", 8443), expect{action.Allow, "research-agent/network.allowlist[4]"})
	check(t, s, toolCall(researcher, "shell_exec", ""), expect{action.Deny, "research-agent/tools[*]"})
	check(t, s, fileOp(researcher, "read", "/tmp/x"), expect{action.Deny, "research-agent/capabilities"})
	check(t, s, toolCall(support, "ticket_get", ""), expect{action.Allow, "support-agent/tools[ticket_get]"})
	check(t, s, toolCall(support, "ticket_delete", ""), expect{action.Deny, "support-agent/tools[ticket_delete]"})
	crm := &action.Action{Agent: support, Kind: action.KindToolResult, Time: wednesday, Result: action.ToolResult{Name: "crm_lookup"}}
	check(t, s, crm, expect{action.Redact, "support-agent/redact-crm-results"})
	sunday := toolCall(support, "ticket_get", "")
	sunday.Time = time.Date(2025, 1, 19, 12, 0, 0, 0, time.UTC)
	check(t, s, sunday, expect{action.Deny, "support-agent/schedule"})
	// An agent of a team without a policy is unattributed: only the baseline
	// applies, and the baseline does not let unattributed agents through.
	check(t, s, llmCall(action.AgentID{Org: "acme", Team: "finance", Agent: "f-1"}, "openai", "gpt-4o"), expect{action.Deny, "unattributed"})
	check(t, s, &action.Action{Agent: coder, Kind: action.KindAgentSpawn, Time: wednesday}, expect{action.Deny, "coding-agent/capabilities"})

	st := s.Settings(researcher)
	if len(st.Injections) != 1 || st.Injections[0].Entry.Host != "api.openai.com" || st.Approval.EscalationRole != "security-oncall" || len(st.Budgets) != 1 {
		t.Errorf("research settings = %+v", st)
	}
}

// TestConcurrentEvaluate runs under -race in CI: a Snapshot is shared by
// every check.
func TestConcurrentEvaluate(t *testing.T) {
	s := loadExamples(t)
	inputs := []Input{
		{Action: toolCall(coder, "git_status", "")},
		{Action: toolCall(coder, "shell_exec", `{"command":"rm -rf /"}`)},
		{Action: netCall(researcher, "en.wikipedia.org", 443)},
		{Action: fileOp(coder, "read", "/workspace/.env")},
	}
	want := make([]Result, len(inputs))
	for i, in := range inputs {
		want[i] = s.Evaluate(in)
	}
	done := make(chan struct{})
	for g := 0; g < 8; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; i < 500; i++ {
				k := (g + i) % len(inputs)
				if got := s.Evaluate(inputs[k]); got != want[k] {
					t.Errorf("concurrent result %+v, want %+v", got, want[k])
					return
				}
			}
		}()
	}
	for g := 0; g < 8; g++ {
		<-done
	}
}
