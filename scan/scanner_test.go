package scan

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Fake credentials, built from pieces so that no source line holds a whole token.
var (
	fakeAnthropic = "sk-ant-" + "api03-" + strings.Repeat("FAKEfake00_-", 8)
	fakeOpenAI    = "sk-" + "proj-" + strings.Repeat("FaKe0123", 6)
	fakeGitHub    = "ghp" + "_" + strings.Repeat("FAKE", 9)
	fakeSlack     = "xoxb" + "-" + strings.Repeat("1", 12) + "-" + strings.Repeat("2", 13) + "-" + strings.Repeat("FaKe", 6)
	fakeStripe    = "sk_" + "live_" + strings.Repeat("FaKe0", 6)
	fakeAWSID     = "AKIA" + "IOSFODNN7EXAMPLE"
	fakeAWSSecret = strings.Repeat("Fa/Ke+09ZxQw3LmTr5Yp", 2)
	fakeToken     = strings.Repeat("Zx8Qw3Lm9Tr5Yp2Vn7Bk4", 2)
	fakeCard      = "4111 1111 1111 1111"
)

// fakePEM builds a PEM block with an obviously fake body.
func fakePEM(label string) string {
	dashes := strings.Repeat("-", 5)
	return dashes + "BEGIN " + label + dashes + "\n" + strings.Repeat("FAKEfake0123+/FAKEfake0123+/\n", 3) + dashes + "END " + label + dashes
}

func kindsOf(fs []Finding) []Kind {
	var out []Kind
	for _, f := range fs {
		out = append(out, f.Kind)
	}
	return out
}

