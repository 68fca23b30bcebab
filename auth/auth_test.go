package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

func TestKeyRoundTrip(t *testing.T) {
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	s := k.String()
	if !strings.HasPrefix(s, "aak_"+k.ID+"_") || len(k.Secret) != 43 {
		t.Fatalf("key %q: wrong shape", s)
	}
	got, err := ParseKey(s)
	if err != nil || got != k {
		t.Fatalf("ParseKey(String()) = %+v, %v; want %+v", got, err, k)
	}
	if !got.Matches(k.Hash()) {
		t.Fatal("key does not match its own hash")
	}
	other, _ := NewKey()
	if other.ID == k.ID || other.Secret == k.Secret || other.Matches(k.Hash()) {
		t.Fatal("two new keys collide")
	}
}

func TestParseKeyRejects(t *testing.T) {
	good, _ := NewKey()
	for name, in := range map[string]string{
		"empty":        "",
		"no prefix":    good.ID + "_" + good.Secret,
		"no secret":    "aak_" + good.ID,
		"short id":     "aak_abc_" + good.Secret,
		"upper id":     "aak_" + strings.ToUpper(good.ID) + "_" + good.Secret,
		"short secret": "aak_" + good.ID + "_abc",
		"bad base64":   "aak_" + good.ID + "_" + strings.Repeat("!", 43),
	} {
		_, err := ParseKey(in)
		if !errors.Is(err, ErrMalformedKey) {
			t.Errorf("%s: ParseKey = %v, want ErrMalformedKey", name, err)
		}
		if in != "" && strings.Contains(err.Error(), in) {
			t.Errorf("%s: the error repeats the input: %v", name, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for m, want := range map[string]Class{
		"/grpc.health.v1.Health/Check":                                                     ClassPublic,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":                        ClassPublic,
		"/agentassembly.v1.PolicyService/CheckAction":                                      ClassAgent,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": ClassAgent,
		"/agentassembly.v1.AuditService/TailAudit":                                         ClassViewer,
		"/agentassembly.v1.ApprovalService/Decide":                                         ClassOperator,
		"/agentassembly.v1.AdminService/CreateApiKey":                                      ClassAdmin,
		"/agentassembly.v1.AdminService/Unknown":                                           ClassUnknown,
		"GET /v1/nothing":                                                                  ClassUnknown,
	} {
		if got := Classify(m); got != want {
			t.Errorf("Classify(%s) = %s, want %s", m, got, want)
		}
	}
}

func TestCertIdentity(t *testing.T) {
	cert := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, u := range uris {
			p, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, p)
		}
		return c
	}
	if id, ok := CertIdentity(cert("spiffe://agent-assembly/agent/a/b/c", "aasm://role/operator/alice")); !ok || id.Role != RoleOperator || id.Name != "cert:alice" || id.Via != ViaClientCert {
		t.Fatalf("operator cert: %+v %v", id, ok)
	}
	for _, u := range []string{"spiffe://agent-assembly/agent/a/b/c", "aasm://role/root/alice", "aasm://role/admin/", "aasm://role/admin/a/b", "aasm://x/admin/alice", "https://role/admin/alice"} {
		if id, ok := CertIdentity(cert(u)); ok {
			t.Errorf("%s maps to %+v", u, id)
		}
	}
	if _, ok := CertIdentity(nil); ok {
		t.Error("nil cert maps to an identity")
	}
}

// auditLog records governance records in memory.
type auditLog struct {
	mu   sync.Mutex
	recs []string
}

func (a *auditLog) AuditRefusal(_ context.Context, _ action.AgentID, rule, reason string, payload []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recs = append(a.recs, rule+" "+reason+" "+string(payload))
	return nil
}

func (a *auditLog) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.recs...)
}

