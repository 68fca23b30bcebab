package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// startGateway runs a real gateway (memory store, example policies) on loopback.
func startGateway(t *testing.T) string {
	return servertest.Start(t, "../../examples/policies", servertest.AgentAuthOff)
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCheckExitCodes(t *testing.T) {
	addr := startGateway(t)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"allow", []string{"check", "--agent", "acme/eng/coder-1", "--tool", "git_status"}, exitAllow, "ALLOW"},
		{"allow network", []string{"check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org"}, exitAllow, "ALLOW"},
		{"deny", []string{"check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com"}, exitDeny, "DENY"},
		{"pending", []string{"check", "--agent", "acme/eng/coder-1", "--tool", "shell_exec", "--args", `{"command":"rm -rf /"}`}, exitPending, "PENDING"},
		{"exec args after --", []string{"check", "--agent", "acme/eng/coder-1", "--exec", "git", "--", "status", "--short"}, exitAllow, "ALLOW"},
		{"json request", []string{"check", "--json", `{"agent":{"org_id":"acme","team_id":"eng","agent_id":"coder-1"},"tool_call":{"name":"git_status"}}`}, exitAllow, "ALLOW"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, append([]string{"--addr", addr}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errOut)
			}
			if !strings.Contains(out, "RULE") || !strings.Contains(out, "DECISION ID") {
				t.Fatalf("table lacks rule or decision id:\n%s", out)
			}
		})
	}
}

func TestCheckJSONAndYAMLOutput(t *testing.T) {
	addr := startGateway(t)
	code, out, errOut := run(t, "--addr", addr, "-o", "json", "check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")
	var m map[string]any
	if code != exitDeny || json.Unmarshal([]byte(out), &m) != nil || m["decision"] != "DENY" || m["policy_rule_id"] == "" {
		t.Fatalf("json output: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = run(t, "--addr", addr, "-o", "yaml", "check", "--agent", "acme/eng/coder-1", "--tool", "git_status")
	if code != exitAllow || !strings.Contains(out, "decision: ALLOW") {
		t.Fatalf("yaml output: exit %d\n%s", code, out)
	}
}

func TestCheckErrors(t *testing.T) {
	addr := startGateway(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"bad agent", []string{"--addr", addr, "check", "--agent", "coder-1", "--tool", "x"}, "--agent must be org/team/agent"},
		{"no action", []string{"--addr", addr, "check", "--agent", "a/b/c"}, "choose exactly one action"},
		{"two actions", []string{"--addr", addr, "check", "--agent", "a/b/c", "--tool", "x", "--host", "h"}, "choose exactly one action"},
		{"server rejects", []string{"--addr", addr, "check", "--agent", "a/b/c", "--tool", "x", "--args", "{oops"}, "tool_call.args_json: is not valid JSON"},
		{"bad output", []string{"--addr", addr, "-o", "xml", "check", "--agent", "a/b/c", "--tool", "x"}, "unknown --output"},
		{"unreachable", []string{"--addr", "127.0.0.1:1", "--timeout", "2s", "check", "--agent", "a/b/c", "--tool", "x"}, "cannot reach the gateway at 127.0.0.1:1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := run(t, tc.args...)
			if code != exitError || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, errOut, exitError, tc.want)
			}
		})
	}
}

func TestPolicyExplain(t *testing.T) {
	addr := startGateway(t)
	code, out, errOut := run(t, "--addr", addr, "policy", "explain", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")
	if code != exitDeny || !strings.Contains(out, "DOCUMENT") || !strings.Contains(out, "research-agent") {
		t.Fatalf("explain: exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestPolicyValidate(t *testing.T) {
	code, out, errOut := run(t, "policy", "validate", "../../examples/policies")
	if code != 0 || !strings.Contains(out, "valid: 4 document(s)") {
		t.Fatalf("valid examples: exit %d\n%s\n%s", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: b}\nspec:\n  default: allow\n  network:\n    allowlist:\n      - cidr: 10.0.0/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = run(t, "policy", "validate", bad)
	if code != 1 || !strings.Contains(errOut, "bad.yaml:8:") || !strings.Contains(errOut, "spec.network.allowlist[0].cidr") {
		t.Fatalf("invalid policy: exit %d\n%s", code, errOut)
	}
}

func TestPolicyValidateWarnsOnUnparseableApproval(t *testing.T) {
	f := filepath.Join(t.TempDir(), "approve.yaml")
	doc := "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: a}\nspec:\n  scope: {level: team, org: acme, team: eng}\n  tools:\n    \"shell_*\": {allow: true, requires_approval_if: \"args.command startswith 'rm'\"}\n"
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "policy", "validate", f)
	if code != 0 || !strings.Contains(out, "valid:") || !strings.Contains(errOut, "warning: ") || !strings.Contains(errOut, "approval will always be required") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
}

func TestVersionAndCompletion(t *testing.T) {
	if code, out, _ := run(t, "version"); code != 0 || !strings.HasPrefix(out, "aasm ") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, out, _ := run(t, "completion", "bash"); code != 0 || !strings.Contains(out, "bash completion") {
		t.Fatalf("completion: %d %.100q", code, out)
	}
	for _, args := range [][]string{{"--help"}, {"check", "--help"}, {"policy", "validate", "--help"}, {"policy", "explain", "--help"}} {
		code, out, _ := run(t, args...)
		if code != 0 || !strings.Contains(out, "Examples:") && !strings.Contains(out, "Example") {
			t.Fatalf("%v: exit %d, no example in help:\n%s", args, code, out)
		}
	}
}
