package policy

import (
	"errors"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/agent-assembly/agent-assembly/action"
)

// evalClauses parses expr in the clause grammar (even if it is also valid
// CEL), translates it and evaluates it for a. The translation must never
// fail at run time.
func evalClauses(t testing.TB, expr string, a *action.Action, labels map[string]string) bool {
	t.Helper()
	n, err := parseClauses(expr)
	if err != nil {
		t.Fatalf("parse %q: %v", expr, err)
	}
	c, err := compileClauses(n)
	if err != nil {
		t.Fatalf("compile %q: %v", expr, err)
	}
	ctx := newEvalCtx(nil, &Input{Action: a, Labels: labels}, nil, false)
	ok, err := c.eval(ctx.condVars(c))
	if err != nil {
		t.Fatalf("%q failed at run time: %v", expr, err)
	}
	return ok
}

// clauseArgs is the JSON arguments most clause tests run against.
const clauseArgs = `{
	"command": "rm -rf /tmp/x",
	"count": 12,
	"ratio": 0.5,
	"neg": -3,
	"force": true,
	"empty": "",
	"name": "beta",
	"tags": ["prod", "eu", 7, true],
	"files": [{"path": "/etc/passwd", "mode": 420}, {"path": "/tmp/y"}],
	"matrix": [[1, 2], [3, 4]],
	"nested": {"deep": {"level": "three"}},
	"quote": "it's \"quoted\"",
	"backslash": "C:\\tmp",
	"dash-key": "d",
	"numstr": "12"
}`

