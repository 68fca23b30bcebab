package server

import (
	"context"
	"crypto/ed25519"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func rotateTokenKey(t *testing.T, g *testGateway, revoke bool) *v1.TokenKeyRotation {
	t.Helper()
	r, err := v1.NewAdminServiceClient(g.conn).RotateTokenKey(context.Background(), &v1.RotateTokenKeyRequest{RevokePrevious: revoke})
	if err != nil {
		t.Fatalf("RotateTokenKey(revoke %v): %v", revoke, err)
	}
	return r
}

// reRegister registers r's agent again with its key and returns the new token.
func reRegister(t *testing.T, g *testGateway, r *registered) string {
	t.Helper()
	resp, err := lifecycle(g).Register(context.Background(), signedRegistration(t, g, r.id, r.key.Public().(ed25519.PublicKey), r.key))
	if err != nil {
		t.Fatalf("register %v again: %v", r.id, err)
	}
	return resp.GetCredentialToken()
}

// statusKeys returns the token keys the replica reports in GetStatus.
func statusKeys(t *testing.T, g *testGateway) []string {
	t.Helper()
	st, err := v1.NewAdminServiceClient(g.conn).GetStatus(context.Background(), &v1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetAuditCheckpointKeyId()) != 16 {
		t.Fatalf("GetStatus audit_checkpoint_key_id %q", st.GetAuditCheckpointKeyId())
	}
	return st.GetTokenKeyIds()
}

// checkAs runs one check with token and returns its gRPC code.
func checkAs(g *testGateway, token string) codes.Code {
	_, err := g.client.CheckAction(context.Background(), toolCall(coder, token))
	return status.Code(err)
}

// A rotation keeps earlier tokens working until a revoking rotation, which
// ends them at once, cached verifications included; both are audited.
func TestTokenKeyRotation(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	reg := register(t, g, coder, nil)
	first := reg.token
	if c := checkAs(g, first); c != codes.OK {
		t.Fatalf("check before rotation: %v", c) // and now cached
	}
	r1 := rotateTokenKey(t, g, false)
	if r1.GetKeyId() == "" || r1.GetPreviousKeyId() == "" || r1.GetKeyId() == r1.GetPreviousKeyId() || len(r1.GetRevokedKeyIds()) != 0 {
		t.Fatalf("rotation: %+v, want a new key and the old one kept", r1)
	}
	if ids := statusKeys(t, g); !slices.Equal(ids, []string{r1.GetKeyId(), r1.GetPreviousKeyId()}) {
		t.Fatalf("GetStatus token keys %v, want %s then %s", ids, r1.GetKeyId(), r1.GetPreviousKeyId())
	}
	second := reRegister(t, g, reg)
	for name, tok := range map[string]string{"first": first, "second": second} {
		if c := checkAs(g, tok); c != codes.OK {
			t.Fatalf("%s token after a rotation: %v, want OK", name, c)
		}
	}

	r2 := rotateTokenKey(t, g, true)
	if r2.GetPreviousKeyId() != "" || !slices.Equal(r2.GetRevokedKeyIds(), []string{r1.GetKeyId(), r1.GetPreviousKeyId()}) {
		t.Fatalf("revoking rotation: %+v, want %s and %s revoked", r2, r1.GetKeyId(), r1.GetPreviousKeyId())
	}
	for name, tok := range map[string]string{"first": first, "second": second} {
		if c := checkAs(g, tok); c != codes.Unauthenticated {
			t.Fatalf("%s token after revocation: %v, want Unauthenticated", name, c)
		}
	}
	if ids := statusKeys(t, g); !slices.Equal(ids, []string{r2.GetKeyId()}) {
		t.Fatalf("GetStatus token keys after revocation %v, want only %s", ids, r2.GetKeyId())
	}
	if c := checkAs(g, reRegister(t, g, reg)); c != codes.OK {
		t.Fatalf("a token issued after revocation: %v", c)
	}

	recs, err := v1.NewAuditServiceClient(g.conn).ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{Event: "governance"}, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var rotations int
	for _, r := range recs.GetRecords() {
		if r.GetRuleId() == "token-key.rotate" {
			rotations++
		}
	}
	if rotations != 2 {
		t.Fatalf("%d token-key.rotate governance records, want 2", rotations)
	}
}

// A token signed with a key rotated in on one replica verifies at once on
// another; a revocation reaches the other replica too.
func TestTokenKeyRotationAcrossReplicas(t *testing.T) {
	a, b := sharedReplicasWith(t, tokenMode)
	reg := register(t, a, coder, nil)
	old := reg.token
	if c := checkAs(b, old); c != codes.OK {
		t.Fatalf("token from a on b: %v", c)
	}
	rotateTokenKey(t, a, false)
	fresh := reRegister(t, a, reg)
	if c := checkAs(b, fresh); c != codes.OK {
		t.Fatalf("a token signed with the new key, on the replica that did not rotate: %v, want OK", c)
	}
	if c := checkAs(b, old); c != codes.OK {
		t.Fatalf("the old token on b: %v", c)
	}
	time.Sleep(1100 * time.Millisecond) // b reloads on unknown signatures at most once a second
	rotateTokenKey(t, a, true)
	newest := reRegister(t, a, reg)
	if c := checkAs(b, newest); c != codes.OK { // b reloads on the unknown key, dropping the revoked ones
		t.Fatalf("a token after revocation, on b: %v", c)
	}
	for name, tok := range map[string]string{"old": old, "fresh": fresh} {
		if c := checkAs(b, tok); c != codes.Unauthenticated {
			t.Fatalf("%s token on b after b learnt of the revocation: %v, want Unauthenticated", name, c)
		}
	}
}
