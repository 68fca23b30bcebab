package scan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestScanJSONPaths(t *testing.T) {
	sc := mustNew(t, Options{})
	doc := `{
  "tool": "http",
  "args": {
    "headers": {"Authorization": "Bearer ` + fakeAnthropic + `", "Content-Type": "application/json"},
    "list": [1, "x", {"db": "postgres://u:pw-fake@db.example.com/app"}],
    "weird key": {"it's": "mail a@example.com"},
    "n": 4111111111111111,
    "password": "` + fakeToken + `",
    "tokens": ["` + fakeToken + `", "short"],
    "escaped": "line1\nkey=` + fakeGitHub[:10] + `\u0041` + fakeGitHub[11:] + `"
  }
}`
	fs, err := sc.ScanJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		path       string
		kind       Kind
		start, end int
	}{
		{"$.args.headers.Authorization", KindAnthropicAPIKey, 7, 7 + len(fakeAnthropic)},
		{"$.args.list[2].db", KindDatabaseURL, 0, 39},
		{`$.args['weird key']['it\'s']`, KindEmail, 5, 18},
		{"$.args.n", KindCreditCard, 0, 16},
		{"$.args.password", KindHighEntropyToken, 0, len(fakeToken)},
		{"$.args.tokens[0]", KindHighEntropyToken, 0, len(fakeToken)},
		{"$.args.escaped", KindGitHubToken, 10, 10 + len(fakeGitHub)}, // offsets in the decoded value
	}
	if len(fs) != len(want) {
		t.Fatalf("got %d findings %v, want %d", len(fs), fs, len(want))
	}
	for i, w := range want {
		f := fs[i]
		if f.Path != w.path || f.Kind != w.kind || f.Start != w.start || f.End != w.end {
			t.Errorf("finding %d = %+v, want %+v", i, f, w)
		}
	}
}

func TestScanJSONTopLevelAndEmpty(t *testing.T) {
	sc := mustNew(t, Options{})
	for _, tt := range []struct {
		doc  string
		path string
	}{
		{`"` + fakeGitHub + `"`, "$"},
		{`[[], {}, ["` + fakeGitHub + `"]]`, "$[2][0]"},
		{` {"a" : [ {} , "` + fakeGitHub + `" ] } `, "$.a[1]"},
	} {
		fs, err := sc.ScanJSON([]byte(tt.doc))
		if err != nil || len(fs) != 1 || fs[0].Path != tt.path {
			t.Errorf("ScanJSON(%s) = %v, %v; want one finding at %s", tt.doc, fs, err, tt.path)
		}
	}
	for _, doc := range []string{`{}`, `[]`, `null`, `0`, `-1.5e+10`, `"x"`, `{"a":[true,false,null]}`} {
		if fs, err := sc.ScanJSON([]byte(doc)); fs != nil || err != nil {
			t.Errorf("ScanJSON(%s) = %v, %v", doc, fs, err)
		}
	}
}

func TestScanJSONInvalid(t *testing.T) {
	sc := mustNew(t, Options{})
	for _, doc := range []string{
		``, ` `, `{`, `}`, `[1,]`, `[1 2]`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{a:1}`, `{"a":1]`, `[1}`,
		`"abc`, `"a\x"`, `"\u12"`, `"\u12G4"`, "\"a\x01\"", `01`, `1.`, `.5`, `-`, `1e`, `1e+`, `+1`,
		`tru`, `nul`, `falsey`, `[] []`, `"a" x`, `{"a":"b"}}`, "\xef\xbb\xbf{}", `[` + strings.Repeat(`[`, 10001),
	} {
		_, err := sc.ScanJSON([]byte(doc))
		if !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("ScanJSON(%q) error = %v, want ErrInvalidJSON", doc, err)
		}
		if json.Valid([]byte(doc)) {
			t.Errorf("json.Valid(%q) disagrees", doc)
		}
		if out, fs, err := sc.RedactJSON([]byte(doc)); out != nil || fs != nil || err == nil {
			t.Errorf("RedactJSON(%q) = %q, %v, %v", doc, out, fs, err)
		}
	}
}

func TestRedactJSON(t *testing.T) {
	sc := mustNew(t, Options{})
	doc := `{"args":{"headers":{"Authorization":"Bearer ` + fakeAnthropic + `"},` +
		`"cmd":"export T=\"` + fakeGitHub + `\"\nrun \u00e9",` +
		`"card":4111111111111111,"ok":"nothing here","n":[1,2.5,null]}}`
	out, fs, err := sc.RedactJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(out) {
		t.Fatalf("output is not valid JSON: %s", out)
	}
	for _, secret := range []string{fakeAnthropic, fakeGitHub, "4111111111111111"} {
		if bytes.Contains(out, []byte(secret)) {
			t.Errorf("output holds %q: %s", secret, out)
		}
	}
	var got map[string]map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	args := got["args"]
	if h := args["headers"].(map[string]any)["Authorization"]; h != "Bearer [REDACTED:anthropic_api_key]" {
		t.Errorf("Authorization = %q", h)
	}
	if c := args["cmd"]; c != "export T=\"[REDACTED:github_token]\"\nrun é" {
		t.Errorf("cmd = %q", c)
	}
	if c := args["card"]; c != "[REDACTED:credit_card]" {
		t.Errorf("card = %v", c)
	}
	if args["ok"] != "nothing here" {
		t.Errorf("ok = %v", args["ok"])
	}
	if len(fs) != 3 {
		t.Errorf("findings = %v", fs)
	}
	// The rest of the document is kept byte for byte.
	if !bytes.HasPrefix(out, []byte(`{"args":{"headers":{"Authorization":"Bearer [REDACTED`)) ||
		!bytes.HasSuffix(out, []byte(`"ok":"nothing here","n":[1,2.5,null]}}`)) {
		t.Errorf("output = %s", out)
	}
	// Clean input comes back as is.
	clean := []byte(`{"a": "b"}`)
	if out, fs, err := sc.RedactJSON(clean); &out[0] != &clean[0] || fs != nil || err != nil {
		t.Errorf("clean RedactJSON = %s, %v, %v", out, fs, err)
	}
}

