package policy

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// TestInvalidFixtures parses every testdata/invalid/*.yaml and compares the
// complete error text with the .err golden file beside it.
func TestInvalidFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(f, data)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.File != f {
				t.Fatalf("error %v is not a *ValidationError for %s", err, f)
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".err"
			got := err.Error() + "\n"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestInvalidFixtures -update)", err)
			}
			if got != string(want) {
				t.Errorf("error mismatch\ngot:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestValidationErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    ValidationError
		want string
	}{
		{ValidationError{File: "x.yaml", Line: 12, Column: 7, Field: "spec.network.allowlist[1].cidr", Msg: `invalid CIDR "10.0.0/8"`}, `x.yaml:12:7: spec.network.allowlist[1].cidr: invalid CIDR "10.0.0/8"`},
		{ValidationError{File: "x.yaml", Line: 3, Msg: "invalid YAML: oops"}, "x.yaml:3: invalid YAML: oops"},
		{ValidationError{File: "x.yaml", Msg: "m"}, "x.yaml: m"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	errs := Errors{{File: "a", Line: 1, Column: 1, Msg: "one"}, {File: "a", Line: 2, Column: 1, Msg: "two"}}
	var ve *ValidationError
	if !errors.As(error(errs), &ve) || ve.Msg != "one" {
		t.Errorf("errors.As did not find the first error: %v", ve)
	}
	if got := errs.Error(); got != "a:1:1: one\na:2:1: two" {
		t.Errorf("Errors.Error() = %q", got)
	}
}

func TestEmptyCEL(t *testing.T) {
	_, err := Parse("x.yaml", []byte(policyYAML("x", "{level: global}", "rules:\n  - id: r\n    when: \"  \"\n    decision: deny")))
	if err == nil || !strings.Contains(err.Error(), "x.yaml:9:13: spec.rules[0].when: empty CEL expression") {
		t.Fatalf("got %v", err)
	}
}

// TestParseAllSections checks that every section is exposed as documented.
func TestParseAllSections(t *testing.T) {
	d := mustParse(t, "full", "{level: agent, org: acme, agent: coder-1}", `
enforcement_mode: observe
default: allow
network:
  allowlist:
    - host: API.OpenAI.com.
      inject: {header: Authorization, value: "Bearer ${OPENAI_KEY} ${ORG_ID}"}
    - host: "*.github.com"
      ports: [443]
    - cidr: 10.0.0.0/8
      ports: [5432]
    - cidr: "2001:db8::/32"
  enforcement: redirect
tools:
  git_status: {allow: true}
  "shell_*": {allow: true, limit_per_hour: 30, requires_approval_if: "args.command.startsWith('rm')"}
  "*": {allow: false}
capabilities: [llm_call, tool_call, network_call]
filesystem: {read: ["/workspace/**"], write: ["/workspace/out/**"], deny: ["**/.env", "~/.ssh/**"]}
process: {allow: [git, go], deny: [curl]}
llm: {providers: [OpenAI, anthropic], models: ["gpt-4o*", "claude-*"]}
schedule:
  timezone: Europe/Berlin
  active_hours:
    - {days: [mon, tue], start: "08:00", end: "18:00"}
    - {start: "22:00", end: "02:00"}
budget: {daily_usd: 50, monthly_usd: 1000.5, per: team, timezone: Europe/Berlin, action_on_exceed: suspend}
data:
  sensitive_patterns: [{name: internal_id, regex: "ACME-[0-9]{6}"}]
  credential_action: redact_only
approval: {timeout: 5m, escalation_role: security-oncall}
rules:
  - id: no-prod-db
    priority: 100
    match: {action: [network_call, tool_call], name: "*.prod.internal", resource: "/admin/**"}
    when: 'agent.labels["env"] != "prod"'
    decision: deny
    reason: no prod
  - id: any
    match: {action: "*"}
    decision: redact
`)
	s := d.Spec
	if d.Name() != "full" || d.Source != "full.yaml" {
		t.Errorf("name/source = %q/%q", d.Name(), d.Source)
	}
	if s.Scope != (Scope{Level: ScopeAgent, Org: "acme", Agent: "coder-1"}) {
		t.Errorf("scope = %+v", s.Scope)
	}
	if s.EnforcementMode != action.ModeObserve || s.Default != action.Allow {
		t.Errorf("mode/default = %s/%s", s.EnforcementMode, s.Default)
	}
	wantNet := &NetworkSpec{Enforcement: NetworkRedirect, Allowlist: []NetworkEntry{
		{Host: "api.openai.com", Inject: &Inject{Header: "Authorization", Value: "Bearer ${OPENAI_KEY} ${ORG_ID}", SecretRefs: []string{"OPENAI_KEY", "ORG_ID"}}},
		{Host: "*.github.com", Ports: []uint16{443}},
		{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Ports: []uint16{5432}},
		{CIDR: netip.MustParsePrefix("2001:db8::/32")},
	}}
	if !reflect.DeepEqual(s.Network, wantNet) {
		t.Errorf("network = %+v", s.Network)
	}
	wantTools := []ToolEntry{
		{Pattern: "git_status", Allow: true},
		{Pattern: "shell_*", Allow: true, LimitPerHour: 30, RequiresApprovalIf: "args.command.startsWith('rm')"},
		{Pattern: "*"},
	}
	if !reflect.DeepEqual(s.Tools, wantTools) {
		t.Errorf("tools = %+v", s.Tools)
	}
	if !reflect.DeepEqual(s.Capabilities, []action.Kind{action.KindLLMCall, action.KindToolCall, action.KindNetworkCall}) {
		t.Errorf("capabilities = %v", s.Capabilities)
	}
	if !reflect.DeepEqual(s.Filesystem, &FilesystemSpec{Read: []string{"/workspace/**"}, Write: []string{"/workspace/out/**"}, Deny: []string{"**/.env", "~/.ssh/**"}}) {
		t.Errorf("filesystem = %+v", s.Filesystem)
	}
	if !reflect.DeepEqual(s.Process, &ProcessSpec{Allow: []string{"git", "go"}, Deny: []string{"curl"}}) {
		t.Errorf("process = %+v", s.Process)
	}
	if !reflect.DeepEqual(s.LLM, &LLMSpec{Providers: []string{"openai", "anthropic"}, Models: []string{"gpt-4o*", "claude-*"}}) {
		t.Errorf("llm = %+v", s.LLM)
	}
	if s.Schedule.Timezone.String() != "Europe/Berlin" || !reflect.DeepEqual(s.Schedule.ActiveHours, []Window{
		{Days: []time.Weekday{time.Monday, time.Tuesday}, Start: 8 * 60, End: 18 * 60},
		{Start: 22 * 60, End: 2 * 60},
	}) {
		t.Errorf("schedule = %+v", s.Schedule)
	}
	b := s.Budget
	if b.DailyUSD != 50 || b.MonthlyUSD != 1000.5 || b.Per != BudgetPerTeam || b.Timezone.String() != "Europe/Berlin" || b.ActionOnExceed != BudgetSuspend {
		t.Errorf("budget = %+v", b)
	}
	if len(s.Data.SensitivePatterns) != 1 || s.Data.SensitivePatterns[0].Name != "internal_id" || !s.Data.SensitivePatterns[0].Regex.MatchString("ACME-123456") || s.Data.CredentialAction != CredentialRedactOnly {
		t.Errorf("data = %+v", s.Data)
	}
	if *s.Approval != (ApprovalSpec{Timeout: 5 * time.Minute, EscalationRole: "security-oncall"}) {
		t.Errorf("approval = %+v", s.Approval)
	}
	wantRules := []Rule{
		{ID: "no-prod-db", Priority: 100, Match: Match{Actions: []action.Kind{action.KindNetworkCall, action.KindToolCall}, Name: "*.prod.internal", Resource: "/admin/**"},
			When: `agent.labels["env"] != "prod"`, Decision: action.Deny, Reason: "no prod"},
		{ID: "any", Decision: action.Redact},
	}
	if !reflect.DeepEqual(s.Rules, wantRules) {
		t.Errorf("rules = %+v", s.Rules)
	}
}

func TestParseDefaults(t *testing.T) {
	d := mustParse(t, "min", "{level: global}", `
network:
  allowlist: []
budget: {daily_usd: 1}
data: {}
`)
	s := d.Spec
	if s.EnforcementMode != action.ModeEnforce || s.Default != action.Deny {
		t.Errorf("mode/default = %s/%s, want enforce/deny", s.EnforcementMode, s.Default)
	}
	if s.Network.Enforcement != NetworkDeny {
		t.Errorf("network enforcement = %q, want deny", s.Network.Enforcement)
	}
	if s.Budget.Per != BudgetPerAgent || s.Budget.ActionOnExceed != BudgetDeny || s.Budget.Timezone != time.UTC {
		t.Errorf("budget defaults = %+v", s.Budget)
	}
	if s.Data.CredentialAction != CredentialBlock {
		t.Errorf("credential_action default = %q, want block", s.Data.CredentialAction)
	}
	if s.Capabilities != nil || s.Tools != nil || s.Rules != nil {
		t.Errorf("absent sections must be nil: %+v", s)
	}
}

func TestLoadPath(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("b.yaml", policyYAML("b", "{level: global}", "default: allow"))
	write("a.yml", policyYAML("a", "{level: org, org: acme}", ""))
	write("README.md", "not a policy")
	write("c.yaml.bak", "not a policy")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Kubernetes ConfigMap volumes: the file is a symlink into ..data.
	target := filepath.Join(t.TempDir(), "real.yaml")
	if err := os.WriteFile(target, []byte(policyYAML("c-linked", "{level: org, org: globex}", "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "sub.yaml"), filepath.Join(dir, "dirlink.yaml")); err != nil {
		t.Fatal(err)
	}
	docs, err := LoadPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 3 || docs[0].Name() != "a" || docs[1].Name() != "b" || docs[2].Name() != "c-linked" {
		t.Fatalf("docs = %v", docs)
	}
	if docs[0].Source != filepath.Join(dir, "a.yml") {
		t.Errorf("source = %q", docs[0].Source)
	}
	one, err := LoadPath(filepath.Join(dir, "b.yaml"))
	if err != nil || len(one) != 1 {
		t.Fatalf("single file: %v %v", one, err)
	}

	if err := os.Remove(filepath.Join(dir, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	write("c.yaml", "apiVersion: agent-assembly/v1\n")
	write("d.yaml", policyYAML("d", "{level: team}", ""))
	_, err = LoadPath(dir)
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 5 {
		t.Fatalf("want 5 errors from two files, got %v", err)
	}
	if errs[0].File != filepath.Join(dir, "c.yaml") || errs[4].File != filepath.Join(dir, "d.yaml") {
		t.Errorf("errors not attributed per file:\n%v", err)
	}

	if _, err := LoadPath(filepath.Join(dir, "missing")); err == nil || !strings.HasPrefix(err.Error(), "load policies: ") {
		t.Errorf("missing path: %v", err)
	}
}

func TestCompileDuplicateNames(t *testing.T) {
	a := mustParse(t, "same", "{level: global}", "")
	b, err := Parse("other.yaml", []byte(policyYAML("same", "{level: org, org: acme}", "")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile([]*Document{a, b}, "v")
	if err == nil || err.Error() != `other.yaml:4:9: metadata.name: duplicate policy name "same" (also used by same.yaml:4)` {
		t.Fatalf("got %v", err)
	}
	if _, err := Compile([]*Document{{}}, "v"); err == nil {
		t.Fatal("a hand-built document must be rejected")
	}
}

func TestFingerprint(t *testing.T) {
	a := mustParse(t, "a", "{level: global}", "default: allow\ntools: {x: {allow: true}}")
	b := mustParse(t, "b", "{level: org, org: acme}", "")
	reformatted, err := Parse("elsewhere.yaml", []byte(`# comment
kind: Policy
apiVersion: agent-assembly/v1
spec:
  tools:
    x:
      allow: true
  default: allow
  scope:
    level: global
metadata: {name: a}
`))
	if err != nil {
		t.Fatal(err)
	}
	changed := mustParse(t, "a", "{level: global}", "default: deny\ntools: {x: {allow: true}}")
	fp := Fingerprint([]*Document{a, b})
	if len(fp) != 64 {
		t.Fatalf("fingerprint %q is not hex sha256", fp)
	}
	if got := Fingerprint([]*Document{b, reformatted}); got != fp {
		t.Errorf("order, formatting and comments changed the fingerprint")
	}
	if Fingerprint([]*Document{changed, b}) == fp {
		t.Errorf("a changed value kept the fingerprint")
	}
	if Fingerprint([]*Document{a}) == fp {
		t.Errorf("dropping a document kept the fingerprint")
	}
}