func TestScanStringKinds(t *testing.T) {
	sc := mustNew(t, Options{})
	tests := []struct {
		name string
		in   string
		want []Kind
	}{
		{"anthropic", "key=" + fakeAnthropic, []Kind{KindAnthropicAPIKey}},
		{"anthropic too short", "sk-ant-api03-short0", nil},
		{"openai", "OPENAI_API_KEY=" + fakeOpenAI, []Kind{KindOpenAIAPIKey}},
		{"openai inside word", "task-" + strings.Repeat("FaKe0123", 6), nil},
		{"openai without digits", "sk-" + strings.Repeat("abcdEFGH", 6), nil},
		{"aws key id", "id=" + fakeAWSID + ";", []Kind{KindAWSAccessKeyID}},
		{"aws key id lower case", strings.ToLower(fakeAWSID), nil},
		{"aws key id too long", fakeAWSID + "X", nil},
		{"aws secret assignment", "aws_secret_access_key = " + fakeAWSSecret, []Kind{KindAWSSecretAccessKey}},
		{"aws secret whitespace only", "aws_secret_access_key " + fakeAWSSecret, []Kind{KindAWSSecretAccessKey}},
		{"aws secret near aws", "[aws]\nregion = us-east-1\nsecret = " + fakeAWSSecret, []Kind{KindAWSSecretAccessKey}},
		{"40 chars secret without aws", "secret = " + fakeAWSSecret, []Kind{KindHighEntropyToken}},
		{"40 chars without context", "value " + fakeAWSSecret, nil},
		{"github classic", "token " + fakeGitHub, []Kind{KindGitHubToken}},
		{"github wrong length", fakeGitHub + "X", nil},
		{"github fine-grained", "github" + "_pat_" + strings.Repeat("A1", 11) + "_" + strings.Repeat("b2", 29) + "c", []Kind{KindGitHubToken}},
		{"slack", "SLACK=" + fakeSlack, []Kind{KindSlackToken}},
		{"slack no digit", "xoxb-hello-world-hello-world-hello", nil},
		{"stripe", `"` + fakeStripe + `"`, []Kind{KindStripeKey}},
		{"stripe publishable", "pk_live_" + strings.Repeat("FaKe0", 6), nil},
		{"jwt", "Authorization: Bearer " + fakeJWT(), []Kind{KindJWT}},
		{"jwt without alg", "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", nil},
		{"database url", "postgres://app:pw-fake@db.example.com:5432/app", []Kind{KindDatabaseURL}},
		{"database url beats email", "postgresql://u:p@host.example.com/db", []Kind{KindDatabaseURL}},
		{"database url without password", "postgres://app@db.example.com/app", nil},
		{"database url placeholder", `"postgres://%s:%s@%s/%s"`, nil},
		{"url credentials", "https://bob:fake-pass@example.com/x", []Kind{KindURLCredentials}},
		{"token inside url credentials", "https://x-access-token:" + fakeGitHub + "@github.com/o/r", []Kind{KindGitHubToken}},
		{"basic auth", "Authorization: Basic dXNlcjpwYXNzd29yZA==", []Kind{KindBasicAuth}},
		{"basic without colon", "Authorization: Basic bm90LWEtY3JlZGVudGlhbA==", nil},
		{"private key rsa", fakePEM("RSA PRIVATE KEY"), []Kind{KindPrivateKey}},
		{"private key pkcs8", fakePEM("PRIVATE KEY"), []Kind{KindPrivateKey}},
		{"private key openssh", fakePEM("OPENSSH PRIVATE KEY"), []Kind{KindPrivateKey}},
		{"private key encrypted", fakePEM("ENCRYPTED PRIVATE KEY"), []Kind{KindPrivateKey}},
		{"private key pgp", fakePEM("PGP PRIVATE KEY BLOCK"), []Kind{KindPrivateKey}},
		{"private key in JSON text", strings.ReplaceAll(fakePEM("EC PRIVATE KEY"), "\n", `\n`), []Kind{KindPrivateKey}},
		{"private key cut short", fakePEM("RSA PRIVATE KEY")[:120], []Kind{KindPrivateKey}},
		{"public key", fakePEM("PUBLIC KEY"), nil},
		{"certificate", fakePEM("CERTIFICATE"), nil},
		{"private key mismatched end", strings.Replace(fakePEM("RSA PRIVATE KEY"), "END RSA", "END EC", 1), nil},
		{"card spaces", "card " + fakeCard, []Kind{KindCreditCard}},
		{"card dashes", "5555-5555-5555-4444", []Kind{KindCreditCard}},
		{"card plain", "4012888888881881", []Kind{KindCreditCard}},
		{"card amex", "3782 822463 10005", []Kind{KindCreditCard}},
		{"card bad luhn", "4111 1111 1111 1112", nil},
		{"card unknown issuer", "1234567890123452", nil},
		{"card in word", "x4111111111111111", nil},
		{"ssn", "ssn 123-45-6789", []Kind{KindUSSSN}},
		{"ssn area 000", "000-45-6789", nil},
		{"ssn area 666", "666-45-6789", nil},
		{"ssn area 9xx", "912-45-6789", nil},
		{"ssn group 00", "123-00-6789", nil},
		{"ssn serial 0000", "123-45-0000", nil},
		{"ssn longer", "123-45-67890", nil},
		{"email", "mail jane@example.com", []Kind{KindEmail}},
		{"email mailto", "mailto:jane@example.com", []Kind{KindEmail}},
		{"email file name", "icon@2x.png", nil},
		{"email scp", "git@github.com:org/repo.git", nil},
		{"email no dot", "root@localhost", nil},
		{"entropy token", "API_TOKEN=" + fakeToken, []Kind{KindHighEntropyToken}},
		{"entropy quoted", `"password": "` + fakeToken + `"`, []Kind{KindHighEntropyToken}},
		{"entropy bearer", "Authorization: Bearer " + fakeToken, []Kind{KindHighEntropyToken}},
		{"entropy bare bearer", "curl -H 'bearer " + fakeToken + "'", []Kind{KindHighEntropyToken}},
		{"entropy no assignment", "the token " + fakeToken, nil},
		{"entropy pass", "PASS=" + fakeToken, []Kind{KindHighEntropyToken}},
		{"entropy pwd", "db_pwd: " + fakeToken, []Kind{KindHighEntropyToken}},
		{"entropy compass", "compass=" + fakeToken, nil},
		{"entropy short", "password: hunter2hunter2", nil},
		{"entropy uuid", "token: 550e8400-e29b-41d4-a716-446655440000", nil},
		{"entropy public key", "public_key: " + fakeToken, nil},
		{"entropy token id", "token_id: " + fakeToken, nil},
		{"entropy low", "secret: " + strings.Repeat("ab12", 10), nil},
		{"entropy placeholder", `secret: "${` + fakeToken + `}"`, nil},
		{"specific beats generic", "token: " + fakeAnthropic, []Kind{KindAnthropicAPIKey}},
		{"several", "a@example.com " + fakeGitHub + " 123-45-6789", []Kind{KindEmail, KindGitHubToken, KindUSSSN}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := sc.ScanString(tt.in)
			if got := kindsOf(fs); !slices.Equal(got, tt.want) {
				t.Errorf("ScanString(%q) = %v, want kinds %v", tt.in, fs, tt.want)
			}
			checkSpans(t, tt.in, fs)
		})
	}
}