func TestClauseGrammar(t *testing.T) {
	labels := map[string]string{"env": "prod", "app.kubernetes.io/name": "coder", "blank": ""}
	tool := toolCall(coder, "shell_exec", clauseArgs)
	tool.Tool.TargetURL = "https://api.example.com/v1/repos?x=1"
	for _, tc := range []struct {
		expr string
		want bool
	}{
		// Operators on strings.
		{`tool == "shell_exec"`, true},
		{`tool == 'shell_exec'`, true},
		{`tool == "shell"`, false},
		{`tool != "shell"`, true},
		{`tool != "shell_exec"`, false},
		{`tool > "shell"`, true},
		{`tool >= "shell_exec"`, true},
		{`tool < "shell_exec"`, false},
		{`tool <= "shell_exec"`, true},
		{`tool < "t"`, true},
		{`tool contains "ell_e"`, true},
		{`tool contains "xyz"`, false},
		{`tool starts_with "shell_"`, true},
		{`tool starts_with "exec"`, false},
		{`tool in ["git", "shell_exec"]`, true},
		{`tool in [git, shell_exec]`, true},
		{`tool in [git]`, false},
		{`tool not_in [git, ls]`, true},
		{`tool not_in ["shell_exec"]`, false},
		{`tool in []`, false},
		{`tool not_in []`, true},
		// Numbers compare numerically.
		{`args.count == 12`, true},
		{`args.count == 12.0`, true},
		{`args.count == 1.2e1`, true},
		{`args.count != 12`, false},
		{`args.count > 9`, true},
		{`args.count > 100`, false},
		{`args.count >= 12`, true},
		{`args.count < 100`, true},
		{`args.count <= 11.5`, false},
		{`args.ratio < 1`, true},
		{`args.neg < -2`, true},
		{`args.neg == -3`, true},
		{`args.count in [1, 12, "x"]`, true},
		{`args.count not_in [1, 2]`, true},
		// Strings compare lexicographically, never with numbers.
		{`args.name > "alpha"`, true},
		{`args.name < "alpha"`, false},
		{`args.numstr > "100"`, true},
		{`args.numstr == 12`, false},
		{`args.numstr != 12`, true},
		{`args.numstr > 5`, false},
		{`args.count == "12"`, false},
		{`args.count > "1"`, false},
		{`args.count contains "1"`, false},
		{`args.count starts_with "1"`, false},
		// Booleans.
		{`args.force == true`, true},
		{`args.force == TRUE`, true},
		{`args.force != false`, true},
		{`args.force == "true"`, false},
		{`args.force in [true]`, true},
		// contains on strings and lists.
		{`args.command contains "-rf"`, true},
		{`args.tags contains "prod"`, true},
		{`args.tags contains "pro"`, false},
		{`args.tags contains 7`, true},
		{`args.tags contains 7.0`, true},
		{`args.tags contains true`, true},
		{`args.tags contains false`, false},
		{`args.name contains 7`, false},
		{`args.command starts_with 'rm'`, true},
		{`args.empty == ""`, true},
		{`args.empty starts_with ""`, true},
		// args paths with indexes.
		{`args.files[0].path == "/etc/passwd"`, true},
		{`args.files[1].path starts_with "/tmp"`, true},
		{`args.files[0].mode == 420`, true},
		{`args.files[2].path == "/x"`, false},
		{`args.files[1].mode == 420`, false},
		{`args.matrix[1][0] == 3`, true},
		{`args.matrix[0][5] == 3`, false},
		{`args.tags[0] == "prod"`, true},
		{`args.tags[3] == true`, true},
		{`args.nested.deep.level == "three"`, true},
		{`args.nested.deep.level.more == "three"`, false},
		{`args.name[0] == "b"`, false},
		{`args.files.path == "/etc/passwd"`, false},
		{`args.dash-key == "d"`, true},
		// Missing operands make every clause false, also != and not_in.
		{`args.missing == "x"`, false},
		{`args.missing != "x"`, false},
		{`args.missing not_in ["x"]`, false},
		{`args.missing contains "x"`, false},
		{`args.missing < 5`, false},
		{`command == "rm"`, false},
		{`command != "rm"`, false},
		{`method != "GET"`, false},
		{`agent.labels.missing != "x"`, false},
		// url and path of a tool call come from its target URL.
		{`url == "https://api.example.com/v1/repos?x=1"`, true},
		{`url starts_with "https://api.example.com/"`, true},
		{`path == "/v1/repos"`, true},
		{`path starts_with "/v1/"`, true},
		// Agent and team operands.
		{`agent.id == "coder-1"`, true},
		{`agent.org == "acme"`, true},
		{`agent.team == "eng"`, true},
		{`team.id == "eng"`, true},
		{`team.org == "acme"`, true},
		{`team.id in [eng, ops]`, true},
		{`agent.labels.env == "prod"`, true},
		{`agent.labels.app.kubernetes.io/name == "coder"`, true},
		{`agent.labels.blank == ""`, true},
		{`agent.labels.blank != "x"`, true},
		// Precedence: AND binds tighter than OR; parentheses group.
		{`tool == "x" AND tool == "y" OR tool == "shell_exec"`, true},
		{`tool == "shell_exec" OR tool == "x" AND tool == "y"`, true},
		{`(tool == "shell_exec" OR tool == "x") AND tool == "y"`, false},
		{`tool == "shell_exec" AND (tool == "x" OR args.count > 10)`, true},
		{`tool == "x" OR (agent.team == "eng" AND (args.force == true AND args.count < 13))`, true},
		{`((tool == "shell_exec"))`, true},
		{`tool == "a" or tool == "b" Or tool == "shell_exec"`, true},
		{`tool == "shell_exec" and agent.id == "coder-1" AND team.org == "acme"`, true},
		{`tool == "shell_exec" and agent.id == "other"`, false},
		{`args.command starts_with 'rm' OR tool == "shell_exec"`, true},
		// Quoting: either quote, escaped quotes, other backslashes literal.
		{`args.quote == 'it\'s "quoted"'`, true},
		{`args.quote == "it's \"quoted\""`, true},
		{`args.backslash == 'C:\tmp'`, true},
		{`args.backslash == "C:\\tmp"`, true},
		{`args.name in ['beta', "gamma"]`, true},
		{"tool ==\n\t'shell_exec'\nAND\targs.count>1", true},
		{`tool=="shell_exec"AND(args.count>1)`, true},
		{`tool CONTAINS 'exec' AND tool Starts_With 'sh' AND tool NOT_IN [a] AND tool IN [shell_exec]`, true},
	} {
		if got := evalClauses(t, tc.expr, tool, labels); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.expr, got, tc.want)
		}
	}
}

