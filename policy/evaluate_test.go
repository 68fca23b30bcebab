package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

const eng = "{level: team, org: acme, team: eng}"

func TestToolsSection(t *testing.T) {
	s := mustCompile(t, mustParse(t, "tools", eng, `
tools:
  git_status: {allow: true}
  "git_*": {allow: true, limit_per_hour: 10}
  "git_p*": {allow: false}
  "*": {allow: false}
`))
	check(t, s, toolCall(coder, "git_status", ""), expect{action.Allow, "tools/tools[git_status]"})
	r := check(t, s, toolCall(coder, "git_commit", ""), expect{action.Allow, "tools/tools[git_*]"})
	if r.ToolLimitPerHour != 10 {
		t.Errorf("limit = %d, want 10", r.ToolLimitPerHour)
	}
	// The more specific glob wins regardless of document order.
	check(t, s, toolCall(coder, "git_push", ""), expect{action.Deny, "tools/tools[git_p*]"})
	check(t, s, toolCall(coder, "curl", ""), expect{action.Deny, "tools/tools[*]"})
	// Tools only govern tool calls; other kinds fall to the default.
	check(t, s, netCall(coder, "git_status", 443), expect{action.Deny, "tools/default"})
}

func TestToolsUnlistedFallsThrough(t *testing.T) {
	s := mustCompile(t, mustParse(t, "tools", eng, "default: allow\ntools:\n  rm: {allow: false}"))
	check(t, s, toolCall(coder, "ls", ""), expect{action.Allow, "tools/default"})
	check(t, s, toolCall(coder, "rm", ""), expect{action.Deny, "tools/tools[rm]"})
}

func TestNetworkSection(t *testing.T) {
	s := mustCompile(t, mustParse(t, "net", eng, `
default: allow
network:
  allowlist:
    - host: api.openai.com
    - host: "*.github.com"
      ports: [443]
    - cidr: 10.0.0.0/8
      ports: [5432]
    - cidr: "2001:db8::/32"
    - host: 192.168.1.10
      ports: [22]
    - host: "*.github.com"
      ports: [22]
`))
	for _, tc := range []struct {
		host string
		port uint32
		want expect
	}{
		{"api.openai.com", 80, expect{action.Allow, "net/network.allowlist[0]"}},
		{"API.OpenAI.com.", 443, expect{action.Allow, "net/network.allowlist[0]"}},
		{"raw.github.com", 443, expect{action.Allow, "net/network.allowlist[1]"}},
		{"a.b.github.com", 443, expect{action.Allow, "net/network.allowlist[1]"}},
		{"a.b.github.com", 22, expect{action.Allow, "net/network.allowlist[5]"}},
		{"github.com", 443, expect{action.Deny, "net/network.allowlist"}},
		{"raw.github.com", 80, expect{action.Deny, "net/network.allowlist"}},
		{"evilgithub.com", 443, expect{action.Deny, "net/network.allowlist"}},
		{"10.1.2.3", 5432, expect{action.Allow, "net/network.allowlist[2]"}},
		{"10.1.2.3", 80, expect{action.Deny, "net/network.allowlist"}},
		{"11.0.0.1", 5432, expect{action.Deny, "net/network.allowlist"}},
		{"2001:db8::1", 443, expect{action.Allow, "net/network.allowlist[3]"}},
		{"2001:db9::1", 443, expect{action.Deny, "net/network.allowlist"}},
		{"192.168.1.10", 22, expect{action.Allow, "net/network.allowlist[4]"}},
		{"::ffff:192.168.1.10", 22, expect{action.Allow, "net/network.allowlist[4]"}},
		{"192.168.1.11", 22, expect{action.Deny, "net/network.allowlist"}},
		{"", 443, expect{action.Deny, "net/network.allowlist"}},
	} {
		check(t, s, netCall(coder, tc.host, tc.port), tc.want)
	}
	// The allowlist only concerns network calls.
	check(t, s, toolCall(coder, "evil.com", ""), expect{action.Allow, "net/default"})
}

