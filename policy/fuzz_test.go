package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts
// compiles and evaluates.
func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/invalid/*.yaml", "../examples/policies/*.yaml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	// requires_approval_if in the clause grammar, valid and unparseable.
	for _, cond := range []string{
		`args.command starts_with 'rm' OR tool == "shell_exec"`,
		`(tool in [git_status, "git_push"] AND args.files[0].path contains '/etc') OR team.id != 'eng'`,
		`agent.labels.env == 'prod' and args.count >= 10 or url starts_with "https://"`,
		`tool == shell_exec`,
		`args.command startswith 'rm'`,
		`args.x == 'a' &&`,
	} {
		f.Add([]byte(policyYAML("clauses", "{level: team, org: acme, team: eng}", "default: allow\ntools:\n  \"*\": {allow: true, requires_approval_if: "+yamlQuote(cond)+"}")))
	}
	actions := []*action.Action{
		toolCall(coder, "git_status", `{"command":"rm"}`),
		netCall(coder, "en.wikipedia.org", 443),
		netCall(coder, "10.1.2.3", 5432),
		fileOp(coder, "read", "/workspace/.env"),
		execCall(coder, "/usr/bin/git"),
		llmCall(coder, "openai", "gpt-4o"),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz.yaml", data)
		if err != nil {
			if _, ok := err.(Errors); !ok {
				t.Fatalf("Parse returned %T, want Errors", err)
			}
			return
		}
		for _, w := range d.Warnings() {
			if !strings.HasPrefix(w.Msg, "unparseable condition, approval will always be required: ") || w.Line == 0 {
				t.Fatalf("unexpected warning %v", w)
			}
		}
		s, err := Compile([]*Document{d}, "fuzz")
		if err != nil {
			return
		}
		for _, a := range actions {
			s.Evaluate(Input{Action: a})
			s.Explain(Input{Action: a})
		}
		s.Settings(coder)
		Fingerprint([]*Document{d})
	})
}
