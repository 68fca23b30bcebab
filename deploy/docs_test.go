package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// docPages are the pages this package keeps honest.
var docPages = []string{"docs/deployment.md", "docs/operations.md", "docs/troubleshooting.md"}

// codeCorpus is the text of the program sources users run: non-test Go
// files and shell scripts outside deploy/ and docs/.
func codeCorpus(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "testdata", "deploy", "docs", "node_modules", "data", "bin":
				return filepath.SkipDir
			}
			return nil
		}
		n := d.Name()
		if (strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go")) || strings.HasSuffix(n, ".sh") {
			b.Write(read(t, p))
			b.WriteByte('\n')
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return b.String()
}

var headingRe = regexp.MustCompile("(?m)^### `(.+)`\\s*$")

// TestTroubleshootingMessagesExist checks that every message quoted in a
// heading of docs/troubleshooting.md (variable parts written as …) is
// still printed by the code.
func TestTroubleshootingMessagesExist(t *testing.T) {
	page := string(read(t, filepath.Join(repoRoot(t), "docs", "troubleshooting.md")))
	corpus := codeCorpus(t)
	hs := headingRe.FindAllStringSubmatch(page, -1)
	if len(hs) < 20 {
		t.Fatalf("found %d quoted messages in docs/troubleshooting.md; the heading format (### `message`) changed?", len(hs))
	}
	for _, h := range hs {
		for _, frag := range strings.Split(h[1], "…") {
			frag = strings.TrimSpace(frag)
			if len(frag) < 6 {
				continue
			}
			if !strings.Contains(corpus, frag) {
				t.Errorf("docs/troubleshooting.md quotes %q, which no program prints any more", frag)
			}
		}
	}
}

var (
	envTokenRe  = regexp.MustCompile(`\bAA_[A-Z0-9_]*[A-Z0-9]\b`)
	flagTokenRe = regexp.MustCompile("(?:^|[\\s`(\\[\"])--([a-z][a-z0-9-]+)")
	flagDefRe   = regexp.MustCompile(`\.(?:String|Bool|Int|Duration|Func|Var|StringSlice|Int64|Uint32|Uint64|Float64)(?:Var|VarP|P)?\((?:&?[\w.\[\]]+, )?"([a-z][a-z0-9-]*)"`)
)

// externalFlags are flags of other tools (docker, kubectl, PostgreSQL,
// systemd, Envoy) that the pages use.
var externalFlags = map[string]bool{
	"build-arg": true, "from-literal": true, "from-file": true, "dry-run": true, "format": true,
	"file": true, "clean": true, "if-exists": true, "dbname": true, "no-deps": true, "rm": true,
	"always": true, "dirty": true, "static": true, "log-level": true, "disable-hot-restart": true,
	"now": true, "man": true, "build": true,
}

// TestDocsNameRealSettings checks that every AA_* variable and every --flag
// the pages mention exists: a gateway setting, a flag some command defines,
// a variable some program or script reads, or (for flags) another tool's.
func TestDocsNameRealSettings(t *testing.T) {
	corpus := codeCorpus(t)
	units := ""
	for _, p := range files(t, filepath.Join(deployDir(t), "systemd"), ".service", ".example") {
		units += string(read(t, p))
	}
	flags := map[string]bool{}
	for _, s := range server.Settings() {
		flags[s.Flag] = true
	}
	for _, m := range flagDefRe.FindAllStringSubmatch(corpus, -1) {
		flags[m[1]] = true
	}
	if !flags["agent"] || !flags["addr"] || !flags["ebpf"] {
		t.Fatalf("the flag scan found none of --agent, --addr, --ebpf: flagDefRe no longer matches the commands' flag definitions")
	}
	for _, page := range docPages {
		text := string(read(t, filepath.Join(repoRoot(t), page)))
		for _, v := range envTokenRe.FindAllString(text, -1) {
			if !strings.Contains(corpus, v) && !strings.Contains(units, v) {
				t.Errorf("%s mentions %s, which no program, script or unit reads", page, v)
			}
		}
		for _, m := range flagTokenRe.FindAllStringSubmatch(text, -1) {
			if !flags[m[1]] && !externalFlags[m[1]] {
				t.Errorf("%s mentions --%s, which no command defines (if it is another tool's flag, add it to externalFlags)", page, m[1])
			}
		}
	}
}