func TestNetworkAnyHostAndEmptyList(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "any443", eng, "network:\n  allowlist:\n    - host: \"*\"\n      ports: [443]"),
	)
	check(t, s, netCall(coder, "example.org", 443), expect{action.Allow, "any443/network.allowlist[0]"})
	check(t, s, netCall(coder, "10.0.0.1", 443), expect{action.Allow, "any443/network.allowlist[0]"})
	check(t, s, netCall(coder, "example.org", 80), expect{action.Deny, "any443/network.allowlist"})

	none := mustCompile(t, mustParse(t, "none", eng, "default: allow\nnetwork:\n  allowlist: []"))
	check(t, none, netCall(coder, "example.org", 443), expect{action.Deny, "none/network.allowlist"})
	// Without an allowlist key the section has no opinion on destinations.
	open := mustCompile(t, mustParse(t, "open", eng, "default: allow\nnetwork:\n  enforcement: redirect"))
	check(t, open, netCall(coder, "example.org", 443), expect{action.Allow, "open/default"})
}

func TestFilesystemSection(t *testing.T) {
	s := mustCompile(t, mustParse(t, "fs", eng, `
default: allow
filesystem:
  read: ["/workspace/**"]
  write: ["/workspace/out/**", "/tmp/*.log"]
  deny: ["**/.env", "~/.ssh/**"]
`))
	for _, tc := range []struct {
		op, path string
		want     expect
	}{
		{"read", "/workspace/a/b.go", expect{action.Allow, "fs/filesystem.read[0]"}},
		{"list", "/workspace", expect{action.Allow, "fs/filesystem.read[0]"}},
		{"read", "/workspace/../etc/passwd", expect{action.Deny, "fs/filesystem.read"}},
		{"read", "/etc/passwd", expect{action.Deny, "fs/filesystem.read"}},
		{"write", "/workspace/a.go", expect{action.Deny, "fs/filesystem.write"}},
		{"write", "/workspace/out/x/y", expect{action.Allow, "fs/filesystem.write[0]"}},
		{"delete", "/workspace/out/x", expect{action.Allow, "fs/filesystem.write[0]"}},
		{"chmod", "/workspace/a.go", expect{action.Deny, "fs/filesystem.write"}},
		{"write", "/tmp/a.log", expect{action.Allow, "fs/filesystem.write[1]"}},
		{"write", "/tmp/x/a.log", expect{action.Deny, "fs/filesystem.write"}},
		{"read", "/workspace/.env", expect{action.Deny, "fs/filesystem.deny[0]"}},
		{"read", ".env", expect{action.Deny, "fs/filesystem.deny[0]"}},
		{"write", "/workspace/out/.env", expect{action.Deny, "fs/filesystem.deny[0]"}},
		{"read", "/home/alice/.ssh/id_ed25519", expect{action.Deny, "fs/filesystem.deny[1]"}},
		{"read", "/root/.ssh/config", expect{action.Deny, "fs/filesystem.deny[1]"}},
	} {
		check(t, s, fileOp(coder, tc.op, tc.path), tc.want)
	}
	denyOnly := mustCompile(t, mustParse(t, "fsdeny", eng, "default: allow\nfilesystem:\n  deny: [\"/etc/**\"]"))
	check(t, denyOnly, fileOp(coder, "read", "/tmp/x"), expect{action.Allow, "fsdeny/default"})
	check(t, denyOnly, fileOp(coder, "read", "/etc/hosts"), expect{action.Deny, "fsdeny/filesystem.deny[0]"})
}

