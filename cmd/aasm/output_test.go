package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// TestEveryCommandHelpHasAnExample walks the whole command tree, cobra's
// completion commands included, and runs --help on each: every help text
// shows an example of the command itself.
func TestEveryCommandHelpHasAnExample(t *testing.T) {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Hidden {
				continue
			}
			walk(sub, append(slices.Clone(path), sub.Name()))
		}
	}
	walk(newRoot(&globals{out: io.Discard, errOut: io.Discard}), nil)
	if len(paths) < 50 {
		t.Fatalf("only %d commands found: %v", len(paths), paths)
	}
	for _, p := range paths {
		code, out, errOut := run(t, append(slices.Clone(p), "--help")...)
		name := strings.TrimSpace("aasm " + strings.Join(p, " "))
		i := strings.Index(out, "Examples:\n")
		if code != 0 || i < 0 {
			t.Errorf("%s --help: exit %d, no Examples section\n%s%s", name, code, out, errOut)
			continue
		}
		examples, _, _ := strings.Cut(out[i:], "\n\n")
		if !strings.Contains(examples, name) {
			t.Errorf("%s --help: the examples do not use the command:\n%s", name, examples)
		}
	}
}

// TestOutputFormats runs every command that reads something from a real
// gateway (and the local ones) with -o json and -o yaml: each prints one
// JSON object, or one YAML mapping with the same top-level keys, never the
// table. An unknown format is refused with exit 3.
func TestOutputFormats(t *testing.T) {
	addr := startGateway(t)
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	mustBin(t, exitAllow, a("check", "--agent", "acme/eng/coder-1", "--tool", "git_status")...)
	mustBin(t, exitDeny, a("check", "--agent", "acme/research/researcher-1", "--host", "evil.example.com")...)

	commands := [][]string{
		{"version"},
		{"status"},
		{"agent", "list"},
		{"alerts", "list"},
		{"alerts", "silence", "list"},
		{"approvals", "list"},
		{"audit", "list"},
		{"audit", "verify"},
		{"budget", "costs"},
		{"budget", "show", "team/acme/research"},
		{"policy", "list"},
		{"policy", "history"},
		{"policy", "get"},
		{"policy", "validate", "../../examples/policies"},
		{"policy", "diff", "active", "../../examples/policies"},
		{"policy", "diff", "active", "testdata/candidate"},
		{"policy", "simulate", "../../examples/policies", "testdata/candidate"},
		{"policy", "explain", "--agent", "acme/eng/coder-1", "--tool", "git_status"},
		{"check", "--agent", "acme/eng/coder-1", "--tool", "git_status"},
		{"secret", "list"},
		{"topology"},
		{"xds", "status"},
		{"admin", "key", "list"},
	}
	for _, c := range commands {
		name := "aasm " + strings.Join(c, " ")
		code, js, errOut := runBin(t, a(append([]string{"-o", "json"}, c...)...)...)
		if code != 0 && code != exitDeny {
			t.Errorf("%s -o json: exit %d\n%s", name, code, errOut)
			continue
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(js), &obj); err != nil {
			t.Errorf("%s -o json: not one JSON object: %v\n%s", name, err, js)
			continue
		}
		code, ys, errOut := runBin(t, a(append([]string{"-o", "yaml"}, c...)...)...)
		if code != 0 && code != exitDeny {
			t.Errorf("%s -o yaml: exit %d\n%s", name, code, errOut)
			continue
		}
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(ys), &doc); err != nil {
			t.Errorf("%s -o yaml: not one YAML mapping: %v\n%s", name, err, ys)
			continue
		}
		if !slices.Equal(sortedKeys(obj), sortedKeys(doc)) {
			t.Errorf("%s: JSON keys %v, YAML keys %v", name, sortedKeys(obj), sortedKeys(doc))
		}
	}

	// policy diff and validate keep their exit statuses in JSON.
	code, js, _ := runBin(t, a("-o", "json", "policy", "diff", "active", "testdata/candidate")...)
	var d struct {
		Changed   bool `json:"changed"`
		Documents []struct {
			Name, Change, Diff string
		} `json:"documents"`
	}
	if code != exitDeny || json.Unmarshal([]byte(js), &d) != nil || !d.Changed || len(d.Documents) != 5 {
		t.Fatalf("policy diff -o json of a changed set: exit %d\n%s", code, js)
	}
	for _, doc := range d.Documents {
		added := doc.Name == "zz-block-wikipedia.yaml"
		if added && (doc.Change != "added" || !strings.HasPrefix(doc.Diff, "--- /dev/null\n+++ testdata/candidate/zz-block-wikipedia.yaml\n")) ||
			!added && (doc.Change != "removed" || !strings.Contains(doc.Diff, "+++ /dev/null\n")) {
			t.Errorf("policy diff -o json: document %+v", doc)
		}
	}
	bad := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(bad, []byte("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: b}\nspec:\n  default: allow\n  network:\n    allowlist:\n      - cidr: 10.0.0/8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, js, _ = runBin(t, "-o", "json", "policy", "validate", bad)
	var v struct {
		Valid    bool     `json:"valid"`
		Problems []string `json:"problems"`
	}
	if code != exitDeny || json.Unmarshal([]byte(js), &v) != nil || v.Valid || !strings.Contains(strings.Join(v.Problems, "\n"), "bad.yaml:8:15: spec.network.allowlist[0].cidr") {
		t.Errorf("policy validate -o json of a bad document: exit %d\n%s", code, js)
	}

	for _, c := range [][]string{{"version"}, {"status"}, {"policy", "validate", "../../examples/policies"}, {"policy", "diff", "active", "active"}} {
		code, _, errOut := runBin(t, a(append([]string{"-o", "xml"}, c...)...)...)
		if code != exitError || !strings.Contains(errOut, `unknown --output "xml"`) {
			t.Errorf("aasm -o xml %s: exit %d, stderr %q", strings.Join(c, " "), code, errOut)
		}
	}
}

// TestStreamedYAML reads recorded decisions as a stream (aasm logs without
// --follow) in YAML: one document per record, separated so that a YAML
// reader sees each record on its own.
func TestStreamedYAML(t *testing.T) {
	addr := startGateway(t)
	for range 3 {
		mustBin(t, exitAllow, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "git_status")
	}
	out := mustBin(t, 0, "--addr", addr, "-o", "yaml", "logs", "--since", "1h", "--follow=false")
	dec := yaml.NewDecoder(bytes.NewReader([]byte(out)))
	n := 0
	for {
		var rec map[string]any
		err := dec.Decode(&rec)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("document %d: %v\n%s", n, err, out)
		}
		if rec["decision"] != "ALLOW" || rec["id"] == nil {
			t.Fatalf("document %d is not a decision record: %v", n, rec)
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d YAML documents, want 3\n%s", n, out)
	}
}

func sortedKeys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