// checkSpans checks that findings are in bounds, sorted, not overlapping and well formed.
func checkSpans(t *testing.T, s string, fs []Finding) {
	t.Helper()
	last := 0
	for _, f := range fs {
		if f.Start < last || f.Start >= f.End || f.End > len(s) {
			t.Fatalf("bad span %v in %d bytes (previous end %d)", f, len(s), last)
		}
		if f.Kind == "" || f.Redacted != "[REDACTED:"+string(f.Kind)+"]" {
			t.Fatalf("bad finding %#v", f)
		}
		last = f.End
	}
}

func TestGCPServiceAccountText(t *testing.T) {
	sc := mustNew(t, Options{})
	key := strings.ReplaceAll(fakePEM("PRIVATE KEY"), "\n", `\n`)
	doc := `{"type": "service_account", "project_id": "fake", "private_key": "` + key + `"}`
	fs := sc.ScanString(doc)
	if got := kindsOf(fs); !slices.Equal(got, []Kind{KindGCPServiceAccount}) {
		t.Fatalf("got %v", fs)
	}
	if got := doc[fs[0].Start:fs[0].End]; got != key {
		t.Errorf("span %q, want the private key value", got)
	}
	// Without the type, it is a plain private key.
	plain := strings.Replace(doc, "service_account", "authorized_user", 1)
	if got := kindsOf(sc.ScanString(plain)); !slices.Equal(got, []Kind{KindPrivateKey}) {
		t.Errorf("without service_account: %v", got)
	}
}

func TestRedact(t *testing.T) {
	sc := mustNew(t, Options{})
	in := "Authorization: Bearer " + fakeAnthropic + "\nmail a@example.com"
	fs := sc.ScanString(in)
	got := Redact(in, fs)
	want := "Authorization: Bearer [REDACTED:anthropic_api_key]\nmail [REDACTED:email]"
	if got != want {
		t.Errorf("Redact = %q, want %q", got, want)
	}
	// Unsorted, overlapping and out-of-range findings are tolerated.
	odd := []Finding{{Kind: "b", Start: 6, End: 8}, {Kind: "a", Start: 0, End: 3}, {Kind: "c", Start: 2, End: 5}, {Kind: "d", Start: 9, End: 99}}
	if got := Redact("0123456789", odd); got != "[REDACTED:a]345[REDACTED:b]89" {
		t.Errorf("Redact odd = %q", got)
	}
	if got := Redact("abc", nil); got != "abc" {
		t.Errorf("Redact nil = %q", got)
	}
}

func TestFindingStringHidesSecret(t *testing.T) {
	sc := mustNew(t, Options{})
	in := "token " + fakeGitHub
	for _, f := range sc.ScanString(in) {
		for _, s := range []string{f.String(), fmt.Sprint(f), fmt.Sprintf("%+v", f), fmt.Sprintf("%#v", f)} {
			if strings.Contains(s, fakeGitHub[4:]) {
				t.Errorf("%q shows the secret", s)
			}
		}
		if f.String() != "github_token at [6:46]" {
			t.Errorf("String() = %q", f.String())
		}
	}
}

