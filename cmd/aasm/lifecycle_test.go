package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// activeVersion reads the active version with `aasm policy get -o json`.
func activeVersion(t *testing.T, addr string) string {
	t.Helper()
	var info struct {
		Version string `json:"version"`
		Active  bool   `json:"active"`
	}
	out := mustBin(t, 0, "--addr", addr, "-o", "json", "policy", "get")
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Version == "" || !info.Active {
		t.Fatalf("policy get -o json: %v\n%s", err, out)
	}
	return info.Version
}

func TestPolicyLifecycleCLI(t *testing.T) {
	dir := copyDir(t, "../../examples/policies")
	addr := servertest.Start(t, dir, servertest.AgentAuthOff)
	lit := map[string]string{dir: "<POLICY_DIR>"}
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }

	// The files the gateway started from are the first stored version.
	golden(t, "policy-list-initial.golden", normalize(mustBin(t, 0, a("policy", "list")...), lit))
	v0 := activeVersion(t, addr)

	// apply stores and activates a new version, served at once.
	out := mustBin(t, 0, a("policy", "apply", "../../examples/policies", "testdata/candidate", "-m", "block wikipedia", "--author", "alice")...)
	golden(t, "policy-apply.golden", normalize(out, lit))
	v1 := activeVersion(t, addr)
	if v1 == v0 {
		t.Fatalf("apply did not change the active version %s", v0)
	}
	mustBin(t, exitDeny, a("check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org")...)

	golden(t, "policy-history.golden", normalize(mustBin(t, 0, a("policy", "history")...), lit))
	golden(t, "policy-list.json.golden", normalize(canonJSON(t, mustBin(t, 0, a("-o", "json", "policy", "list")...)), lit))

	// diff: version to active differs (exit 1); a version against itself does not.
	golden(t, "policy-diff.golden", normalize(mustBin(t, exitDeny, a("policy", "diff", v0)...), lit))
	if out := mustBin(t, 0, a("policy", "diff", v1, "active")...); !strings.Contains(out, "no differences") {
		t.Fatalf("diff of the active version with itself: %s", out)
	}
	// diff against local files: what applying them would change.
	golden(t, "policy-diff-local.golden", normalize(mustBin(t, exitDeny, a("policy", "diff", "active", dir)...), lit))

	// rollback activates the first version again on the same gateway.
	golden(t, "policy-rollback.golden", normalize(mustBin(t, 0, a("policy", "rollback", v0, "-m", "mirror ready", "--author", "bob")...), lit))
	if v := activeVersion(t, addr); v != v0 {
		t.Fatalf("after rollback the active version is %s, want %s", v, v0)
	}
	mustBin(t, exitAllow, a("check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org")...)

	// get --to writes the documents back as files, byte for byte.
	to := t.TempDir()
	mustBin(t, 0, a("policy", "get", v1, "--to", to)...)
	want, _ := os.ReadFile("testdata/candidate/zz-block-wikipedia.yaml")
	if got, err := os.ReadFile(filepath.Join(to, "zz-block-wikipedia.yaml")); err != nil || string(got) != string(want) {
		t.Fatalf("get --to: %v\n%s", err, got)
	}
}

func TestPolicyApplyRejectsInvalid(t *testing.T) {
	addr := servertest.Start(t, "../../examples/policies", servertest.AgentAuthOff)
	bad := t.TempDir()
	doc := "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: b}\nspec:\n  default: allow\n  network:\n    allowlist:\n      - cidr: 10.0.0/8\n"
	if err := os.WriteFile(filepath.Join(bad, "bad.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	before := mustBin(t, 0, "--addr", addr, "policy", "list")
	code, _, errOut := runBin(t, "--addr", addr, "policy", "apply", bad)
	if code != exitError || !strings.Contains(errOut, "nothing stored") || !strings.Contains(errOut, "bad.yaml:8:") || !strings.Contains(errOut, "spec.network.allowlist[0].cidr") {
		t.Fatalf("invalid apply: exit %d\n%s", code, errOut)
	}
	if after := mustBin(t, 0, "--addr", addr, "policy", "list"); after != before {
		t.Fatalf("an invalid apply changed the history:\n%s\n%s", before, after)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"policy", "rollback", "0123456789ab"}, "not found"},
		{[]string{"policy", "get", "no/such"}, "is not a policy version"},
		{[]string{"policy", "apply", "testdata/no-such-dir"}, "no such file"},
		{[]string{"policy", "apply", "../../examples/policies/global.yaml", "testdata/candidate", "../../examples/policies/global.yaml"}, "same file name"},
	}
	for _, tc := range cases {
		code, _, errOut := runBin(t, append([]string{"--addr", addr}, tc.args...)...)
		if code != exitError || !strings.Contains(errOut, tc.want) {
			t.Errorf("aasm %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut, exitError, tc.want)
		}
	}
}

func TestPolicySimulateCLI(t *testing.T) {
	addr := servertest.Start(t, "../../examples/policies", servertest.AgentAuthOff)
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	// Record some traffic in the gateway's audit log.
	mustBin(t, exitAllow, a("check", "--agent", "acme/research/researcher-1", "--host", "en.wikipedia.org")...)
	mustBin(t, exitDeny, a("check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/eng/coder-1", "--tool", "git_status")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/research/researcher-1", "--host", "api.semanticscholar.org")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/research/researcher-1", "--host", "de.wikipedia.org", "--path", "/wiki/Go")...)

	out := mustBin(t, 0, a("policy", "simulate", "../../examples/policies", "testdata/candidate", "--hours", "1")...)
	golden(t, "policy-simulate.golden", normalize(out, nil))
	out = mustBin(t, 0, a("-o", "json", "policy", "simulate", "../../examples/policies", "testdata/candidate")...)
	golden(t, "policy-simulate.json.golden", normalize(canonJSON(t, out), nil))

	// The serving policy itself changes nothing.
	if out := mustBin(t, 0, a("policy", "simulate", "../../examples/policies")...); !strings.Contains(out, "no decision would change") || !strings.Contains(out, "total     5") {
		t.Fatalf("simulate of the serving policy:\n%s", out)
	}
	// Simulation records nothing: the log still holds five decisions.
	if out := mustBin(t, 0, a("policy", "simulate", "../../examples/policies", "--hours", "1")...); !strings.Contains(out, "total     5") {
		t.Fatalf("simulate added records to the audit log:\n%s", out)
	}
	code, _, errOut := runBin(t, a("policy", "simulate", "../../examples/policies", "--hours", "100000")...)
	if code != exitError || !strings.Contains(errOut, "hours: must be between 1 and 744") {
		t.Fatalf("bad hours: exit %d %s", code, errOut)
	}
}