func TestProcessSection(t *testing.T) {
	s := mustCompile(t, mustParse(t, "proc", eng, `
process:
  allow: [git, go, "python3*", curl]
  deny: [curl, "/usr/bin/wget"]
rules:
  - id: allow-curl
    match: {action: process_exec, name: curl}
    decision: allow
  - id: really-allow-wget
    priority: 2000
    match: {action: process_exec, name: /usr/bin/wget}
    decision: allow
`))
	check(t, s, execCall(coder, "/usr/bin/git", "status"), expect{action.Allow, "proc/process.allow[0]"})
	check(t, s, execCall(coder, "python3.12"), expect{action.Allow, "proc/process.allow[2]"})
	// process.deny outranks both process.allow and an explicit rule at the default priority...
	check(t, s, execCall(coder, "curl"), expect{action.Deny, "proc/process.deny[0]"})
	check(t, s, execCall(coder, "/usr/local/bin/curl"), expect{action.Deny, "proc/process.deny[0]"})
	// ...but not an explicit rule above RestrictivePriority.
	check(t, s, execCall(coder, "/usr/bin/wget"), expect{action.Allow, "proc/really-allow-wget"})
	// A glob with '/' matches the full path only.
	check(t, s, execCall(coder, "/opt/wget"), expect{action.Deny, "proc/process.allow"})
	check(t, s, execCall(coder, "rm", "-rf", "/"), expect{action.Deny, "proc/process.allow"})
}

func TestLLMSection(t *testing.T) {
	s := mustCompile(t, mustParse(t, "llm", eng, `
llm: {providers: [openai, anthropic], models: ["gpt-4o*", "claude-*"]}
`))
	check(t, s, llmCall(coder, "openai", "gpt-4o-mini"), expect{action.Allow, "llm/llm"})
	check(t, s, llmCall(coder, "OpenAI", "gpt-4o"), expect{action.Allow, "llm/llm"})
	check(t, s, llmCall(coder, "google", "gemini-pro"), expect{action.Deny, "llm/llm.providers"})
	check(t, s, llmCall(coder, "openai", "gpt-3.5-turbo"), expect{action.Deny, "llm/llm.models"})
	models := mustCompile(t, mustParse(t, "models", eng, "llm: {models: [\"claude-*\"]}"))
	check(t, models, llmCall(coder, "anyone", "claude-3"), expect{action.Allow, "models/llm"})
}

func TestCapabilities(t *testing.T) {
	s := mustCompile(t, mustParse(t, "caps", eng, `
default: allow
capabilities: [tool_call, llm_call]
rules:
  - id: net-at-default-priority
    match: {action: network_call, name: ok.example.com}
    decision: allow
  - id: net-above-restrictive
    priority: 1001
    match: {action: network_call, name: override.example.com}
    decision: allow
`))
	check(t, s, toolCall(coder, "x", ""), expect{action.Allow, "caps/default"})
	check(t, s, netCall(coder, "ok.example.com", 443), expect{action.Deny, "caps/capabilities"})
	check(t, s, netCall(coder, "override.example.com", 443), expect{action.Allow, "caps/net-above-restrictive"})
	check(t, s, fileOp(coder, "read", "/x"), expect{action.Deny, "caps/capabilities"})
}

func TestSchedule(t *testing.T) {
	s := mustCompile(t, mustParse(t, "sched", eng, `
default: allow
schedule:
  timezone: Europe/Berlin
  active_hours:
    - {days: [mon, tue, wed, thu, fri], start: "08:00", end: "18:00"}
    - {days: [sat], start: "22:00", end: "02:00"}
`))
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at   time.Time
		want expect
	}{
		{time.Date(2025, 1, 15, 9, 0, 0, 0, berlin), expect{action.Allow, "sched/default"}},     // Wednesday
		{time.Date(2025, 1, 15, 7, 59, 0, 0, berlin), expect{action.Deny, "sched/schedule"}},    // too early
		{time.Date(2025, 1, 15, 18, 0, 0, 0, berlin), expect{action.Deny, "sched/schedule"}},    // end is exclusive
		{time.Date(2025, 1, 15, 16, 30, 0, 0, time.UTC), expect{action.Allow, "sched/default"}}, // 17:30 Berlin
		{time.Date(2025, 1, 18, 23, 0, 0, 0, berlin), expect{action.Allow, "sched/default"}},    // Saturday night
		{time.Date(2025, 1, 19, 1, 30, 0, 0, berlin), expect{action.Allow, "sched/default"}},    // ...into Sunday
		{time.Date(2025, 1, 19, 2, 0, 0, 0, berlin), expect{action.Deny, "sched/schedule"}},
		{time.Date(2025, 1, 18, 12, 0, 0, 0, berlin), expect{action.Deny, "sched/schedule"}}, // Saturday noon
	} {
		a := toolCall(coder, "x", "")
		a.Time = tc.at
		t.Run(tc.at.Format(time.RFC3339), func(t *testing.T) { check(t, s, a, tc.want) })
	}
}

