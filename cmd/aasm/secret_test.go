package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runIn(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := executeIn(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestSecretFlow(t *testing.T) {
	addr := startGateway(t)
	const value = "sk-test-value-do-not-print"
	code, out, errOut := runIn(t, value+"\n", "--addr", addr, "secret", "set", "OPENAI_API_KEY")
	if code != 0 || !strings.Contains(out, "OPENAI_API_KEY") || strings.Contains(out+errOut, value) {
		t.Fatalf("set from stdin: exit %d\n%s\n%s", code, out, errOut)
	}
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("ghp_file_value"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runIn(t, "", "--addr", addr, "secret", "set", "GITHUB_TOKEN", "--from-file", file)
	if code != 0 || !strings.Contains(out, "GITHUB_TOKEN") {
		t.Fatalf("set from file: exit %d\n%s\n%s", code, out, errOut)
	}
	// A second set bumps the version.
	code, out, errOut = runIn(t, "v2", "--addr", addr, "-o", "json", "secret", "set", "OPENAI_API_KEY")
	var info struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.Name != "OPENAI_API_KEY" || info.Version != "2" {
		t.Fatalf("second set: exit %d\n%s\n%s", code, out, errOut)
	}

	code, out, errOut = run(t, "--addr", addr, "secret", "list")
	if code != 0 || !strings.Contains(out, "NAME") || !strings.Contains(out, "GITHUB_TOKEN") || !strings.Contains(out, "OPENAI_API_KEY") ||
		strings.Contains(out, "ghp_file_value") || strings.Contains(out, value) {
		t.Fatalf("list: exit %d\n%s\n%s", code, out, errOut)
	}

	if code, out, errOut = run(t, "--addr", addr, "secret", "delete", "GITHUB_TOKEN"); code != 0 || !strings.Contains(out, "GITHUB_TOKEN deleted") {
		t.Fatalf("delete: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, _ = run(t, "--addr", addr, "secret", "list"); strings.Contains(out, "GITHUB_TOKEN") {
		t.Fatalf("list after delete: exit %d\n%s", code, out)
	}
	if code, _, errOut = run(t, "--addr", addr, "secret", "delete", "GITHUB_TOKEN"); code != exitError || !strings.Contains(errOut, "GITHUB_TOKEN") {
		t.Fatalf("delete unknown: exit %d %s", code, errOut)
	}
}

func TestSecretSetRejectsBadInput(t *testing.T) {
	addr := startGateway(t)
	cases := []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"bad name", "x", []string{"secret", "set", "openai-key"}, "^[A-Z][A-Z0-9_]{0,63}$"},
		{"empty stdin", "\n", []string{"secret", "set", "KEY"}, "empty"},
		{"missing file", "", []string{"secret", "set", "KEY", "--from-file", filepath.Join(t.TempDir(), "nope")}, "no such file"},
		{"too large", strings.Repeat("x", 64<<10+1), []string{"secret", "set", "KEY"}, "over the limit"},
		{"value flag", "", []string{"secret", "set", "KEY", "--value", "x"}, "unknown flag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runIn(t, tc.stdin, append([]string{"--addr", addr}, tc.args...)...)
			if code != exitError || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q, want %q", code, errOut, tc.want)
			}
		})
	}
	if code, out, _ := run(t, "--addr", addr, "secret", "list"); code != 0 || strings.Contains(out, "KEY ") {
		t.Fatalf("bad input stored something:\n%s", out)
	}
}

func TestSecretHelpHasExamples(t *testing.T) {
	for _, sub := range []string{"set", "list", "delete"} {
		code, out, _ := run(t, "secret", sub, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "aasm secret "+sub) {
			t.Fatalf("secret %s --help: exit %d\n%s", sub, code, out)
		}
	}
}
