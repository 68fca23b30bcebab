package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/api/openapi"
)

// TestRESTMalformedInput sends every REST route in the OpenAPI document
// malformed JSON, wrong types, unknown fields, an oversized body and
// path-traversal ids. Each must get a 4xx (or a 2xx when the input is
// harmless) with a message, never a 5xx, a panic or a hang.
func TestRESTMalformedInput(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	routes := openAPIRoutes(t)
	bodies := map[string][]byte{
		"malformed JSON":   []byte(`{"agent": {"org_id": "acme",`),
		"wrong types":      []byte(`{"agent": 7, "limit": "many", "tool_call": [1,2], "approve": "yes", "value": {"x":1}}`),
		"unknown fields":   []byte(`{"no_such_field": true, "another": {"deep": [null]}}`),
		"not an object":    []byte(`[1, 2, 3]`),
		"NUL and controls": []byte("{\"name\": \"a\u0000b\\u0000\", \"id\": \"\\u0007\"}"),
		"oversized":        append(append([]byte(`{"name":"`), bytes.Repeat([]byte("A"), 6<<20)...), '"', '}'),
	}
	ids := []string{"..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%00b", strings.Repeat("x", 5000), "acme%2Feng%2F..%2F..%2Fcoder-1"}
	client := &http.Client{}
	statuses := map[int]int{}
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		for _, id := range ids {
			url := g.base + fill(path, id)
			for name, body := range bodies {
				if method == http.MethodGet || method == http.MethodDelete {
					if name != "malformed JSON" {
						continue
					}
					body = nil
				}
				req, err := http.NewRequest(method, url, bytes.NewReader(body))
				if err != nil {
					continue // the id makes no valid URL: nothing reaches the gateway
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+testAdminKey) // the checks below the authorization layer
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s %s (%s): %v", method, url[:min(len(url), 120)], name, err)
				}
				msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				statuses[resp.StatusCode]++
				if resp.StatusCode >= 500 {
					t.Errorf("%s %s with %s: %d %s", method, path, name, resp.StatusCode, msg)
				}
				if resp.StatusCode >= 400 && len(bytes.TrimSpace(msg)) == 0 {
					t.Errorf("%s %s with %s: %d with an empty body (say what is wrong)", method, path, name, resp.StatusCode)
				}
			}
		}
	}
	t.Logf("%d routes; answers by status: %v", len(routes), statuses)
	// The gateway still answers after all of it.
	if resp, err := http.Get(g.base + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz after the malformed requests: %v %v", resp, err)
	}
}

// openAPIRoutes lists every REST route of the OpenAPI document as
// "METHOD /path/{param}", sorted.
func openAPIRoutes(t *testing.T) []string {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapi.JSON, &doc); err != nil {
		t.Fatal(err)
	}
	var routes []string
	for path, ops := range doc.Paths {
		for method := range ops {
			routes = append(routes, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(routes)
	if len(routes) < 30 {
		t.Fatalf("only %d routes in the OpenAPI document", len(routes))
	}
	return routes
}

// fill replaces every {param} in an OpenAPI path with v.
func fill(path, v string) string {
	var b strings.Builder
	for {
		i := strings.IndexByte(path, '{')
		if i < 0 {
			b.WriteString(path)
			return b.String()
		}
		j := strings.IndexByte(path[i:], '}')
		if j < 0 {
			b.WriteString(path)
			return b.String()
		}
		b.WriteString(path[:i])
		b.WriteString(v)
		path = path[i+j+1:]
	}
}