func TestRulePriorityAndTies(t *testing.T) {
	s := mustCompile(t, mustParse(t, "prio", eng, `
default: allow
rules:
  - id: first-deny
    match: {name: foo}
    decision: deny
  - id: second-allow
    match: {name: foo}
    decision: allow
  - id: high-pending
    priority: 10
    match: {name: "f*"}
    decision: pending
  - id: low-redact
    priority: -5
    match: {action: tool_call}
    decision: redact
  - id: glob-5
    priority: 5
    match: {name: "x*"}
    decision: deny
  - id: literal-7
    priority: 7
    match: {name: xy}
    decision: allow
  - id: literal-3
    priority: 3
    match: {name: xz}
    decision: allow
  - id: admin
    match: {action: network_call, resource: "/admin/**"}
    decision: deny
`))
	check(t, s, toolCall(coder, "foo", ""), expect{action.Pending, "prio/high-pending"})
	check(t, s, netCall(coder, "foo", 443), expect{action.Pending, "prio/high-pending"})
	check(t, s, toolCall(coder, "bar", ""), expect{action.Redact, "prio/low-redact"})
	check(t, s, toolCall(coder, "xy", ""), expect{action.Allow, "prio/literal-7"})
	check(t, s, toolCall(coder, "xz", ""), expect{action.Deny, "prio/glob-5"})
	a := netCall(coder, "bar", 443)
	a.Network.Path = "/admin/users"
	check(t, s, a, expect{action.Deny, "prio/admin"})
	check(t, s, netCall(coder, "bar", 443), expect{action.Allow, "prio/default"})

	ties := mustCompile(t, mustParse(t, "ties", eng, `
rules:
  - id: a
    match: {name: foo}
    decision: deny
  - id: b
    match: {name: foo}
    decision: allow
`))
	check(t, ties, toolCall(coder, "foo", ""), expect{action.Deny, "ties/a"})
}

func TestExplicitRulesBeforeSectionsAtEqualPriority(t *testing.T) {
	s := mustCompile(t, mustParse(t, "order", eng, `
tools:
  "*": {allow: true}
network:
  allowlist: [{host: "*.prod.internal"}]
rules:
  - id: no-db-tool
    match: {action: tool_call, name: db_query}
    decision: deny
  - id: no-prod-db
    priority: 100
    match: {action: network_call, name: "*.prod.internal"}
    decision: deny
  - id: after-sections
    priority: -1
    match: {action: tool_call}
    decision: deny
`))
	check(t, s, toolCall(coder, "db_query", ""), expect{action.Deny, "order/no-db-tool"})
	check(t, s, toolCall(coder, "ls", ""), expect{action.Allow, "order/tools[*]"})
	check(t, s, netCall(coder, "db.prod.internal", 5432), expect{action.Deny, "order/no-prod-db"})
}

func TestDefaults(t *testing.T) {
	s := mustCompile(t, mustParse(t, "empty", eng, ""))
	r := check(t, s, toolCall(coder, "x", ""), expect{action.Deny, "empty/default"})
	if r.Reason != `no rule of policy "empty" matched; its default is deny` || r.Policy != "empty" || r.PolicyVersion != "test-v1" {
		t.Errorf("result = %+v", r)
	}
	allow := mustCompile(t, mustParse(t, "open", eng, "default: allow"))
	check(t, allow, fileOp(coder, "write", "/x"), expect{action.Allow, "open/default"})
}

