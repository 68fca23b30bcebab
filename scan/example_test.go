package scan_test

import (
	"fmt"
	"strings"

	"github.com/agent-assembly/agent-assembly/scan"
)

func ExampleScanner_ScanString() {
	sc, err := scan.New(scan.Options{})
	if err != nil {
		panic(err)
	}
	// An obviously fake key, assembled so that no source line holds a whole one.
	key := "sk-ant-" + "api03-" + strings.Repeat("FAKEfake00_-", 8)
	s := "curl -H 'x-api-key: " + key + "' -d @body.json https://api.example.com"
	fs := sc.ScanString(s)
	for _, f := range fs {
		fmt.Println(f)
	}
	fmt.Println(scan.Redact(s, fs))
	// Output:
	// anthropic_api_key at [20:129]
	// curl -H 'x-api-key: [REDACTED:anthropic_api_key]' -d @body.json https://api.example.com
}

func ExampleScanner_RedactJSON() {
	sc, err := scan.New(scan.Options{})
	if err != nil {
		panic(err)
	}
	args := `{"url":"https://api.example.com","headers":{"Authorization":"Basic dXNlcjpwYXNzd29yZA=="},"notify":["ops@example.com"]}`
	out, fs, err := sc.RedactJSON([]byte(args))
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))
	for _, f := range fs {
		fmt.Println(f.Kind, f.Path)
	}
	// Output:
	// {"url":"https://api.example.com","headers":{"Authorization":"Basic [REDACTED:basic_auth]"},"notify":["[REDACTED:email]"]}
	// basic_auth $.headers.Authorization
	// email $.notify[0]
}

func ExampleParseAction() {
	a, err := scan.ParseAction("alert_and_redact")
	fmt.Println(a, a.Redacts(), a.Alerts(), a.Blocks(), err)
	// Output: alert_and_redact true true false <nil>
}
