package scan

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSourceTreeReport scans a source tree named by SCAN_SOURCE_TREE (for example $(go env
// GOROOT)/src or $(go env GOMODCACHE)) and logs what it finds, for reviewing false positives
// by hand. Test data and tests are skipped: they hold fake secrets on purpose.
func TestSourceTreeReport(t *testing.T) {
	root := os.Getenv("SCAN_SOURCE_TREE")
	if root == "" {
		t.Skip("set SCAN_SOURCE_TREE to a directory to report findings in its sources")
	}
	sc := mustNew(t, Options{})
	counts := map[Kind]int{}
	shown := map[Kind]int{}
	total := 0
	exts := []string{".go", ".md", ".json", ".py", ".yaml", ".yml", ".txt", ".toml"}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(p, "testdata") || strings.HasSuffix(p, "_test.go") ||
			!slices.Contains(exts, filepath.Ext(p)) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		total += len(data)
		s := string(data)
		for _, f := range sc.ScanString(s) {
			counts[f.Kind]++
			if shown[f.Kind] < 10 {
				shown[f.Kind]++
				t.Logf("%s in %s: %q", f.Kind, p, s[max(0, f.Start-30):min(len(s), f.End+10)])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scanned %d bytes: %v", total, counts)
}
