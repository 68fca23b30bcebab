package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// countingRegistry counts the revocation lookups, which happen once per
// token verification.
type countingRegistry struct {
	storage.AgentRegistry
	lookups int
}

func (c *countingRegistry) CredentialRevoked(ctx context.Context, id string) (bool, error) {
	c.lookups++
	return c.AgentRegistry.CredentialRevoked(ctx, id)
}

var unitAgent = action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}

// authFixture is an AgentAuth over an in-memory registry with one active
// agent, a token for it, and a recorder of its audit records.
func authFixture(t testing.TB, mod func(*AgentAuthOptions)) (*AgentAuth, *countingRegistry, *identity.Issuer, string, *recorder) {
	t.Helper()
	st := memory.New(memory.Options{})
	if err := st.PutAgent(context.Background(), &storage.Agent{ID: unitAgent, Status: storage.AgentActive}); err != nil {
		t.Fatal(err)
	}
	reg := &countingRegistry{AgentRegistry: st}
	seed, err := identity.NewSeed()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := identity.NewIssuer(seed, identity.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := iss.Issue(unitAgent)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	core, err := NewCore(Options{Audit: rec, Chain: "unit"})
	if err != nil {
		t.Fatal(err)
	}
	o := AgentAuthOptions{Issuer: iss, Core: core}
	if mod != nil {
		mod(&o)
	}
	a, err := NewAgentAuth(o)
	if err != nil {
		t.Fatal(err)
	}
	return a, reg, iss, tok, rec
}

func TestAgentAuthCachesVerifiedTokens(t *testing.T) {
	a, reg, _, tok, _ := authFixture(t, nil)
	ctx := context.Background()
	for range 3 {
		if id, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil || id != unitAgent {
			t.Fatalf("Authenticate = %v, %v", id, err)
		}
	}
	if reg.lookups != 1 {
		t.Fatalf("%d registry lookups for 3 calls, want 1 (the rest from the cache)", reg.lookups)
	}
	// Forget drops the agent's tokens: the next call verifies again.
	a.Forget(unitAgent)
	if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
		t.Fatal(err)
	}
	if reg.lookups != 2 {
		t.Fatalf("%d lookups after Forget, want 2", reg.lookups)
	}
}

func TestAgentAuthCacheExpires(t *testing.T) {
	now := time.Now()
	a, reg, _, tok, _ := authFixture(t, func(o *AgentAuthOptions) {
		o.CacheTTL = time.Second
		o.Now = func() time.Time { return now }
	})
	ctx := context.Background()
	if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Second)
	if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
		t.Fatal(err)
	}
	if reg.lookups != 2 {
		t.Fatalf("%d lookups, want 2: an entry older than CacheTTL is verified again", reg.lookups)
	}
}

func TestAgentAuthRevocationThroughTheRegistryWrapper(t *testing.T) {
	a, reg, iss, tok, _ := authFixture(t, nil)
	ctx := context.Background()
	if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
		t.Fatal(err)
	}
	c, err := iss.Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	// The lifecycle service revokes through the wrapper.
	if err := a.Registry(reg.AgentRegistry).RevokeCredential(ctx, c.TokenID, c.ExpiresAt); err != nil {
		t.Fatal(err)
	}
	_, err = a.Authenticate(ctx, "unit", tok, unitAgent)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token: %v, want UNAUTHENTICATED", err)
	}
}

func TestAgentAuthInvalidationEventsForget(t *testing.T) {
	for _, typ := range []storage.InvalidationType{storage.InvalidateRevoked, storage.InvalidateKilled, storage.InvalidateRegistered} {
		a, reg, _, tok, _ := authFixture(t, nil)
		ctx := context.Background()
		if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
			t.Fatal(err)
		}
		a.OnInvalidation(&storage.InvalidationEvent{Type: typ, Agent: unitAgent})
		if _, err := a.Authenticate(ctx, "unit", tok, unitAgent); err != nil {
			t.Fatal(err)
		}
		if reg.lookups != 2 {
			t.Fatalf("%s: %d lookups, want 2 (the event dropped the cached token)", typ, reg.lookups)
		}
	}
}