func TestClauseOperandsByKind(t *testing.T) {
	net := netCall(coder, "API.Example.com", 8443)
	net.Network.Path, net.Network.Method = "v1/items", "POST"
	net6 := netCall(coder, "::1", 0)
	net6.Network.Protocol = ""
	result := &action.Action{Agent: coder, Kind: action.KindToolResult, Result: action.ToolResult{Name: "search"}}
	for _, tc := range []struct {
		a    *action.Action
		want map[string]any
	}{
		{toolCall(coder, "shell", ""), map[string]any{"tool": "shell"}},
		{&action.Action{Agent: coder, Kind: action.KindToolCall, Tool: action.ToolCall{Name: "fetch", TargetURL: "https://h/a/b"}},
			map[string]any{"tool": "fetch", "url": "https://h/a/b", "path": "/a/b"}},
		{result, map[string]any{"tool": "search"}},
		{fileOp(coder, "read", "/workspace/../etc/passwd"), map[string]any{"path": "/etc/passwd"}},
		{net, map[string]any{"url": "https://api.example.com:8443/v1/items", "path": "v1/items", "method": "POST"}},
		{net6, map[string]any{"url": "tcp://[::1]", "method": "GET"}},
		{execCall(coder, "/bin/rm", "-rf"), map[string]any{"command": "/bin/rm"}},
		{llmCall(coder, "openai", "gpt-4o"), map[string]any{}},
	} {
		ctx := newEvalCtx(nil, &Input{Action: tc.a}, nil, false)
		if got := clauseOperands(&ctx); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.a.Kind, got, tc.want)
		}
	}
	// The operands of other kinds work in the translation too.
	if !evalClauses(t, `url == "https://api.example.com:8443/v1/items" AND method == 'POST' AND path == 'v1/items'`, net, nil) {
		t.Error("network operands")
	}
	if !evalClauses(t, `command == "/bin/rm" AND tool == "x" OR command contains 'rm'`, execCall(coder, "/bin/rm"), nil) {
		t.Error("exec operands")
	}
	if evalClauses(t, `agent.id != ""`, toolCall(action.AgentID{Org: "acme"}, "t", ""), nil) {
		t.Error("an empty agent id is a missing operand")
	}
}