func TestCascade(t *testing.T) {
	global := mustParse(t, "global", "{level: global}", "default: allow")
	org := mustParse(t, "org", "{level: org, org: acme}", `
default: allow
rules:
  - {id: org-pending, match: {name: needs-approval}, decision: pending}
  - {id: org-redact, match: {name: redacted}, decision: redact}
`)
	team := mustParse(t, "team", eng, `
default: allow
rules:
  - {id: team-deny, match: {name: forbidden}, decision: deny}
  - {id: team-redact, match: {name: needs-approval}, decision: redact}
`)
	agent := mustParse(t, "agent", "{level: agent, org: acme, agent: coder-1}", `
default: allow
rules:
  - {id: agent-allow, match: {name: forbidden}, decision: allow}
`)
	otherOrg := mustParse(t, "other-org", "{level: org, org: globex}", "")
	otherTeam := mustParse(t, "other-team", "{level: team, org: acme, team: sales}", "")
	wrongOrgAgent := mustParse(t, "wrong-org-agent", "{level: agent, org: globex, agent: coder-1}", "")
	tool := mustParse(t, "db-tools", "{level: tool, tool: \"db_*\"}", `
default: allow
rules:
  - {id: no-drop, match: {action: tool_call}, when: "true", decision: pending}
`)
	s := mustCompile(t, global, org, team, agent, otherOrg, otherTeam, wrongOrgAgent, tool)

	// Most restrictive wins across levels; an agent-level allow cannot undo a team deny.
	check(t, s, toolCall(coder, "forbidden", ""), expect{action.Deny, "team/team-deny"})
	// pending (org) beats redact (team).
	r := check(t, s, toolCall(coder, "needs-approval", ""), expect{action.Pending, "org/org-pending"})
	if !r.RequiresApproval || r.Mode != action.ModeEnforce || r.Policy != "org" {
		t.Errorf("result = %+v", r)
	}
	check(t, s, toolCall(coder, "redacted", ""), expect{action.Redact, "org/org-redact"})
	// On ties the most specific document is reported.
	check(t, s, toolCall(coder, "ls", ""), expect{action.Allow, "agent/default"})
	// Other orgs' and teams' documents do not apply.
	check(t, s, toolCall(action.AgentID{Org: "acme", Team: "sales", Agent: "s1"}, "ls", ""), expect{action.Deny, "other-team/default"})
	check(t, s, toolCall(action.AgentID{Org: "globex", Team: "eng", Agent: "g1"}, "ls", ""), expect{action.Deny, "other-org/default"})
	// An agent document pinned to another org does not apply to a namesake.
	check(t, s, toolCall(coder, "ls", ""), expect{action.Allow, "agent/default"})
	check(t, s, toolCall(action.AgentID{Org: "globex", Agent: "coder-1"}, "ls", ""), expect{action.Deny, "wrong-org-agent/default"})
	// Tool documents apply to matching tool calls only (fail-closed CEL or
	// true: pending either way).
	check(t, s, toolCall(coder, "db_query", ""), expect{action.Pending, "db-tools/no-drop"})
	check(t, s, netCall(coder, "db_query", 1), expect{action.Allow, "agent/default"})
}