func TestAgentAuthRefusals(t *testing.T) {
	a, _, _, tok, rec := authFixture(t, nil)
	ctx := context.Background()
	other := action.AgentID{Org: "acme", Team: "eng", Agent: "other"}
	for _, tc := range []struct {
		name  string
		ctx   context.Context
		token string
		named action.AgentID
		code  codes.Code
		rule  string
	}{
		{"missing", ctx, "", unitAgent, codes.Unauthenticated, "agent.auth.unauthenticated"},
		{"malformed", ctx, "nope", unitAgent, codes.Unauthenticated, "agent.auth.unauthenticated"},
		{"bad signature", ctx, tok[:len(tok)-4] + "AAAA", unitAgent, codes.Unauthenticated, "agent.auth.unauthenticated"},
		{"another agent", ctx, tok, other, codes.PermissionDenied, "agent.auth.mismatch"},
		{"bearer key is not a credential", metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer aa_x")), "", unitAgent, codes.Unauthenticated, "agent.auth.unauthenticated"},
	} {
		_, err := a.Authenticate(tc.ctx, "unit", tc.token, tc.named)
		if status.Code(err) != tc.code {
			t.Fatalf("%s: %v, want %s", tc.name, err, tc.code)
		}
		if r := rec.last(t); r.RuleID != tc.rule || r.Event != storage.EventGovernance || !strings.Contains(string(r.Payload), `"surface":"unit"`) {
			t.Fatalf("%s: audit record %+v", tc.name, r)
		}
	}
	// The metadata token works where the field is empty.
	md := metadata.NewIncomingContext(ctx, metadata.Pairs(CredentialTokenHeader, tok))
	if id, err := a.Authenticate(md, "unit", "", action.AgentID{}); err != nil || id != unitAgent {
		t.Fatalf("metadata token: %v %v", id, err)
	}
}

func TestAgentAuthAuditIsBounded(t *testing.T) {
	now := time.Now()
	a, _, _, _, rec := authFixture(t, func(o *AgentAuthOptions) {
		o.AuditRate, o.AuditBurst = 1, 3
		o.Now = func() time.Time { return now }
	})
	for range 10 {
		_, _ = a.Authenticate(context.Background(), "unit", "", unitAgent)
	}
	if n := len(rec.recs); n != 3 {
		t.Fatalf("%d refusals audited in a burst of 10, want the burst of 3", n)
	}
	now = now.Add(time.Second)
	_, _ = a.Authenticate(context.Background(), "unit", "", unitAgent)
	if r := rec.last(t); !strings.Contains(string(r.Payload), `"unaudited_before":7`) {
		t.Fatalf("the next audited refusal does not say 7 were skipped: %s", r.Payload)
	}
}

func TestAgentAuthOffAndNil(t *testing.T) {
	a, err := NewAgentAuth(AgentAuthOptions{Mode: AgentAuthOff})
	if err != nil {
		t.Fatal(err)
	}
	var none *AgentAuth
	for _, x := range []*AgentAuth{a, none} {
		if id, err := x.Authenticate(context.Background(), "unit", "", unitAgent); err != nil || id != unitAgent {
			t.Fatalf("off: %v %v", id, err)
		}
	}
	if _, err := NewAgentAuth(AgentAuthOptions{}); err == nil || !strings.Contains(err.Error(), "issuer is required") {
		t.Fatalf("token mode without an issuer: %v", err)
	}
	if _, err := ParseAgentAuthMode("maybe"); err == nil {
		t.Fatal("ParseAgentAuthMode accepted maybe")
	}
}

func TestAgentAuthCacheBounded(t *testing.T) {
	a, _, iss, _, _ := authFixture(t, func(o *AgentAuthOptions) { o.CacheSize = 10 })
	for range 25 {
		tok, _, err := iss.Issue(unitAgent)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authenticate(context.Background(), "unit", tok, unitAgent); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(a.cache); n > 10 {
		t.Fatalf("cache holds %d tokens, over its bound of 10", n)
	}
}

// BenchmarkAgentAuthenticate is the cost a check pays to prove its agent:
// a token verified before (the hot path: SHA-256 and a map lookup) and a
// token verified every time (Ed25519 and the registry, what the cache saves).
//
//	go test ./gateway -run '^$' -bench AgentAuthenticate
func BenchmarkAgentAuthenticate(b *testing.B) {
	ctx := context.Background()
	b.Run("cached", func(b *testing.B) {
		a, _, _, tok, _ := authFixture(b, nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := a.Authenticate(ctx, "bench", tok, unitAgent); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("uncached", func(b *testing.B) {
		_, _, iss, tok, _ := authFixture(b, nil)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := iss.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}
