package extauthz

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

const injectPolicy = `apiVersion: agent-assembly/v1
kind: Policy
metadata:
  name: inject-test
spec:
  scope:
    level: team
    org: acme
    team: bots
  default: deny
  capabilities: [network_call]
  network:
    allowlist:
      - host: api.example.com
        ports: [443]
        inject:
          header: Authorization
          value: "Bearer ${EXAMPLE_KEY}"
      - host: "*.tools.example.com"
        inject:
          header: X-Api-Key
          value: "${TOOLS_ID}:${TOOLS_KEY}"
      - host: plain.example.com
`

// injectServer builds a server over a real core with injectPolicy and a
// sealed memory store of secrets.
func injectServer(t *testing.T, strip bool) (*Server, *memory.Store, *auditLog) {
	t.Helper()
	doc, err := policy.Parse("inject-test.yaml", []byte(injectPolicy))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	docs := []*policy.Document{doc}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	log := &auditLog{}
	core, err := gateway.NewCore(gateway.Options{Audit: log, Chain: "inject-test"})
	if err != nil {
		t.Fatal(err)
	}
	core.SetSnapshot(snap)
	key, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	st := memory.New(memory.Options{Sealer: box})
	s := New(core, Options{
		Timeout: 2 * time.Second, Secrets: st, StripCredentials: strip,
		Injections: func(a action.AgentID) []policy.Injection { return core.Snapshot().Settings(a).Injections },
	})
	return s, st, log
}

var bot = map[string]string{"x-aa-agent-id": "acme/bots/bot-1"}

func withHeader(k, v string) map[string]string {
	h := map[string]string{k: v}
	for k, v := range bot {
		h[k] = v
	}
	return h
}

func TestInjectsCredential(t *testing.T) {
	s, st, log := injectServer(t, true)
	ctx := context.Background()
	const secret = "sk-live-abcdef123456"
	if err := st.PutSecret(ctx, "EXAMPLE_KEY", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	c := serve(t, s)

	resp := check(t, c, request("POST", "https://api.example.com/v1/things", withHeader("authorization", "Bearer agent-forged"), ""))
	h := okHeaders(t, resp)
	if h["authorization"] != "Bearer "+secret {
		t.Fatalf("authorization = %q, want the injected secret; headers %v", h["authorization"], h)
	}
	for _, o := range resp.GetOkResponse().GetHeaders() {
		if o.GetHeader().GetKey() == "authorization" && o.GetAppendAction().String() != "OVERWRITE_IF_EXISTS_OR_ADD" {
			t.Fatalf("injected header append action %s", o.GetAppendAction())
		}
	}
	// With StripCredentials, authorization would be removed; the injected one must survive.
	if gone := resp.GetOkResponse().GetHeadersToRemove(); slices.Contains(gone, "authorization") || !slices.Contains(gone, "x-api-key") {
		t.Fatalf("headers to remove %v", gone)
	}
	for _, r := range log.recs {
		if bytes.Contains(r.Payload, []byte(secret)) || strings.Contains(r.Reason, secret) {
			t.Fatalf("audit record leaks the secret: %s %q", r.Payload, r.Reason)
		}
	}

	// Another port of the same host does not match the entry (and is denied by the policy).
	denied(t, check(t, c, request("GET", "http://api.example.com/", bot, "")))
	// A host without inject gets nothing added.
	h = okHeaders(t, check(t, c, request("GET", "https://plain.example.com/", bot, "")))
	if _, ok := h["authorization"]; ok {
		t.Fatalf("plain host got authorization: %v", h)
	}
}

func TestInjectMultiplePlaceholders(t *testing.T) {
	s, st, _ := injectServer(t, false)
	ctx := context.Background()
	// A value that looks like a placeholder is not expanded again.
	_ = st.PutSecret(ctx, "TOOLS_ID", []byte("id-${TOOLS_KEY}"))
	_ = st.PutSecret(ctx, "TOOLS_KEY", []byte("k2"))
	c := serve(t, s)
	h := okHeaders(t, check(t, c, request("GET", "https://a.tools.example.com/x", bot, "")))
	if h["x-api-key"] != "id-${TOOLS_KEY}:k2" {
		t.Fatalf("x-api-key = %q", h["x-api-key"])
	}
	// The wildcard does not cover the suffix itself (and the policy denies it).
	denied(t, check(t, c, request("GET", "https://tools.example.com/x", bot, "")))
}

func TestInjectMissingSecretDenies(t *testing.T) {
	s, st, _ := injectServer(t, false)
	c := serve(t, s)
	d := denied(t, check(t, c, request("GET", "https://api.example.com/", bot, "")))
	want := "secret ${EXAMPLE_KEY} is not set (aasm secret set EXAMPLE_KEY)"
	if d.status != 403 || d.body.Reason != want || d.body.Decision != "deny" || d.body.DecisionID == "" {
		t.Fatalf("denial %+v, want 403 %q", d, want)
	}
	// One of two secrets missing names that one.
	_ = st.PutSecret(context.Background(), "TOOLS_ID", []byte("id"))
	d = denied(t, check(t, c, request("GET", "https://a.tools.example.com/", bot, "")))
	if d.status != 403 || !strings.Contains(d.body.Reason, "${TOOLS_KEY}") {
		t.Fatalf("denial %+v", d)
	}
}

func TestInjectRejectsHeaderBreakingSecret(t *testing.T) {
	s, st, _ := injectServer(t, false)
	_ = st.PutSecret(context.Background(), "EXAMPLE_KEY", []byte("abc\r\nx-evil: 1"))
	c := serve(t, s)
	d := denied(t, check(t, c, request("GET", "https://api.example.com/", bot, "")))
	if d.status != 403 || !strings.Contains(d.body.Reason, "EXAMPLE_KEY") || strings.Contains(d.body.Reason, "evil") {
		t.Fatalf("denial %+v", d)
	}
}

func TestEntryMatches(t *testing.T) {
	cases := []struct {
		e    policy.NetworkEntry
		host string
		port uint32
		want bool
	}{
		{policy.NetworkEntry{Host: "api.example.com"}, "API.example.com", 443, true},
		{policy.NetworkEntry{Host: "api.example.com", Ports: []uint16{443}}, "api.example.com", 80, false},
		{policy.NetworkEntry{Host: "*.example.com"}, "a.b.example.com", 443, true},
		{policy.NetworkEntry{Host: "*.example.com"}, "example.com", 443, false},
		{policy.NetworkEntry{Host: "*.example.com"}, "badexample.com", 443, false},
		{policy.NetworkEntry{Host: "*"}, "anything", 1, true},
		{policy.NetworkEntry{Host: "10.0.0.1"}, "10.0.0.1", 80, true},
		{policy.NetworkEntry{CIDR: netip.MustParsePrefix("10.20.0.0/16")}, "10.20.3.4", 443, true},
		{policy.NetworkEntry{CIDR: netip.MustParsePrefix("10.20.0.0/16")}, "10.21.3.4", 443, false},
		{policy.NetworkEntry{CIDR: netip.MustParsePrefix("10.20.0.0/16")}, "host.example", 443, false},
	}
	for _, c := range cases {
		if got := entryMatches(c.e, c.host, c.port); got != c.want {
			t.Errorf("entryMatches(%+v, %q, %d) = %v, want %v", c.e, c.host, c.port, got, c.want)
		}
	}
}