func TestCascadeModes(t *testing.T) {
	global := mustParse(t, "global", "{level: global}", "default: allow")
	observe := mustParse(t, "observed", eng, "enforcement_mode: observe\nrules:\n  - {id: would-deny, match: {name: risky}, decision: deny}\ndefault: allow")
	disabled := mustParse(t, "off", eng, "enforcement_mode: disabled\ndefault: deny")
	s := mustCompile(t, global, observe, disabled)

	r := check(t, s, toolCall(coder, "risky", ""), expect{action.Allow, "global/default"})
	if r.Mode != action.ModeEnforce || r.ShadowDecision != action.Deny || r.ShadowRuleID != "observed/would-deny" || r.ShadowPolicy != "observed" {
		t.Errorf("result = %+v", r)
	}
	r = check(t, s, toolCall(coder, "safe", ""), expect{action.Allow, "global/default"})
	if r.ShadowDecision != action.Allow || r.ShadowRuleID != "observed/default" {
		t.Errorf("shadow of an allowed action = %+v", r)
	}

	// Only observe documents apply: allowed in observe mode, the would-be
	// decision reported as shadow.
	only := mustCompile(t, observe, disabled)
	r = check(t, only, toolCall(coder, "risky", ""), expect{action.Allow, "observe"})
	if r.Mode != action.ModeObserve || r.ShadowDecision != action.Deny || r.ShadowRuleID != "observed/would-deny" {
		t.Errorf("observe-only result = %+v", r)
	}

	// Nothing applies (disabled documents do not count): deny.
	none := mustCompile(t, disabled)
	r = check(t, none, toolCall(coder, "x", ""), expect{action.Deny, "unattributed"})
	if r.Reason != reasonUnattributed || r.ShadowDecision != action.DecisionUnspecified || r.Mode != action.ModeEnforce {
		t.Errorf("nothing-applies result = %+v", r)
	}
	empty := mustCompile(t)
	check(t, empty, toolCall(action.AgentID{}, "x", ""), expect{action.Deny, "unattributed"})
	// Without a global document an unknown agent gets nothing: deny.
	teamOnly := mustCompile(t, observe)
	check(t, teamOnly, toolCall(action.AgentID{Org: "acme", Team: "unknown", Agent: "x"}, "x", ""), expect{action.Deny, "unattributed"})
	// A global document may let unattributed agents through to its own rules;
	// then, with nothing enforcing, the decision falls to "default".
	open := mustCompile(t, mustParse(t, "g", "{level: global}", "enforcement_mode: disabled\nunattributed: allow"))
	check(t, open, toolCall(action.AgentID{Org: "x", Team: "y", Agent: "z"}, "x", ""), expect{action.Deny, "default"})
}

func TestUnattributed(t *testing.T) {
	base := func(u string) *Document {
		return mustParse(t, "g"+u, "{level: global}", "default: allow\nunattributed: "+u)
	}
	stranger := action.AgentID{Org: "globex", Team: "x", Agent: "y"}
	team := mustParse(t, "eng", eng, "default: allow")
	// Default: only global applies -> deny by "unattributed"; an attributed agent is judged normally.
	s := mustCompile(t, mustParse(t, "g", "{level: global}", "default: allow"), team)
	check(t, s, toolCall(stranger, "x", ""), expect{action.Deny, "unattributed"})
	check(t, s, toolCall(coder, "x", ""), expect{action.Allow, "eng/default"})
	// unattributed: allow lets the global documents decide.
	check(t, mustCompile(t, base("allow"), team), toolCall(stranger, "x", ""), expect{action.Allow, "gallow/default"})
	// Any global deny wins over an allow.
	check(t, mustCompile(t, base("allow"), base("deny"), team), toolCall(stranger, "x", ""), expect{action.Deny, "unattributed"})
	// Only global documents may set it.
	_, err := Parse("x.yaml", []byte(policyYAML("x", eng, "unattributed: allow")))
	if err == nil || !strings.Contains(err.Error(), "spec.unattributed: only a global document may set it") {
		t.Fatalf("team document with unattributed: %v", err)
	}
}

func TestInvalidActions(t *testing.T) {
	s := mustCompile(t, mustParse(t, "g", "{level: global}", "default: allow"))
	for _, a := range []*action.Action{nil, {Agent: coder}, {Agent: coder, Kind: 200}} {
		r := s.Evaluate(Input{Action: a})
		if r.Decision != action.Deny || r.RuleID != "invalid-action" {
			t.Errorf("%v: %+v", a, r)
		}
	}
}