func addKey(t testing.TB, st storage.APIKeys, name string, role Role) Key {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAPIKey(t.Context(), &storage.APIKey{ID: k.ID, Name: name, Role: role.String(), Hash: k.Hash(), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuthorize(t *testing.T) {
	st := memory.New(memory.Options{})
	audit := &auditLog{}
	a, err := New(Options{Keys: st, Audit: audit, AuditBurst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	viewer := addKey(t, st, "v", RoleViewer)
	op := addKey(t, st, "o", RoleOperator)
	admin := addKey(t, st, "ops-admin", RoleAdmin)
	revoked := addKey(t, st, "gone", RoleAdmin)
	if _, err := st.RevokeAPIKey(t.Context(), revoked.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	wrongSecret := Key{ID: admin.ID, Secret: viewer.Secret}
	bearer := func(k Key) string { return "Bearer " + k.String() }

	cases := []struct {
		name, method, authz string
		want                codes.Code
		who                 string
	}{
		{"public no key", "/grpc.health.v1.Health/Check", "", codes.OK, ""},
		{"agent no key", "/agentassembly.v1.PolicyService/CheckAction", "", codes.OK, ""},
		{"agent with admin key is not an operator call", "/agentassembly.v1.PolicyService/CheckAction", bearer(admin), codes.OK, ""},
		{"viewer method no key", "/agentassembly.v1.AdminService/GetStatus", "", codes.Unauthenticated, ""},
		{"basic scheme", "/agentassembly.v1.AdminService/GetStatus", "Basic abc", codes.Unauthenticated, ""},
		{"garbled", "/agentassembly.v1.AdminService/GetStatus", "Bearer aak_nope", codes.Unauthenticated, ""},
		{"unknown id", "/agentassembly.v1.AdminService/GetStatus", "Bearer aak_0000000000000000_" + viewer.Secret, codes.Unauthenticated, ""},
		{"wrong secret", "/agentassembly.v1.AdminService/GetStatus", bearer(wrongSecret), codes.Unauthenticated, ""},
		{"revoked", "/agentassembly.v1.AdminService/GetStatus", bearer(revoked), codes.Unauthenticated, ""},
		{"viewer reads", "/agentassembly.v1.AdminService/GetStatus", bearer(viewer), codes.OK, "v"},
		{"viewer decides", "/agentassembly.v1.ApprovalService/Decide", bearer(viewer), codes.PermissionDenied, ""},
		{"operator decides", "/agentassembly.v1.ApprovalService/Decide", bearer(op), codes.OK, "o"},
		{"operator applies", "/agentassembly.v1.PolicyService/ApplyPolicy", bearer(op), codes.PermissionDenied, ""},
		{"admin applies", "/agentassembly.v1.PolicyService/ApplyPolicy", "bearer " + admin.String(), codes.OK, "ops-admin"},
		{"unclassified", "/agentassembly.v1.AdminService/Shutdown", bearer(admin), codes.PermissionDenied, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(audit.all())
			ctx, err := a.Authorize(t.Context(), Request{Method: tc.method, Surface: "grpc", Authorization: tc.authz, Source: "10.0.0.1"})
			if got := status.Code(err); got != tc.want {
				t.Fatalf("code %s (%v), want %s", got, err, tc.want)
			}
			if got := Principal(ctx); got != tc.who {
				t.Fatalf("Principal = %q, want %q", got, tc.who)
			}
			recs := audit.all()[before:]
			switch tc.want {
			case codes.OK:
				if len(recs) != 0 {
					t.Fatalf("a passed call was audited as refused: %v", recs)
				}
			case codes.Unauthenticated:
				if status.Convert(err).Message() != MsgUnauthenticated {
					t.Fatalf("message %q gives details", status.Convert(err).Message())
				}
				if len(recs) != 1 || !strings.HasPrefix(recs[0], RuleUnauthenticated) {
					t.Fatalf("audit = %v, want one %s record", recs, RuleUnauthenticated)
				}
			case codes.PermissionDenied:
				if len(recs) != 1 || !strings.HasPrefix(recs[0], RuleForbidden) {
					t.Fatalf("audit = %v, want one %s record", recs, RuleForbidden)
				}
			}
			for _, r := range recs {
				for _, k := range []Key{viewer, op, admin, revoked} {
					if strings.Contains(r, k.Secret) {
						t.Fatalf("audit record holds a secret: %s", r)
					}
				}
			}
		})
	}
	if got := status.Convert(mustErr(a.Authorize(t.Context(), Request{Method: "/agentassembly.v1.PolicyService/ApplyPolicy", Authorization: bearer(viewer)}))).Message(); got != "this call needs the admin role" {
		t.Fatalf("role message = %q", got)
	}
}

func mustErr(_ context.Context, err error) error { return err }

func TestAuthorizeDisabled(t *testing.T) {
	a, err := New(Options{Disabled: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := a.Authorize(t.Context(), Request{Method: "/agentassembly.v1.PolicyService/ApplyPolicy"})
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := IdentityFrom(ctx); !ok || id.Role != RoleAdmin || Principal(ctx) != "" {
		t.Fatalf("auth off identity %+v, principal %q", id, Principal(ctx))
	}
	if _, err := a.Authorize(t.Context(), Request{Method: "/x.Y/Z"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unclassified with auth off: %v", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a key store and auth on succeeded")
	}
}

func TestAuditFloodIsBounded(t *testing.T) {
	audit := &auditLog{}
	now := time.Unix(1e9, 0)
	a, err := New(Options{Keys: memory.New(memory.Options{}), Audit: audit, AuditRate: 1, AuditBurst: 5, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	req := Request{Method: "/agentassembly.v1.AdminService/GetStatus", Authorization: "Bearer junk", Source: "203.0.113.9"}
	for range 100 {
		_, _ = a.Authorize(t.Context(), req)
	}
	if n := len(audit.all()); n != 5 {
		t.Fatalf("100 refusals from one source in one instant wrote %d records, want the burst of 5", n)
	}
	other := req
	other.Source = "203.0.113.10"
	_, _ = a.Authorize(t.Context(), other)
	if n := len(audit.all()); n != 6 {
		t.Fatalf("another source's refusal was not audited (%d records)", n)
	}
	now = now.Add(time.Second)
	_, _ = a.Authorize(t.Context(), req)
	recs := audit.all()
	if len(recs) != 7 || !strings.Contains(recs[6], `"unaudited_before":95`) {
		t.Fatalf("after a second the next record should count the 95 skipped: %v", recs[len(recs)-1])
	}
}

func TestEnsureAdminConcurrent(t *testing.T) {
	st := memory.New(memory.Options{})
	var wg sync.WaitGroup
	results := make([]Bootstrap, 8)
	errs := make([]error, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = EnsureAdmin(t.Context(), st, nil, nil)
		}()
	}
	wg.Wait()
	created := 0
	for i, b := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if b.Created {
			created++
			if b.Generated.ID == "" {
				t.Fatal("created without a generated key")
			}
		}
	}
	keys, _ := st.ListAPIKeys(t.Context())
	if created != 1 || len(keys) != 1 || keys[0].Role != "admin" || keys[0].Name != BootstrapKeyName {
		t.Fatalf("8 replicas starting together created %d keys: %+v", created, keys)
	}
	// A later start with a given key does nothing: an admin exists.
	given, _ := NewKey()
	read := false
	if b, err := EnsureAdmin(t.Context(), st, func() (string, error) { read = true; return given.String(), nil }, nil); err != nil || b.Created || read {
		t.Fatalf("second start: %+v %v (key source read: %v; it must not be once an admin exists)", b, err, read)
	}
}

func TestEnsureAdminGivenKey(t *testing.T) {
	st := memory.New(memory.Options{})
	if _, err := EnsureAdmin(t.Context(), st, fixed("aak_not-a-key"), nil); !errors.Is(err, ErrMalformedKey) {
		t.Fatalf("malformed given key: %v", err)
	}
	given, _ := NewKey()
	b, err := EnsureAdmin(t.Context(), st, fixed(given.String()), nil)
	if err != nil || !b.Created || b.Generated.ID != "" || b.ID != given.ID {
		t.Fatalf("given key: %+v %v", b, err)
	}
	k, err := st.GetAPIKey(t.Context(), given.ID)
	if err != nil || !given.Matches(k.Hash) || k.Role != "admin" {
		t.Fatalf("stored %+v %v", k, err)
	}
	// Revoking the only admin key lets the next start create a new one.
	if _, err := st.RevokeAPIKey(t.Context(), given.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if b, err := EnsureAdmin(t.Context(), st, fixed(given.String()), nil); err == nil || b.Created {
		t.Fatalf("re-using a revoked key's id: %+v %v", b, err)
	}
}

func fixed(s string) func() (string, error) { return func() (string, error) { return s, nil } }