func TestClauseSyntaxErrors(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`tool`, `at 1:5: expected an operator (==, !=, >, >=, <, <=, contains, starts_with, in, not_in) after "tool"`},
		{`tool = "x"`, `at 1:6: unexpected "=": use == to compare`},
		{`tool equals "x"`, `at 1:6: unexpected "equals": expected an operator`},
		{`tool ==`, `at 1:8: expected a value at the end of the expression`},
		{`tool == x`, `at 1:9: unquoted value "x": quote strings ('x' or "x")`},
		{`tool == "x`, `at 1:9: unterminated string`},
		{`tool == 'x' &&  path == 'y'`, `at 1:13: unexpected "&&": use AND`},
		{`tool == 'x' || path == 'y'`, `at 1:13: unexpected "||": use OR`},
		{`tool == 'x' path == 'y'`, `at 1:13: unexpected "path": join clauses with AND or OR`},
		{`tool == 'x' AND`, `at 1:16: expected a clause (operand operator value) or '(' at the end of the expression`},
		{`(tool == 'x'`, `at 1:1: unclosed '('`},
		{`(tool == 'x'))`, `at 1:14: unmatched ')'`},
		{`tool == 'x')`, `at 1:12: unmatched ')'`},
		{`()`, `at 1:2: unexpected ")": expected a clause`},
		{`'x' == tool`, `at 1:1: unexpected "'": expected a clause`},
		{`toolz == 'x'`, `at 1:1: unknown operand "toolz"`},
		{`agent.name == 'x'`, `at 1:1: unknown operand "agent.name"`},
		{`agent.labels. == 'x'`, `at 1:1: invalid label operand`},
		{`args == 'x'`, `at 1:1: unknown operand "args"`},
		{`args..x == 'x'`, `at 1:1: invalid args path "args..x": empty key`},
		{`args.x[a] == 'x'`, `at 1:7: unexpected "[": expected an operator`},
		{`args.x[0]y == 'x'`, `invalid args path "args.x[0]y": unexpected "y" after an index`},
		{`args.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q == 1`, `more than 16 steps`},
		{`tool in 'x'`, `at 1:9: in needs a list such as [a, "b", 3]`},
		{`tool == ['x']`, `at 1:9: a list needs in or not_in, not ==`},
		{`tool in ['x'`, `at 1:9: unclosed '['`},
		{`tool in ['x' 'y']`, `at 1:14: unexpected "'": expected ',' or ']' in the list`},
		{`tool in [,]`, `at 1:10: unexpected ",": expected a value`},
		{`tool starts_with 5`, `at 1:18: starts_with needs a quoted string`},
		{`args.x > true`, `at 1:10: > needs a number or a quoted string, not a boolean`},
		{`args.x == 5abc`, `at 1:11: invalid number "5abc"`},
		{`args.x == 1.`, `invalid number "1."`},
		{`args.x == 1e999`, `number 1e999 is out of range`},
		{"tool == 'x'\nAND\n  tool", `at 3:7: expected an operator`},
		{"tool == 'x'\nAND\n  bogus == 1", `at 3:3: unknown operand "bogus"`},
		{`tool == 'é' AND tool ~ 'x'`, `at 1:22: unexpected "~"`},
		{``, `at 1:1: expected a clause`},
		{strings.Repeat("(", 33) + "tool == 'x'" + strings.Repeat(")", 33), `at 1:33: parentheses nested deeper than 32`},
		{strings.Repeat("tool == 'x' OR ", 256) + "tool == 'x'", `more than 256 clauses`},
		{strings.Repeat(" ", 9000), `longer than 8192 bytes`},
	} {
		_, err := parseClauses(tc.expr)
		var se *clauseSyntaxError
		if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "invalid clause expression at ") {
			t.Errorf("%q: got %v, want %q", tc.expr, err, tc.want)
		}
	}
	// The limits leave room: the largest expressions still compile.
	for _, expr := range []string{
		strings.Repeat("(", 32) + "tool == 'x'" + strings.Repeat(")", 32),
		strings.Repeat("args.a.b[1].c contains 'x' OR ", 254) + "tool == 'x'",
		"args.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p == 1",
	} {
		if !evalClauses(t, expr+" OR tool == 'shell'", toolCall(coder, "shell", ""), nil) {
			t.Errorf("%.40s...: got false", expr)
		}
	}
	n, err := parseClauses(strings.Repeat("args."+strings.Repeat("k", 300)+strings.Repeat("[0]", 15)+" == 1 OR ", 20) + "tool == 'x'")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := compileClauses(n); err == nil || !strings.Contains(err.Error(), "too long once compiled") {
		t.Errorf("huge translation: got %v", err)
	}
}

// approvalDoc parses a tools entry with requires_approval_if and returns
// the document and the compiled tools entry.
func approvalDoc(t *testing.T, cond string) (*Document, *toolEntry) {
	t.Helper()
	d := mustParse(t, "approve", eng, "default: allow\ntools:\n  \"*\":\n    allow: true\n    requires_approval_if: "+yamlQuote(cond))
	return d, &d.plan.tools.entries[0]
}

func yamlQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`).Replace(s) + `"`
}

func TestApprovalSyntaxDetection(t *testing.T) {
	for _, tc := range []struct {
		cond    string
		clauses bool
	}{
		// Valid CEL is CEL, also when the clause grammar could read it.
		{`'command' in args && args.command.startsWith('rm')`, false},
		{`args.command == 'rm'`, false},
		{`agent.labels.env == 'prod'`, false},
		{`args.count > 5`, false},
		{`args.x in ['a', 'b']`, false},
		{`true`, false},
		// Everything else that parses as clauses is clauses.
		{`tool == "shell_exec"`, true},
		{`args.command starts_with 'rm' OR tool == "shell_exec"`, true},
		{`args.command == 'rm' AND agent.team == 'eng'`, true},
		{`args.tags contains 'prod'`, true},
		{`team.id in [eng, ops]`, true},
		{`args.x in [a, b]`, true},
		{`args.files[0].path starts_with '/etc'`, true},
	} {
		d, e := approvalDoc(t, tc.cond)
		c, ok := e.cond.(celCondition)
		if !ok || c.clauses != tc.clauses || e.unparseable != "" || len(d.Warnings()) != 0 {
			t.Errorf("%s: cond %#v, unparseable %q, warnings %v; want clauses=%v", tc.cond, e.cond, e.unparseable, d.Warnings(), tc.clauses)
		}
	}
}