func TestToolLimitIsTightestEnforced(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "g", "{level: global}", "tools:\n  \"*\": {allow: true, limit_per_hour: 100}"),
		mustParse(t, "t", eng, "tools:\n  \"shell_*\": {allow: true, limit_per_hour: 30}"),
		mustParse(t, "o", "{level: org, org: acme}", "enforcement_mode: observe\ntools:\n  \"*\": {allow: true, limit_per_hour: 1}"),
	)
	r := check(t, s, toolCall(coder, "shell_exec", ""), expect{action.Allow, "t/tools[shell_*]"})
	if r.ToolLimitPerHour != 30 {
		t.Errorf("limit = %d, want 30 (observe documents do not count)", r.ToolLimitPerHour)
	}
}

// TestCELFailClosed uses a condition that fails at run time with and
// without CEL compiled in: a missing map key.
func TestCELFailClosed(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "deny-rule", eng, `
default: allow
rules:
  - {id: broken-deny, match: {name: x}, when: "action.nosuchkey == 'y'", decision: deny}
`),
		mustParse(t, "allow-rule", "{level: agent, agent: coder-1}", `
rules:
  - {id: broken-allow, match: {name: y}, when: "action.nosuchkey == 'y'", decision: allow}
  - {id: plain-allow, match: {name: x}, decision: allow}
  - {id: plain-allow-z, match: {name: z}, decision: allow}
`),
		mustParse(t, "approval", "{level: tool, tool: z}", `
default: allow
tools:
  z: {allow: true, requires_approval_if: "args.nosuchkey == 'y'"}
`),
	)
	before := s.CELErrors()
	check(t, s, toolCall(coder, "x", ""), expect{action.Deny, "deny-rule/broken-deny"})
	check(t, s, toolCall(coder, "y", ""), expect{action.Deny, "allow-rule/default"})
	r := check(t, s, toolCall(coder, "z", `{"other": 1}`), expect{action.Pending, "approval/tools[z]"})
	if !r.RequiresApproval {
		t.Error("RequiresApproval = false")
	}
	if got := s.CELErrors() - before; got != 3 {
		t.Errorf("CELErrors grew by %d, want 3", got)
	}
	_, trace := s.Explain(Input{Action: toolCall(coder, "x", "")})
	if !containsStep(trace, "deny-rule/broken-deny", "fail-closed: treated as true") {
		t.Errorf("trace does not report the CEL failure:\n%s", traceString(trace))
	}
}

func TestExplain(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "g", "{level: global}", "default: allow\nunattributed: allow\nrules:\n  - {id: git-only, match: {action: tool_call, name: \"git_*\"}, decision: allow}"),
		mustParse(t, "off", eng, "enforcement_mode: disabled"),
		mustParse(t, "other", "{level: agent, org: globex, agent: coder-1}", ""),
	)
	r, trace := s.Explain(Input{Action: toolCall(coder, "curl", "")})
	if r != s.Evaluate(Input{Action: toolCall(coder, "curl", "")}) {
		t.Errorf("Explain and Evaluate disagree: %+v", r)
	}
	for _, want := range []struct{ rule, detail string }{
		{"", "applies (global, mode enforce)"},
		{"g/git-only", `name glob "git_*" did not match "curl"`},
		{"g/default", "no rule matched: default allow"},
		{"", "applies (team acme/eng) but is disabled: skipped"},
		{"", "does not apply: agent globex/coder-1 does not match agent acme/eng/coder-1"},
		{"g/default", "enforced decision allow (mode enforce) by g/default"},
	} {
		if !containsStep(trace, want.rule, want.detail) {
			t.Errorf("trace lacks %q %q:\n%s", want.rule, want.detail, traceString(trace))
		}
	}
}

func containsStep(trace []TraceStep, rule, detail string) bool {
	for _, st := range trace {
		if st.RuleID == rule && strings.Contains(st.Detail, detail) {
			return true
		}
	}
	return false
}