func TestRedactJSONServiceAccount(t *testing.T) {
	sc := mustNew(t, Options{})
	pem := fakePEM("PRIVATE KEY")
	key, _ := json.Marshal(pem)
	doc := `{"private_key": ` + string(key) + `, "private_key_id": "` + strings.Repeat("0f", 20) + `", "type": "service_account", "project_id": "fake"}`
	out, fs, err := sc.RedactJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 || fs[0].Kind != KindGCPServiceAccount || fs[0].Path != "$.private_key" || fs[0].Start != 0 || fs[0].End != len(pem) {
		t.Fatalf("findings = %v", fs)
	}
	want := `{"private_key": "[REDACTED:gcp_service_account]", "private_key_id": "` + strings.Repeat("0f", 20) + `", "type": "service_account", "project_id": "fake"}`
	if string(out) != want {
		t.Errorf("out = %s", out)
	}
	// The same key file without the type is a plain private key.
	other := strings.Replace(doc, "service_account", "external_account", 1)
	if fs, _ := sc.ScanJSON([]byte(other)); len(fs) != 1 || fs[0].Kind != KindPrivateKey {
		t.Errorf("without service_account: %v", fs)
	}
}

func TestScanJSONKeyContext(t *testing.T) {
	sc := mustNew(t, Options{})
	for _, tt := range []struct {
		doc  string
		want Kind
	}{
		{`{"api_key": "` + fakeToken + `"}`, KindHighEntropyToken},
		{`{"headers": {"X-Api-Key": "` + fakeToken + `"}}`, KindHighEntropyToken},
		{`{"Authorization": "Bearer ` + fakeToken + `"}`, KindHighEntropyToken},
		{`{"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}`, KindBasicAuth},
		{`{"db_password": "Tr0ub4dor&3-Fk9Lq2ZxWm7YpNc5Vb8Hj"}`, KindHighEntropyToken},
		{`{"SecretAccessKey": "` + fakeAWSSecret + `"}`, KindAWSSecretAccessKey},
		{`{"note": "` + fakeToken + `"}`, ""},
		{`{"env": [{"name": "DB_PASSWORD", "value": "` + fakeToken + `"}]}`, KindHighEntropyToken},
		{`{"Name": "GITHUB_TOKEN", "Value": "` + fakeToken + `"}`, KindHighEntropyToken},
		{`{"name": "LOG_LEVEL", "value": "` + fakeToken + `"}`, ""},
		{`{"value": "` + fakeToken + `", "name": "DB_PASSWORD"}`, ""},
		{`{"public_key": "` + fakeToken + `"}`, ""},
		{`{"password": "hunter2hunter2"}`, ""},
		{`{"token": "not a token but a sentence with spaces in it"}`, ""},
	} {
		fs, err := sc.ScanJSON([]byte(tt.doc))
		if err != nil {
			t.Fatal(err)
		}
		var got Kind
		if len(fs) == 1 {
			got = fs[0].Kind
		}
		if got != tt.want || len(fs) > 1 {
			t.Errorf("ScanJSON(%s) = %v, want %q", tt.doc, fs, tt.want)
		}
	}
}

func TestJSONQuoting(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "ctl\x00\x01\x1f\t\r\n", "utf8 é ✓ \U0001F600", "bad \xff utf8"} {
		q := appendQuoted(nil, s)
		if !json.Valid(q) {
			t.Errorf("appendQuoted(%q) = %s is not valid", s, q)
		}
		if got := string(appendUnquoted(nil, q[1:len(q)-1])); got != s {
			t.Errorf("round trip of %q = %q", s, got)
		}
	}
	// Surrogate pairs and lone surrogates decode like encoding/json.
	for _, raw := range []string{`\ud83d\ude00`, `\ud83d`, `\ude00x`, `\ud83d\u0041`, `a\/b`} {
		var want string
		if err := json.Unmarshal([]byte(`"`+raw+`"`), &want); err != nil {
			t.Fatal(err)
		}
		if got := string(appendUnquoted(nil, []byte(raw))); got != want {
			t.Errorf("appendUnquoted(%s) = %q, want %q", raw, got, want)
		}
	}
}

func TestScanJSONDepthLimit(t *testing.T) {
	sc := mustNew(t, Options{})
	for _, depth := range []int{maxDepth, maxDepth + 1} {
		doc := []byte(strings.Repeat("[", depth) + strings.Repeat("]", depth))
		_, err := sc.ScanJSON(doc)
		if (err == nil) != json.Valid(doc) {
			t.Errorf("depth %d: ScanJSON error %v, json.Valid %v", depth, err, json.Valid(doc))
		}
	}
}

// TestScanJSONScratchReuse guards against caching a classification for text in the decode buffer,
// which the next escaped value overwrites.
func TestScanJSONScratchReuse(t *testing.T) {
	sc := mustNew(t, Options{})
	doc := `["\nmonkey: 1", "\napikey: ` + fakeToken + `"]`
	fs, err := sc.ScanJSON([]byte(doc))
	if err != nil || len(fs) != 1 || fs[0].Kind != KindHighEntropyToken || fs[0].Path != "$[1]" {
		t.Errorf("ScanJSON = %v, %v; want one high_entropy_token at $[1]", fs, err)
	}
}
