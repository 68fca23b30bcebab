package scan

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// expandSample expands the corpus notation of a sample:
// [[text*N]] repeats text N times (so no file holds a whole token), \n \t \\ are escapes,
// and « » mark the expected span (the whole sample when absent). It returns the text and the
// expected span.
func expandSample(t testing.TB, line string) (string, int, int) {
	t.Helper()
	var b strings.Builder
	start, end := -1, -1
	for i := 0; i < len(line); {
		switch {
		case strings.HasPrefix(line[i:], "[["):
			j := strings.Index(line[i:], "]]")
			if j < 0 {
				t.Fatalf("unclosed [[ in %q", line)
			}
			body := line[i+2 : i+j]
			star := strings.LastIndexByte(body, '*')
			if star < 0 {
				t.Fatalf("[[%s]] needs *N", body)
			}
			n := 0
			for _, ch := range body[star+1:] {
				n = n*10 + int(ch-'0')
			}
			b.WriteString(strings.Repeat(body[:star], n))
			i += j + 2
		case strings.HasPrefix(line[i:], "«"):
			start = b.Len()
			i += len("«")
		case strings.HasPrefix(line[i:], "»"):
			end = b.Len()
			i += len("»")
		case line[i] == '\\' && i+1 < len(line):
			switch line[i+1] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(line[i+1])
			}
			i += 2
		default:
			b.WriteByte(line[i])
			i++
		}
	}
	s := b.String()
	if start < 0 {
		start, end = 0, len(s)
	}
	return s, start, end
}

type sample struct {
	file       string
	line       int
	kind       Kind
	text       string
	start, end int
}

// readPositive reads testdata/positive/*.txt: "kind<TAB>sample" lines; # starts a comment.
func readPositive(t testing.TB) []sample {
	t.Helper()
	files, err := filepath.Glob("testdata/positive/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no positive corpus: %v", err)
	}
	var out []sample
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			kind, text, ok := strings.Cut(line, "\t")
			if !ok {
				t.Fatalf("%s:%d: want kind<TAB>sample", f, n)
			}
			s, a, b := expandSample(t, text)
			out = append(out, sample{file: filepath.Base(f), line: n, kind: Kind(kind), text: s, start: a, end: b})
		}
		fh.Close()
	}
	return out
}

func TestPositiveCorpus(t *testing.T) {
	sc := mustNew(t, Options{})
	kinds := map[Kind]int{}
	for _, s := range readPositive(t) {
		fs := sc.ScanString(s.text)
		if len(fs) != 1 || fs[0].Kind != s.kind || fs[0].Start != s.start || fs[0].End != s.end {
			t.Errorf("%s:%d: %q: got %v, want one %s at [%d:%d]", s.file, s.line, s.text, fs, s.kind, s.start, s.end)
			continue
		}
		kinds[s.kind]++
		if red := Redact(s.text, fs); strings.Contains(red, s.text[s.start:s.end]) {
			t.Errorf("%s:%d: redacted text still holds the secret: %q", s.file, s.line, red)
		}
	}
	for _, k := range BuiltinKinds() {
		if kinds[k] < 3 {
			t.Errorf("positive corpus has %d samples of %s, want at least 3", kinds[k], k)
		}
	}
}

func TestNegativeCorpus(t *testing.T) {
	sc := mustNew(t, Options{})
	files, err := filepath.Glob("testdata/negative/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no negative corpus: %v", err)
	}
	total := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		total += len(data)
		text := string(data)
		for _, fd := range sc.ScanString(text) {
			t.Errorf("%s: false positive %v: %q", filepath.Base(f), fd, text[fd.Start:fd.End])
		}
		for n, line := range strings.Split(text, "\n") {
			for _, fd := range sc.ScanString(line) {
				t.Errorf("%s:%d: false positive %v: %q", filepath.Base(f), n+1, fd, line[fd.Start:fd.End])
			}
		}
		if strings.HasSuffix(f, ".json") {
			fs, err := sc.ScanJSON(data)
			if err != nil {
				t.Errorf("%s: %v", f, err)
			}
			for _, fd := range fs {
				t.Errorf("%s: JSON false positive %v", filepath.Base(f), fd)
			}
		}
	}
	if total < 8<<10 {
		t.Errorf("negative corpus is %d bytes, want at least 8 KiB", total)
	}
}

func mustNew(t testing.TB, o Options) *Scanner {
	t.Helper()
	sc, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return sc
}