func traceString(trace []TraceStep) string {
	var b strings.Builder
	for _, st := range trace {
		b.WriteString("  " + st.String() + "\n")
	}
	return b.String()
}

func TestSettings(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "g", "{level: global}", `
data: {sensitive_patterns: [{name: a, regex: "A+"}], credential_action: alert_only}
approval: {timeout: 10m, escalation_role: oncall}
network:
  enforcement: redirect
  allowlist:
    - host: api.openai.com
      inject: {header: Authorization, value: "Bearer ${OPENAI}"}
budget: {monthly_usd: 1000, per: org}
`),
		mustParse(t, "t", eng, `
data: {sensitive_patterns: [{name: a, regex: "A+"}, {name: b, regex: "B+"}], credential_action: block}
approval: {timeout: 2m}
network: {enforcement: deny, allowlist: []}
budget: {daily_usd: 5}
`),
		mustParse(t, "obs", "{level: agent, agent: coder-1}", "enforcement_mode: observe\ndata: {credential_action: alert_only}\nbudget: {daily_usd: 1}"),
		mustParse(t, "off", "{level: agent, agent: coder-1}", "enforcement_mode: disabled\nbudget: {daily_usd: 0.5}"),
	)
	st := s.Settings(coder)
	if len(st.Documents) != 3 || st.Documents[0].Name() != "g" || st.Documents[2].Name() != "obs" {
		t.Errorf("documents = %v", st.Documents)
	}
	if len(st.Budgets) != 3 || st.Budgets[0].Budget.Per != BudgetPerOrg || st.Budgets[1].Budget.DailyUSD != 5 || st.Budgets[2].Mode != action.ModeObserve {
		t.Errorf("budgets = %+v", st.Budgets)
	}
	if len(st.SensitivePatterns) != 2 || st.CredentialAction != CredentialBlock {
		t.Errorf("data = %+v %q", st.SensitivePatterns, st.CredentialAction)
	}
	if st.Approval != (ApprovalSpec{Timeout: 2 * time.Minute, EscalationRole: "oncall"}) {
		t.Errorf("approval = %+v", st.Approval)
	}
	if st.NetworkEnforcement != NetworkDeny {
		t.Errorf("network enforcement = %q", st.NetworkEnforcement)
	}
	if len(st.Injections) != 1 || st.Injections[0].Policy != "g" || st.Injections[0].Entry.Inject.SecretRefs[0] != "OPENAI" {
		t.Errorf("injections = %+v", st.Injections)
	}
	if got := s.ApplicableDocuments(coder); len(got) != 4 {
		t.Errorf("ApplicableDocuments = %d documents, want 4 (disabled included)", len(got))
	}
	if docs := s.Documents(); len(docs) != 4 || docs[0].Name() != "g" || s.Version() != "test-v1" {
		t.Errorf("Documents/Version = %v %q", docs, s.Version())
	}
}

func TestTieReportsTheMostInformativeRule(t *testing.T) {
	s := mustCompile(t,
		mustParse(t, "g", "{level: global}", `
default: allow
rules:
  - {id: no-metadata, match: {action: network_call, name: 169.254.169.254}, decision: deny}
`),
		mustParse(t, "t", eng, "network:\n  allowlist: [{host: example.com}]"),
	)
	// Both deny; the explicit rule is reported, not the allowlist miss.
	check(t, s, netCall(coder, "169.254.169.254", 80), expect{action.Deny, "g/no-metadata"})
	// An allowlist miss is reported over a document default, even of a
	// more specific document.
	s = mustCompile(t,
		mustParse(t, "o", "{level: org, org: acme}", "network:\n  allowlist: [{host: example.com}]"),
		mustParse(t, "t", eng, ""),
	)
	check(t, s, netCall(coder, "other.com", 80), expect{action.Deny, "o/network.allowlist"})
	check(t, s, toolCall(coder, "x", ""), expect{action.Deny, "t/default"})
}
