package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestToolSecrets(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "g", "{level: global}", `
tools:
  "git_*": {allow: true, secrets: [GITHUB_TOKEN]}
  deploy: {allow: true, secrets: [DEPLOY_KEY, GITHUB_TOKEN]}
  "*": {allow: true}
`),
		mustParse(t, "t", eng, `
tools:
  git_push: {allow: true, secrets: [SIGNING_KEY]}
  "*": {allow: false}
`),
		mustParse(t, "obs", "{level: agent, agent: coder-1}", "enforcement_mode: observe\ntools:\n  git_push: {allow: true, secrets: [OBSERVED]}"),
	)
	st := s.Settings(coder)
	for _, tc := range []struct {
		tool string
		want []string
	}{
		// g's git_* and t's exact git_push both govern git_push; observe documents grant nothing.
		{"git_push", []string{"GITHUB_TOKEN", "SIGNING_KEY"}},
		{"git_status", []string{"GITHUB_TOKEN"}},
		{"deploy", []string{"DEPLOY_KEY", "GITHUB_TOKEN"}},
		// t's "*" is allow: false, g's "*" grants nothing.
		{"shell", nil},
	} {
		if got := st.ToolSecrets(tc.tool); !slices.Equal(got, tc.want) {
			t.Errorf("ToolSecrets(%q) = %v, want %v", tc.tool, got, tc.want)
		}
	}
}

func TestToolSecretsValidation(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{`{allow: true, secrets: [github_token]}`, `spec.tools[t].secrets[0]: invalid secret name "github_token"`},
		{`{allow: true, secrets: [A, A]}`, `spec.tools[t].secrets[1]: duplicate secret "A"`},
		{`{allow: true, secrets: A}`, `spec.tools[t].secrets:`},
		{`{allow: false, secrets: [A]}`, `spec.tools[t].secrets: has no effect when allow is false`},
	} {
		_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "tools:\n  t: "+tc.entry)))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.entry, err, tc.want)
		}
	}
}
