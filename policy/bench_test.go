package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
)

// genPolicies builds a realistic policy set with about n rules in total
// (tools entries, allowlist entries, filesystem patterns and explicit
// rules): one global document and team and agent documents of about 20
// rules each, spread over teams of 10 agents.
func genPolicies(tb testing.TB, n int) (*Snapshot, []Input) {
	tb.Helper()
	var docs []*Document
	add := func(name, scope, body string) {
		d, err := Parse(name+".yaml", []byte(policyYAML(name, scope, body)))
		if err != nil {
			tb.Fatalf("generated policy %s: %v", name, err)
		}
		docs = append(docs, d)
	}
	perDoc := 20
	if n < perDoc {
		perDoc = n
	}
	add("global", "{level: global}", genBody(0, perDoc, true))
	for i := 1; i*perDoc < n; i++ {
		team := fmt.Sprintf("team-%d", i/10)
		if i%10 == 0 {
			add(fmt.Sprintf("team-%d", i/10), fmt.Sprintf("{level: team, org: acme, team: %s}", team), genBody(i, perDoc, false))
		} else {
			add(fmt.Sprintf("agent-%d", i), fmt.Sprintf("{level: agent, org: acme, team: %s, agent: agent-%d}", team, i), genBody(i, perDoc, false))
		}
	}
	s, err := Compile(docs, "bench")
	if err != nil {
		tb.Fatal(err)
	}
	// Evaluate as an agent in the middle of the set.
	mid := len(docs) / 2
	if mid%10 == 0 {
		mid++
	}
	agent := action.AgentID{Org: "acme", Team: fmt.Sprintf("team-%d", mid/10), Agent: fmt.Sprintf("agent-%d", mid)}
	if n <= perDoc {
		agent = coder
	}
	inputs := []Input{
		{Action: toolCall(agent, "tool_3", `{"command":"ls"}`)},
		{Action: toolCall(agent, "git_log", "")},
		{Action: toolCall(agent, "unknown_tool", "")},
		{Action: netCall(agent, "api3.example.com", 443)},
		{Action: netCall(agent, "www.svc.example.org", 443)},
		{Action: netCall(agent, "10.3.4.5", 5432)},
		{Action: netCall(agent, "evil.example.net", 443)},
		{Action: fileOp(agent, "read", "/workspace/src/main.go")},
		{Action: fileOp(agent, "write", "/workspace/.env")},
		{Action: llmCall(agent, "openai", "gpt-4o")},
	}
	return s, inputs
}

// genBody writes a spec with about n rules.
func genBody(seed, n int, global bool) string {
	var b strings.Builder
	if global {
		b.WriteString("default: allow\n")
		b.WriteString("llm: {providers: [openai, anthropic], models: [\"gpt-4o*\", \"claude-*\"]}\n")
	}
	tools := n * 4 / 10
	hosts := n * 3 / 10
	rules := n - tools - hosts - 3
	if tools > 0 {
		b.WriteString("tools:\n")
		for i := 0; i < tools; i++ {
			switch {
			case i == tools-1 && tools > 2:
				b.WriteString("  \"*\": {allow: false}\n")
			case i%4 == 3:
				fmt.Fprintf(&b, "  \"git_%d*\": {allow: true, limit_per_hour: %d}\n", i, 10+i)
			default:
				fmt.Fprintf(&b, "  tool_%d: {allow: true}\n", i)
			}
		}
		if tools > 2 {
			b.WriteString("  \"git_*\": {allow: true}\n")
		}
	}
	if hosts > 0 {
		b.WriteString("network:\n  allowlist:\n")
		for i := 0; i < hosts; i++ {
			switch i % 3 {
			case 0:
				fmt.Fprintf(&b, "    - {host: api%d.example.com, ports: [443]}\n", i)
			case 1:
				fmt.Fprintf(&b, "    - {host: \"*.svc%d.example.org\"}\n", i)
			default:
				fmt.Fprintf(&b, "    - {cidr: 10.%d.0.0/16, ports: [5432]}\n", i%250)
			}
		}
		b.WriteString("    - {host: \"*.example.org\", ports: [443]}\n")
	}
	if n >= 3 {
		b.WriteString("filesystem: {read: [\"/workspace/**\"], write: [\"/workspace/out/**\"], deny: [\"**/.env\"]}\n")
	}
	if rules > 0 {
		b.WriteString("rules:\n")
		for i := 0; i < rules; i++ {
			switch i % 4 {
			case 0:
				fmt.Fprintf(&b, "  - {id: r%d, priority: %d, match: {action: tool_call, name: tool_%d}, decision: deny}\n", i, i%3, 1000+i)
			case 1:
				fmt.Fprintf(&b, "  - {id: r%d, match: {action: network_call, name: \"*.blocked%d.example.com\"}, decision: deny}\n", i, i)
			case 2:
				fmt.Fprintf(&b, "  - {id: r%d, match: {action: file_operation, resource: \"/secret%d/**\"}, decision: deny}\n", i, i)
			default:
				fmt.Fprintf(&b, "  - {id: r%d, priority: 5, match: {action: [tool_call, network_call], name: \"admin-%d\"}, decision: pending}\n", i, i)
			}
		}
	}
	if n == 1 {
		return "default: allow\ntools: {tool_3: {allow: true}}\n"
	}
	return b.String()
}