func TestCustomPatterns(t *testing.T) {
	sc := mustNew(t, Options{Custom: []Pattern{
		{Name: "acme_token", Regex: `acme_[a-z0-9]{16}`},
		{Name: "employee_id", Regex: `\bEMP-\d{6}\b`},
		{Name: "codename", Regex: `Project Bluebird`},
		{Name: "no_prefix", Regex: `(?i)[a-z]+-internal\.corp`},
	}})
	in := "t=acme_0123456789abcdef id EMP-123456 on Project Bluebird at build-internal.corp; EMP-1234567"
	fs := sc.ScanString(in)
	want := []Kind{"acme_token", "employee_id", "codename", "no_prefix"}
	if got := kindsOf(fs); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", fs, want)
	}
	if got := Redact(in, fs); !strings.Contains(got, "[REDACTED:acme_token]") || strings.Contains(got, "Bluebird") {
		t.Errorf("Redact = %q", got)
	}
	// Custom patterns also apply to JSON numbers.
	emp := mustNew(t, Options{Custom: []Pattern{{Name: "employee_number", Regex: `^9\d{5}$`}}})
	if fs, err := emp.ScanJSON([]byte(`{"id": 912345, "n": 12}`)); err != nil || len(fs) != 1 || fs[0].Path != "$.id" {
		t.Errorf("custom pattern on a JSON number: %v, %v", fs, err)
	}
	// A custom pattern beats email and generic tokens, a specific builtin kind beats it.
	sc = mustNew(t, Options{Custom: []Pattern{{Name: "corp_mail", Regex: `[a-z]+@corp\.example`}, {Name: "gh", Regex: `ghp_\w+`}}})
	if got := kindsOf(sc.ScanString("ann@corp.example " + fakeGitHub)); !slices.Equal(got, []Kind{"corp_mail", KindGitHubToken}) {
		t.Errorf("priorities: %v", got)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"bad regex", Options{Custom: []Pattern{{Name: "broken", Regex: `a(b`}}}, `custom pattern "broken": error parsing regexp`},
		{"empty name", Options{Custom: []Pattern{{Regex: `x`}}}, "empty name"},
		{"bad name", Options{Custom: []Pattern{{Name: "a b", Regex: `x`}}}, `custom pattern "a b": name may hold only`},
		{"builtin name", Options{Custom: []Pattern{{Name: "email", Regex: `x`}}}, `custom pattern "email": name already used`},
		{"duplicate", Options{Custom: []Pattern{{Name: "x", Regex: `x`}, {Name: "x", Regex: `y`}}}, `custom pattern "x": name already used`},
		{"unknown kind", Options{Kinds: []Kind{"bitcoin"}}, `unknown kind "bitcoin"`},
		{"entropy", Options{EntropyThreshold: 9}, "entropy threshold 9"},
		{"min token", Options{MinTokenLength: 4}, "min token length 4"},
		{"max input", Options{MaxInput: -1}, "max input -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	in := "a@example.com " + fakeCard + " 123-45-6789 API_TOKEN=" + fakeToken
	sc := mustNew(t, Options{Kinds: []Kind{KindEmail, KindUSSSN}})
	if got := kindsOf(sc.ScanString(in)); !slices.Equal(got, []Kind{KindEmail, KindUSSSN}) {
		t.Errorf("Kinds subset: %v", got)
	}
	short := "secret: Zx8Qw3Lm9Tr5Yp2V"
	if fs := mustNew(t, Options{}).ScanString(short); fs != nil {
		t.Errorf("default min length: %v", fs)
	}
	if got := kindsOf(mustNew(t, Options{MinTokenLength: 16}).ScanString(short)); !slices.Equal(got, []Kind{KindHighEntropyToken}) {
		t.Errorf("MinTokenLength 16: %v", got)
	}
	low := "secret: " + strings.Repeat("xy12zw34", 5) // 8 symbols: 3 bits per character
	if fs := mustNew(t, Options{}).ScanString(low); fs != nil {
		t.Errorf("default threshold: %v", fs)
	}
	if got := kindsOf(mustNew(t, Options{EntropyThreshold: 2.5}).ScanString(low)); !slices.Equal(got, []Kind{KindHighEntropyToken}) {
		t.Errorf("threshold 2.5: %v", got)
	}
	small := mustNew(t, Options{MaxInput: 64})
	if fs := small.ScanString(strings.Repeat(" ", 64) + fakeGitHub); fs != nil {
		t.Errorf("MaxInput: found past the limit: %v", fs)
	}
	if _, err := small.ScanJSON([]byte(`"` + strings.Repeat("x", 100) + `"`)); !errors.Is(err, ErrInputTooLarge) {
		t.Errorf("ScanJSON past MaxInput: %v", err)
	}
}

