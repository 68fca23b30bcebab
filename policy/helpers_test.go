package policy

import (
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // schedule tests must not depend on the host's zoneinfo

	"github.com/agent-assembly/agent-assembly/action"
)

// policyYAML builds a document; body holds spec fields at column 0.
func policyYAML(name, scope, body string) string {
	var b strings.Builder
	b.WriteString("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata:\n  name: " + name + "\nspec:\n  scope: " + scope + "\n")
	for _, l := range strings.Split(strings.Trim(body, "\n"), "\n") {
		if l != "" {
			b.WriteString("  " + l)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func mustParse(t testing.TB, name, scope, body string) *Document {
	t.Helper()
	d, err := Parse(name+".yaml", []byte(policyYAML(name, scope, body)))
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	return d
}

func mustCompile(t testing.TB, docs ...*Document) *Snapshot {
	t.Helper()
	s, err := Compile(docs, "test-v1")
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return s
}

var (
	coder      = action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}
	researcher = action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	// wednesday is a Wednesday, 10:00 in Berlin.
	wednesday = time.Date(2025, 1, 15, 9, 0, 0, 0, time.UTC)
)

func toolCall(agent action.AgentID, name, args string) *action.Action {
	return &action.Action{Agent: agent, Kind: action.KindToolCall, Time: wednesday, Tool: action.ToolCall{Name: name, ArgsJSON: args}}
}

func netCall(agent action.AgentID, host string, port uint32) *action.Action {
	return &action.Action{Agent: agent, Kind: action.KindNetworkCall, Time: wednesday, Network: action.NetworkCall{Host: host, Port: port, Protocol: "https", Method: "GET"}}
}

func fileOp(agent action.AgentID, op, path string) *action.Action {
	return &action.Action{Agent: agent, Kind: action.KindFileOperation, Time: wednesday, File: action.FileOperation{Operation: op, Path: path}}
}

func execCall(agent action.AgentID, cmd string, args ...string) *action.Action {
	return &action.Action{Agent: agent, Kind: action.KindProcessExec, Time: wednesday, Exec: action.ProcessExec{Command: cmd, Args: args}}
}

func llmCall(agent action.AgentID, provider, model string) *action.Action {
	return &action.Action{Agent: agent, Kind: action.KindLLMCall, Time: wednesday, LLM: action.LLMCall{Provider: provider, Model: model}}
}

// expect is the part of a Result most tests check.
type expect struct {
	decision action.Decision
	rule     string
}

func check(t *testing.T, s *Snapshot, a *action.Action, want expect) Result {
	t.Helper()
	r := s.Evaluate(Input{Action: a})
	if r.Decision != want.decision || r.RuleID != want.rule {
		_, trace := s.Explain(Input{Action: a})
		var lines []string
		for _, st := range trace {
			lines = append(lines, "  "+st.String())
		}
		t.Errorf("%s %q: got %s by %q (%s), want %s by %q\n%s", a.Kind, a.Name(), r.Decision, r.RuleID, r.Reason, want.decision, want.rule, strings.Join(lines, "\n"))
	}
	return r
}
