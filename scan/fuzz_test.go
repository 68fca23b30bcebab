package scan

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzScanner scans for everything, with a low token length so that generic tokens turn up
// and one custom pattern without a literal prefix.
func fuzzScanner(t testing.TB) *Scanner {
	return mustNew(t, Options{MinTokenLength: 8, Custom: []Pattern{{Name: "fuzz", Regex: `[A-Z]{3}-\d{3}`}}})
}

func FuzzScanString(f *testing.F) {
	for _, s := range readPositive(f) {
		f.Add(s.text)
	}
	files, _ := filepath.Glob("testdata/negative/*")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(string(data[:min(len(data), 512)]))
		}
	}
	f.Add("4111 1111 1111 1111 123-45-6789 a@b.co")
	sc := fuzzScanner(f)
	f.Fuzz(func(t *testing.T, s string) {
		fs := sc.ScanString(s)
		checkSpans(t, s, fs)
		for _, fd := range fs {
			if fd.Path != "" {
				t.Fatalf("path %q for a plain string", fd.Path)
			}
		}
		red := Redact(s, fs)
		if len(fs) == 0 && red != s {
			t.Fatalf("Redact changed a clean string")
		}
	})
}

func FuzzRedactJSON(f *testing.F) {
	f.Add([]byte(`{"a":"b"}`))
	f.Add([]byte(`{"headers":{"Authorization":"Bearer ` + fakeAnthropic + `"},"n":4111111111111111}`))
	f.Add([]byte(`["a@example.com", {"password": "` + fakeToken + `"}, "x\ud83d\ude00\n\"y\""]`))
	f.Add([]byte(`{"type":"service_account","private_key":"` + strings.ReplaceAll(fakePEM("PRIVATE KEY"), "\n", `\n`) + `"}`))
	f.Add([]byte(`[1, -2.5e3, true, false, null, {}, []]`))
	f.Add([]byte(`{"a":`))
	sc := fuzzScanner(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		out, fs, err := sc.RedactJSON(data)
		valid := json.Valid(data)
		if valid != (err == nil) {
			t.Fatalf("json.Valid = %v but RedactJSON error = %v", valid, err)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidJSON) {
				t.Fatalf("error %v does not wrap ErrInvalidJSON", err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("RedactJSON output is not valid JSON: %q", out)
		}
		jf, err := sc.scanJSON(data)
		if err != nil || len(jf) != len(fs) {
			t.Fatalf("scanJSON = %v, %v; RedactJSON found %v", jf, err, fs)
		}
		for _, f := range jf {
			n := f.rawEnd - f.rawStart
			if f.str {
				n = len(appendUnquoted(nil, data[f.rawStart+1:f.rawEnd-1]))
			}
			if f.End > n || f.Redacted != "[REDACTED:"+string(f.Kind)+"]" {
				t.Fatalf("finding %v out of its %d-byte value", f.Finding, n)
			}
		}
		again, err := sc.ScanJSON(data)
		if err != nil || len(again) != len(fs) {
			t.Fatalf("ScanJSON = %v, %v; RedactJSON found %v", again, err, fs)
		}
		for i := range fs {
			if fs[i] != again[i] {
				t.Fatalf("ScanJSON and RedactJSON disagree: %v vs %v", again[i], fs[i])
			}
			if fs[i].Start < 0 || fs[i].Start >= fs[i].End || !strings.HasPrefix(fs[i].Path, "$") {
				t.Fatalf("bad finding %v", fs[i])
			}
			// Findings in one value are sorted and apart; a repeated key
			// gives two values the same path, told apart by position.
			if i > 0 && jf[i].rawStart == jf[i-1].rawStart && fs[i].Start < fs[i-1].End {
				t.Fatalf("findings overlap or are not sorted: %v, %v", fs[i-1], fs[i])
			}
		}
		if len(fs) == 0 && string(out) != string(data) {
			t.Fatalf("clean input changed")
		}
	})
}
