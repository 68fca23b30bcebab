package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

func TestCELConditions(t *testing.T) {
	s := mustCompile(t, mustParse(t, "cel", eng, `
default: allow
rules:
  - id: prod-db
    match: {action: network_call}
    when: 'action.network.port == 5432 && agent.labels["env"] != "prod"'
    decision: deny
  - id: rm
    match: {action: tool_call}
    when: "'command' in args && args.command.startsWith('rm')"
    decision: pending
  - id: night
    match: {action: file_operation}
    when: "now.getHours('Europe/Berlin') >= 22"
    decision: deny
  - id: gpt
    match: {action: llm_call}
    when: "agent.id == 'coder-1' && agent.org == 'acme' && agent.team == 'eng' && action.llm.model.startsWith('gpt') && action.kind == 'llm_call'"
    decision: redact
  - id: force
    match: {action: process_exec}
    when: "'--force' in action.exec.args"
    decision: deny
`))
	eval := func(a *action.Action, labels map[string]string) Result {
		return s.Evaluate(Input{Action: a, Labels: labels})
	}
	if r := eval(netCall(coder, "db", 5432), map[string]string{"env": "dev"}); r.Decision != action.Deny || r.RuleID != "cel/prod-db" {
		t.Errorf("dev to 5432: %+v", r)
	}
	if r := eval(netCall(coder, "db", 5432), map[string]string{"env": "prod"}); r.Decision != action.Allow {
		t.Errorf("prod to 5432: %+v", r)
	}
	if r := eval(netCall(coder, "db", 443), nil); r.Decision != action.Allow {
		t.Errorf("port 443: %+v", r)
	}
	if r := eval(toolCall(coder, "shell", `{"command":"rm -rf /"}`), nil); r.Decision != action.Pending || r.RuleID != "cel/rm" {
		t.Errorf("rm: %+v", r)
	}
	for _, args := range []string{`{"command":"ls"}`, `not json`, ``, `[1,2]`} {
		if r := eval(toolCall(coder, "shell", args), nil); r.Decision != action.Allow {
			t.Errorf("args %q: %+v", args, r)
		}
	}
	night := fileOp(coder, "read", "/x")
	night.Time = time.Date(2025, 1, 15, 22, 30, 0, 0, time.UTC) // 23:30 in Berlin
	if r := eval(night, nil); r.Decision != action.Deny || r.RuleID != "cel/night" {
		t.Errorf("night: %+v", r)
	}
	if r := eval(fileOp(coder, "read", "/x"), nil); r.Decision != action.Allow {
		t.Errorf("day: %+v", r)
	}
	if r := eval(llmCall(coder, "openai", "gpt-4o"), nil); r.Decision != action.Redact {
		t.Errorf("gpt: %+v", r)
	}
	if r := eval(execCall(coder, "git", "push", "--force"), nil); r.Decision != action.Deny {
		t.Errorf("force: %+v", r)
	}
	if r := eval(execCall(coder, "git", "push"), nil); r.Decision != action.Allow {
		t.Errorf("no force: %+v", r)
	}
	if n := s.CELErrors(); n != 0 {
		t.Errorf("CELErrors = %d, want 0", n)
	}
	_, trace := s.Explain(Input{Action: toolCall(coder, "shell", `{"command":"ls"}`)})
	if !containsStep(trace, "cel/rm", `when "'command' in args && args.command.startsWith('rm')" is false`) {
		t.Errorf("trace lacks the CEL result:\n%s", traceString(trace))
	}
}

func TestCELCompileErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"agnt.id == 'x'", "undeclared reference to 'agnt'"},
		{"1 + 2", "CEL expression must evaluate to bool, not int"},
		{"args.x", "CEL expression must evaluate to bool, not dyn"},
		{"action.kind ==", "invalid CEL expression at 1:"},
		{"", "empty CEL expression"},
	} {
		_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "rules:\n  - id: r\n    when: \""+tc.expr+"\"\n    decision: deny")))
		if err == nil || !strings.Contains(err.Error(), "x.yaml:9:13: spec.rules[0].when: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.expr, err, tc.want)
		}
	}
	_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "tools:\n  t: {allow: true, requires_approval_if: \"args\"}")))
	if err == nil || !strings.Contains(err.Error(), "spec.tools[t].requires_approval_if: CEL expression must evaluate to bool, not map(") {
		t.Errorf("tools: got %v", err)
	}
}