func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			s, inputs := genPolicies(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				s.Evaluate(inputs[i%len(inputs)])
			}
		})
	}
}

// BenchmarkEvaluateSingleDocument puts every rule in one global document,
// exercising the per-document indexes rather than the scope index.
func BenchmarkEvaluateSingleDocument(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			d, err := Parse("big.yaml", []byte(policyYAML("big", "{level: global}", genBody(0, n, true))))
			if err != nil {
				b.Fatal(err)
			}
			s, err := Compile([]*Document{d}, "bench")
			if err != nil {
				b.Fatal(err)
			}
			_, inputs := genPolicies(b, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				s.Evaluate(inputs[i%len(inputs)])
			}
		})
	}
}

func BenchmarkEvaluateCEL(b *testing.B) {
	s := mustCompile(b, mustParse(b, "cel", eng, `
default: allow
tools:
  "shell_*": {allow: true, requires_approval_if: "'command' in args && args.command.startsWith('rm')"}
rules:
  - id: prod-db
    match: {action: network_call}
    when: 'action.network.port == 5432 && agent.labels["env"] != "prod"'
    decision: deny
`))
	for _, tc := range []struct {
		name string
		in   Input
	}{
		{"tool", Input{Action: toolCall(coder, "shell_exec", `{"command":"rm -rf /tmp/x"}`)}},
		{"network", Input{Action: netCall(coder, "db.internal", 5432), Labels: map[string]string{"env": "dev"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Evaluate(tc.in)
			}
		})
	}
}

// TestEvaluateDoesNotAllocate checks the common path. Inputs that need
// normalising (upper-case hosts, unclean paths) and CEL conditions may
// allocate.
func TestEvaluateDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	examples := loadExamples(t)
	gen, genInputs := genPolicies(t, 1000)
	for _, tc := range []struct {
		s      *Snapshot
		inputs []Input
	}{
		{examples, []Input{
			{Action: toolCall(coder, "git_status", "")},
			{Action: toolCall(coder, "kubectl", "")},
			{Action: netCall(researcher, "en.wikipedia.org", 443)},
			{Action: netCall(researcher, "evil.example.com", 443)},
			{Action: netCall(researcher, "10.20.1.2", 443)},
			{Action: fileOp(coder, "read", "/workspace/src/main.go")},
			{Action: execCall(coder, "/usr/bin/git", "status")},
			{Action: llmCall(coder, "openai", "gpt-4o")},
			{Action: &action.Action{Agent: coder, Kind: action.KindAgentSpawn}},
		}},
		{gen, genInputs},
	} {
		for _, in := range tc.inputs {
			if n := testing.AllocsPerRun(50, func() { tc.s.Evaluate(in) }); n != 0 {
				t.Errorf("%s %q allocates %.1f times per Evaluate", in.Action.Kind, in.Action.Name(), n)
			}
		}
	}
}