// TestClauseTranslationMatchesCEL checks clause expressions against
// hand-written CEL with the same meaning.
func TestClauseTranslationMatchesCEL(t *testing.T) {
	actions := []*action.Action{
		toolCall(coder, "shell_exec", `{"command":"rm -rf /","count":7,"tags":["prod"]}`),
		toolCall(coder, "shell_exec", `{"command":"ls","count":3,"tags":"preprod"}`),
		toolCall(coder, "git_push", `{"command":7,"count":"9","tags":[1,"x"]}`),
		toolCall(researcher, "git_push", `{}`),
		toolCall(researcher, "fetch", `not json`),
		toolCall(action.AgentID{Org: "beta", Team: "eng", Agent: "x"}, "shell_exec", `{"count":100}`),
	}
	for _, tc := range []struct{ clauses, cel string }{
		{`tool == "shell_exec" OR args.command starts_with 'rm'`,
			`action.tool.name == "shell_exec" || ('command' in args && type(args.command) == string && args.command.startsWith('rm'))`},
		{`agent.team == 'eng' AND args.count > 5`,
			`agent.team == 'eng' && 'count' in args && type(args.count) == double && args.count > 5.0`},
		{`args.tags contains 'prod'`,
			`'tags' in args && ((type(args.tags) == string && args.tags.contains('prod')) || (type(args.tags) == list && 'prod' in args.tags))`},
		{`team.org not_in [acme, gamma]`,
			`!(agent.org in ['acme', 'gamma'])`},
		{`(tool == 'git_push' OR tool == 'fetch') AND agent.id != 'researcher-1'`,
			`(action.tool.name == 'git_push' || action.tool.name == 'fetch') && agent.id != 'researcher-1'`},
	} {
		want, _, err := compileApproval(tc.cel)
		if err != nil {
			t.Fatalf("%s: %v", tc.cel, err)
		}
		for _, a := range actions {
			ctx := newEvalCtx(nil, &Input{Action: a}, nil, false)
			w, err := want.eval(ctx.condVars(want))
			if err != nil {
				t.Fatalf("%s: %v", tc.cel, err)
			}
			if got := evalClauses(t, tc.clauses, a, nil); got != w {
				t.Errorf("%s on %s %s: clauses %v, CEL %v", tc.clauses, a.Agent, a.Tool.ArgsJSON, got, w)
			}
		}
	}
}

