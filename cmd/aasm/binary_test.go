package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// aasmBinary builds this command once per test binary, so the CLI tests run
// the real executable: flags, exit codes and output as a user sees them.
var aasmBuild struct {
	sync.Once
	path string
	err  error
}

func aasmBinary(t *testing.T) string {
	t.Helper()
	aasmBuild.Do(func() {
		dir, err := os.MkdirTemp("", "aasm-bin")
		if err != nil {
			aasmBuild.err = err
			return
		}
		aasmBuild.path = filepath.Join(dir, "aasm")
		out, err := exec.Command("go", "build", "-o", aasmBuild.path, ".").CombinedOutput()
		if err != nil {
			aasmBuild.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if aasmBuild.err != nil {
		t.Fatal(aasmBuild.err)
	}
	return aasmBuild.path
}

// runBin runs the aasm binary and returns its exit code, stdout and stderr.
func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(aasmBinary(t), args...)
	cmd.Env = append(os.Environ(), "AA_AUTHOR=test-operator")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run aasm %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// mustBin runs aasm and fails unless it exits with want.
func mustBin(t *testing.T, want int, args ...string) string {
	t.Helper()
	code, out, errOut := runBin(t, args...)
	if code != want {
		t.Fatalf("aasm %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out
}

var (
	reStamp = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	reUUID  = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
)

// normalize replaces what changes between runs: times, decision ids and
// the given literal strings (temporary paths, addresses).
func normalize(s string, literals map[string]string) string {
	for from, to := range literals {
		s = strings.ReplaceAll(s, from, to)
	}
	s = reStamp.ReplaceAllString(s, "<TIME>")
	return realign(reUUID.ReplaceAllString(s, "<ID>"))
}

var reGap = regexp.MustCompile(`\S  +`)

// realign re-aligns the columns of each block of table lines (cells
// separated by two or more spaces) after replacements changed cell widths.
func realign(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	var block [][]string
	flush := func() {
		if len(block) == 0 {
			return
		}
		var w []int
		for _, cells := range block {
			for i, c := range cells {
				if i >= len(w) {
					w = append(w, 0)
				}
				w[i] = max(w[i], len([]rune(c)))
			}
		}
		for _, cells := range block {
			var b strings.Builder
			for i, c := range cells {
				b.WriteString(c)
				if i < len(cells)-1 {
					b.WriteString(strings.Repeat(" ", w[i]-len([]rune(c))+2))
				}
			}
			out = append(out, b.String())
		}
		block = nil
	}
	for _, l := range lines {
		if !reGap.MatchString(l) || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-") || strings.HasPrefix(l, "\"") {
			flush()
			out = append(out, l)
			continue
		}
		block = append(block, regexp.MustCompile(`  +`).Split(l, -1))
	}
	flush()
	return strings.Join(out, "\n")
}

// golden compares got with testdata/golden/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/aasm -run %s -update to create it)", err, t.Name())
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (go test ./cmd/aasm -run %s -update rewrites it)\n--- want\n%s\n--- got\n%s", path, t.Name(), want, got)
	}
}

// copyDir copies the regular files of src into a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// canonJSON re-encodes JSON output with sorted keys and fixed indentation:
// protojson varies its whitespace on purpose.
func canonJSON(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}