func TestNoAllocsWhenClean(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful with the race detector (sync.Pool drops items at random); `go test ./scan` checks them")
	}
	clean := cleanText(t, 64<<10)
	cleanJSON := toolArgsJSON(4 << 10)
	cleanJSON = []byte(strings.Replace(string(cleanJSON), "Bearer sk-ant-", "Bearer ", 1))
	for _, o := range []Options{{}, {Custom: []Pattern{{Name: "acme", Regex: `acme_[0-9]{8}`}, {Name: "lit", Regex: `NOPE-NOPE`}}}} {
		sc := mustNew(t, o)
		if fs := sc.ScanString(clean); fs != nil {
			t.Fatalf("clean text has findings: %v", fs)
		}
		if n := testing.AllocsPerRun(20, func() { sc.ScanString(clean) }); n != 0 {
			t.Errorf("ScanString allocates %v times on clean text", n)
		}
		if n := testing.AllocsPerRun(20, func() { sc.ScanString(clean[:1024]) }); n != 0 {
			t.Errorf("ScanString allocates %v times on 1 KiB of clean text", n)
		}
		if fs, err := sc.ScanJSON(cleanJSON); fs != nil || err != nil {
			t.Fatalf("clean JSON: %v %v", fs, err)
		}
		if n := testing.AllocsPerRun(20, func() { sc.ScanJSON(cleanJSON) }); n != 0 {
			t.Errorf("ScanJSON allocates %v times on clean JSON", n)
		}
		if n := testing.AllocsPerRun(20, func() { sc.RedactJSON(cleanJSON) }); n != 0 {
			t.Errorf("RedactJSON allocates %v times on clean JSON", n)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	sc := mustNew(t, Options{})
	in := dirtyText(t, 16<<10)
	want := sc.ScanString(in)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if got := sc.ScanString(in); !slices.Equal(got, want) {
					t.Errorf("concurrent scan differs")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestParseAction(t *testing.T) {
	for _, tt := range []struct {
		in                      string
		want                    Action
		blocks, redacts, alerts bool
	}{
		{"block", Block, true, false, true},
		{"redact_only", RedactOnly, false, true, false},
		{"alert_only", AlertOnly, false, false, true},
		{"alert_and_redact", AlertAndRedact, false, true, true},
	} {
		a, err := ParseAction(tt.in)
		if err != nil || a != tt.want || a.Blocks() != tt.blocks || a.Redacts() != tt.redacts || a.Alerts() != tt.alerts {
			t.Errorf("ParseAction(%q) = %q, %v", tt.in, a, err)
		}
	}
	for _, bad := range []string{"", "Block", "redact", "allow"} {
		if _, err := ParseAction(bad); err == nil || !strings.Contains(err.Error(), "want one of block") {
			t.Errorf("ParseAction(%q): %v", bad, err)
		}
	}
}

func TestBuiltinKinds(t *testing.T) {
	ks := BuiltinKinds()
	if len(ks) != int(numBuiltin) || ks[0] != KindAnthropicAPIKey || ks[len(ks)-1] != KindHighEntropyToken {
		t.Errorf("BuiltinKinds() = %v", ks)
	}
}

func TestShannon(t *testing.T) {
	for _, tt := range []struct {
		s    string
		want float64
	}{
		{"", 0}, {"aaaa", 0}, {"ab", 1}, {"abcd", 2}, {"aabb", 1}, {strings.Repeat("0123456789abcdef", 8), 4},
	} {
		if got := shannon(tt.s); got < tt.want-1e-9 || got > tt.want+1e-9 {
			t.Errorf("shannon(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}
