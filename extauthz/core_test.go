package extauthz

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// auditLog is an in-memory gateway.Auditor.
type auditLog struct {
	mu   sync.Mutex
	recs []*storage.AuditRecord
}

func (l *auditLog) Append(_ context.Context, r *storage.AuditRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r)
	return nil
}

func (l *auditLog) byID(id string) *storage.AuditRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// exampleSnapshot compiles examples/policies.
func exampleSnapshot(t *testing.T) *policy.Snapshot {
	t.Helper()
	docs, err := policy.LoadPath(filepath.Join("..", "examples", "policies"))
	if err != nil {
		t.Fatalf("load policies: %v", err)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		t.Fatalf("compile policies: %v", err)
	}
	return snap
}

// exampleCore builds a real core over examples/policies.
func exampleCore(t *testing.T) (*gateway.Core, *auditLog) {
	t.Helper()
	snap := exampleSnapshot(t)
	log := &auditLog{}
	c, err := gateway.NewCore(gateway.Options{Audit: log, Chain: "extauthz-test"})
	if err != nil {
		t.Fatalf("new core: %v", err)
	}
	c.SetSnapshot(snap)
	return c, log
}

func TestWithExamplePolicies(t *testing.T) {
	core, log := exampleCore(t)
	c := serve(t, New(core, Options{Timeout: 2 * time.Second}))
	researcher := map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}

	t.Run("allowed host", func(t *testing.T) {
		h := okHeaders(t, check(t, c, request("GET", "https://en.wikipedia.org/wiki/Go", researcher, "")))
		id := h[HeaderDecisionID]
		if id == "" || h[HeaderDecision] != "allow" {
			t.Fatalf("headers %v", h)
		}
		r := log.byID(id)
		if r == nil || r.Kind != action.KindNetworkCall || r.Agent.Agent != "researcher-1" {
			t.Fatalf("audit record %+v", r)
		}
	})
	t.Run("host off the allowlist", func(t *testing.T) {
		d := denied(t, check(t, c, request("GET", "https://evil.example.com/x", researcher, "")))
		if d.status != 403 || d.body.Rule != "research-agent/network.allowlist" || d.body.DecisionID == "" || log.byID(d.body.DecisionID) == nil {
			t.Fatalf("denial %+v", d)
		}
	})
	t.Run("spiffe principal", func(t *testing.T) {
		req := request("GET", "https://en.wikipedia.org/wiki/Go", nil, "")
		req.Attributes.Source.Principal = "spiffe://acme.example/org/acme/team/research/agent/researcher-1"
		okHeaders(t, check(t, c, req))
		req = request("GET", "https://evil.example.com/", nil, "")
		req.Attributes.Source.Principal = "spiffe://acme.example/org/acme/team/research/agent/researcher-1"
		if d := denied(t, check(t, c, req)); d.body.Rule != "research-agent/network.allowlist" {
			t.Fatalf("denial %+v", d)
		}
	})
	t.Run("context extensions", func(t *testing.T) {
		req := request("GET", "https://en.wikipedia.org/wiki/Go", nil, "")
		req.Attributes.ContextExtensions = map[string]string{"aa_org": "acme", "aa_team": "research", "aa_agent": "researcher-1"}
		okHeaders(t, check(t, c, req))
	})
	t.Run("unattributed", func(t *testing.T) {
		d := denied(t, check(t, c, request("GET", "https://en.wikipedia.org/wiki/Go", nil, "")))
		if d.status != 403 || d.body.Decision != "deny" || d.body.Rule != "unattributed" {
			t.Fatalf("denial %+v", d)
		}
	})
	t.Run("llm call decided", func(t *testing.T) {
		body := `{"model":"gpt-4o","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}`
		h := okHeaders(t, check(t, c, request("POST", "https://api.openai.com/v1/chat/completions", researcher, body)))
		if h[HeaderDecision] != "allow" {
			t.Fatalf("headers %v", h)
		}
		d := denied(t, check(t, c, request("POST", "https://api.openai.com/v1/chat/completions", researcher,
			`{"model":"o1-preview","max_tokens":32,"messages":[]}`)))
		if d.status != 403 || log.byID(d.body.DecisionID).Kind != action.KindLLMCall {
			t.Fatalf("denial %+v", d)
		}
	})
}
