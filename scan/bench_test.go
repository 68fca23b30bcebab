package scan

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cleanText returns n bytes of the negative corpus (code, configs, prose), repeated.
func cleanText(tb testing.TB, n int) string {
	tb.Helper()
	files, _ := filepath.Glob("testdata/negative/*")
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		b.Write(data)
	}
	all := b.String()
	return strings.Repeat(all, n/len(all)+1)[:n]
}

// dirtyText returns n bytes of clean text with a few secrets spliced in.
func dirtyText(tb testing.TB, n int) string {
	tb.Helper()
	secrets := []string{
		"\nOPENAI_API_KEY=sk-proj-" + strings.Repeat("Ab1x", 12) + "\n",
		"\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
		"\ncontact: jane.roe@example.com\n",
		"\nAuthorization: Bearer " + fakeJWT() + "\n",
		"\nDATABASE_URL=postgres://app:" + strings.Repeat("pw9", 5) + "@db.example.com/app\n",
		"\ncard 4111 1111 1111 1111\n",
	}
	clean := cleanText(tb, n)
	step := n / (len(secrets) + 1)
	var b strings.Builder
	last := 0
	for i, s := range secrets {
		at := (i + 1) * step
		at = strings.IndexByte(clean[at:], '\n') + at
		b.WriteString(clean[last:at])
		b.WriteString(s)
		last = at
	}
	b.WriteString(clean[last:])
	return b.String()[:n]
}

// toolArgsJSON returns a tool-call arguments body of about n bytes with one secret in a header.
func toolArgsJSON(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"tool":"http_request","args":{"method":"POST","url":"https://api.example.com/v1/orders?page=2",`)
	b.WriteString(`"headers":{"Content-Type":"application/json","Authorization":"Bearer sk-ant-api03-` + strings.Repeat("Ab1_", 12) + `","X-Request-Id":"3f2b8c4e-9a1d-4e5f-b6c7-d8e9f0a1b2c3"},`)
	b.WriteString(`"body":{"items":[`)
	for i := 0; b.Len() < n-200; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"sku":"SKU-2024-0042","qty":3,"price":19.99,"note":"gift wrap, deliver after 5pm\nleave at the door","tags":["red","large"]}`)
	}
	b.WriteString(`],"customer":{"name":"Pat Example","tier":"gold","since":"2019-04-01"}}},"timeout_ms":30000}`)
	return []byte(b.String())
}

func benchString(b *testing.B, s string) {
	sc := mustNew(b, Options{})
	b.SetBytes(int64(len(s)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		sc.ScanString(s)
	}
}

func BenchmarkScanString(b *testing.B) {
	b.Run("clean-1KiB", func(b *testing.B) { benchString(b, cleanText(b, 1<<10)) })
	b.Run("clean-64KiB", func(b *testing.B) { benchString(b, cleanText(b, 64<<10)) })
	b.Run("secrets-64KiB", func(b *testing.B) { benchString(b, dirtyText(b, 64<<10)) })
	// Ordinary prose and HTML, less dense in words like token and password than the corpus.
	b.Run("go-spec", func(b *testing.B) {
		root, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			b.Skip("go env GOROOT:", err)
		}
		data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(root)), "doc", "go_spec.html"))
		if err != nil {
			b.Skip("no Go spec in GOROOT:", err)
		}
		benchString(b, string(data))
	})
}

func BenchmarkScanJSON(b *testing.B) {
	data := toolArgsJSON(4 << 10)
	sc := mustNew(b, Options{})
	b.Run("tool-args-4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sc.ScanJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	clean := []byte(strings.Replace(string(data), "Bearer sk-ant-", "Bearer ", 1))
	b.Run("tool-args-clean-4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(clean)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sc.ScanJSON(clean); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("redact-tool-args-4KiB", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := sc.RedactJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// fakeJWT builds an obviously fake HS256 JWT.
func fakeJWT() string {
	return "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" + "." + "eyJzdWIiOiJmYWtlLXVzZXIiLCJuYW1lIjoiRmFrZSJ9" + "." + strings.Repeat("ZmFrZQ", 7)
}

// BenchmarkAdversarial scans 64 KiB made of one repeated anchor, the worst case for the
// validators that look around an anchor; each must stay linear in the input.
func BenchmarkAdversarial(b *testing.B) {
	for _, tt := range []struct{ name, unit string }{
		{"pem-without-end", "-----BEGIN RSA PRIVATE KEY-----AAAA"},
		{"service-account-type", `"type": "service_account",`},
		{"url-credentials", "x://u:p@h"},
		{"azure-account-key", "AccountKey=" + strings.Repeat("A", 20) + ";"},
		{"jwt-headers", "eyJhbGciOiJIUzI1NiJ9."},
		{"emails", "a@b.co."},
		{"card-groups", "4111 "},
		{"keyword-assignments", "token="},
		{"long-identifiers", strings.Repeat("a", 70) + "token"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			benchString(b, strings.Repeat(tt.unit, (64<<10)/len(tt.unit)))
		})
	}
}