func TestApprovalFailSafe(t *testing.T) {
	src := policyYAML("approve", eng, `
default: allow
tools:
  "shell_*":
    allow: true
    requires_approval_if: "args.command startswith 'rm' OR tool == 'shell_exec'"
  git_push: {allow: true, requires_approval_if: "args.branch == 'main' &&"}
  fetch: {allow: true, requires_approval_if: "tool == fetch"}
  ls: {allow: true, requires_approval_if: "tool == 'ls'"}
`)
	d, err := Parse("approve.yaml", []byte(src))
	if err != nil {
		t.Fatalf("an unparseable condition must not reject the document: %v", err)
	}
	want := []string{
		`approve.yaml:11:29: spec.tools[shell_*].requires_approval_if: unparseable condition, approval will always be required: invalid clause expression at 1:14: unexpected "startswith": expected an operator (==, !=, >, >=, <, <=, contains, starts_with, in, not_in) after "args.command"`,
		`approve.yaml:12:51: spec.tools[git_push].requires_approval_if: unparseable condition, approval will always be required: invalid CEL expression at 1:25: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}`,
		`approve.yaml:13:48: spec.tools[fetch].requires_approval_if: unparseable condition, approval will always be required: invalid clause expression at 1:9: unquoted value "fetch": quote strings ('fetch' or "fetch"); only true, false and numbers are unquoted`,
	}
	var got []string
	for _, w := range d.Warnings() {
		got = append(got, w.Error())
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if w := d.Warnings()[0]; w.File != "approve.yaml" || w.Line != 11 || w.Column != 29 || w.Field != "spec.tools[shell_*].requires_approval_if" {
		t.Errorf("warning fields: %+v", w)
	}

	other := mustParse(t, "aaa-other", "{level: team, org: acme, team: research}", "tools:\n  x: {allow: true, requires_approval_if: \"tool contains\"}")
	s := mustCompile(t, d, other)
	sw := s.Warnings()
	if len(sw) != 4 || sw[0].File != "aaa-other.yaml" || sw[1] != d.Warnings()[0] || sw[3] != d.Warnings()[2] {
		t.Errorf("snapshot warnings: %v", sw)
	}

	// Every call of an entry with an unparseable condition is pending.
	for _, a := range []*action.Action{
		toolCall(coder, "shell_ls", `{"command":"ls"}`),
		toolCall(coder, "git_push", `{"branch":"dev"}`),
		toolCall(coder, "fetch", ``),
	} {
		r := check(t, s, a, expect{action.Pending, "approve/tools[" + d.plan.tools.entries[d.plan.tools.lookup(a.Tool.Name)].pattern + "]"})
		if !r.RequiresApproval || !strings.Contains(r.Reason, "cannot be parsed, so approval is always required (fail-safe; see the policy warnings)") {
			t.Errorf("%s: %+v", a.Tool.Name, r)
		}
	}
	check(t, s, toolCall(coder, "ls", ""), expect{action.Pending, "approve/tools[ls]"})
	check(t, s, toolCall(coder, "cat", ""), expect{action.Allow, "approve/default"})
	_, trace := s.Explain(Input{Action: toolCall(coder, "fetch", "")})
	if !containsStep(trace, "approve/tools[fetch]", `requires_approval_if "tool == fetch" cannot be parsed (invalid clause expression at 1:9: unquoted value "fetch"`) {
		t.Errorf("trace does not say why approval was required:\n%s", traceString(trace))
	}
	if n := s.CELErrors(); n != 0 {
		t.Errorf("CELErrors = %d, want 0: an unparseable condition is not a run-time error", n)
	}
}

func TestApprovalConditionErrors(t *testing.T) {
	for _, tc := range []struct{ cond, want string }{
		// Valid CEL syntax that does not type-check and does not read as
		// clauses is still an error.
		{`args`, "CEL expression must evaluate to bool, not map("},
		{`agnt.id == 'x'`, "undeclared reference to 'agnt'"},
		{`  `, "empty condition: write CEL or a clause expression, or remove requires_approval_if"},
	} {
		_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "tools:\n  t: {allow: true, requires_approval_if: "+yamlQuote(tc.cond)+"}")))
		if err == nil || !strings.HasPrefix(err.Error(), "x.yaml:8:44: spec.tools[t].requires_approval_if: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.cond, err, tc.want)
		}
	}
	// A warning does not hide the document's errors.
	_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "tools:\n  t: {allow: false, requires_approval_if: \"tool ==\"}")))
	if err == nil || !strings.Contains(err.Error(), "has no effect when allow is false") {
		t.Errorf("allow false: got %v", err)
	}
}

// TestWhenRejectsClauses checks that rule conditions stay CEL only.
func TestWhenRejectsClauses(t *testing.T) {
	for _, tc := range []struct{ when, want string }{
		{`tool == 'x'`, "undeclared reference to 'tool'"},
		{`args.x contains 'a'`, "invalid CEL expression at 1:8: Syntax error"},
		{`args.x == 'a' AND args.y == 'b'`, "invalid CEL expression at 1:"},
		{`args.x ==`, "invalid CEL expression at 1:"},
	} {
		d, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "rules:\n  - id: r\n    when: "+yamlQuote(tc.when)+"\n    decision: deny")))
		if err == nil || !strings.HasPrefix(err.Error(), "x.yaml:9:13: spec.rules[0].when: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.when, err, tc.want)
		}
		if d != nil {
			t.Errorf("%q: a document was returned", tc.when)
		}
	}
}

func TestLooksLikeClauses(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want bool
	}{
		{`a AND b`, true},
		{`x or y`, true},
		{`args.x contains 'a'`, true},
		{`args.x starts_with 'a'`, true},
		{`args.x not_in [a]`, true},
		{`tool == x`, true},
		{`team.id == x`, true},
		{`url`, true},
		{`args.x.contains('a') ||`, false},
		{`contains('a')`, false},
		{`'tool AND path' == args.x`, false},
		{`"it\"s and" == args.x`, false},
		{`action.tool.name == 'x' &&`, false},
		{`args.x in ['a']`, false},
		{`args.command.startsWith('rm') ==`, false},
	} {
		if got := looksLikeClauses(tc.expr); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.expr, got, tc.want)
		}
	}
}

// FuzzClauses checks that the clause parser never panics and that whatever
// it accepts translates to CEL that compiles and never fails at run time.
func FuzzClauses(f *testing.F) {
	for _, s := range []string{
		`args.command starts_with 'rm' OR tool == "shell_exec"`,
		`(tool == 'a' OR tool == "b") AND args.files[0].path contains '/etc'`,
		`team.id in [eng, "ops", 3, true] AND agent.labels.env != 'prod'`,
		`args.count >= -1.5e3 and url starts_with 'https://'`,
		`args.q == 'it\'s' OR args.b == "C:\tmp\\"`,
		`tool`, `tool ==`, `((((`, `args.x[0][1].y not_in []`,
	} {
		f.Add(s)
	}
	actions := []*action.Action{
		toolCall(coder, "shell_exec", clauseArgs),
		toolCall(coder, "x", `{"a":[1,{"b":null}],"q":"it's"}`),
		netCall(coder, "h", 443),
	}
	f.Fuzz(func(t *testing.T, expr string) {
		n, err := parseClauses(expr)
		if err != nil {
			return
		}
		c, err := compileClauses(n)
		if err != nil {
			if !strings.Contains(err.Error(), "too long once compiled") {
				t.Fatalf("%q: %v", expr, err)
			}
			return
		}
		for _, a := range actions {
			ctx := newEvalCtx(nil, &Input{Action: a}, nil, false)
			if _, err := c.eval(ctx.condVars(c)); err != nil {
				t.Fatalf("%q failed at run time: %v", expr, err)
			}
		}
	})
}

// FuzzClauseString checks that any string survives quoting in the clause
// grammar and the translation to a CEL literal.
func FuzzClauseString(f *testing.F) {
	for _, s := range []string{"", "a", `it's "x"`, `C:\tmp\`, "tab\tnl\n\x00é€😀\u2028", "\\\\'\"\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return // YAML documents are UTF-8
		}
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
		n, err := parseClauses(`tool == ` + quoted)
		if err != nil {
			if len(quoted) > maxClauseSource-8 {
				return
			}
			t.Fatalf("%q: %v", quoted, err)
		}
		if n.value.str != s {
			t.Fatalf("parsed %q, want %q", n.value.str, s)
		}
		a := &action.Action{Agent: coder, Kind: action.KindToolCall, Tool: action.ToolCall{Name: s}}
		if s != "" && !evalClauses(t, `tool == `+quoted, a, nil) {
			t.Fatalf("%q does not equal itself after translation", s)
		}
	})
}

func BenchmarkEvaluateClauses(b *testing.B) {
	s := mustCompile(b, mustParse(b, "clauses", eng, `
default: allow
tools:
  "shell_*": {allow: true, requires_approval_if: "args.command starts_with 'rm' OR (tool == 'shell_admin' AND agent.labels.env != 'dev')"}
`))
	for _, tc := range []struct {
		name string
		in   Input
	}{
		{"match", Input{Action: toolCall(coder, "shell_exec", `{"command":"rm -rf /tmp/x"}`)}},
		{"no-match", Input{Action: toolCall(coder, "shell_exec", `{"command":"ls -l"}`), Labels: map[string]string{"env": "dev"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Evaluate(tc.in)
			}
		})
	}
}

// TestDocumentedApprovalConditions checks that the requires_approval_if
// examples of docs/policy.md compile without warnings.
func TestDocumentedApprovalConditions(t *testing.T) {
	data, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	conds := regexp.MustCompile(`requires_approval_if: "([^"]+)"`).FindAllStringSubmatch(string(data), -1)
	if len(conds) < 5 {
		t.Fatalf("found %d examples in docs/policy.md", len(conds))
	}
	for _, m := range conds {
		if _, unparseable, err := compileApproval(m[1]); err != nil || unparseable != "" {
			t.Errorf("%s: %v %s", m[1], err, unparseable)
		}
	}
}
