package identity_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// issuerOn returns an issuer loading its keys from st, as a replica does.
func issuerOn(t *testing.T, st identity.KeyStore, reloads *atomic.Int64) *identity.Issuer {
	t.Helper()
	cur, prev, err := identity.LoadSigningKeys(t.Context(), st)
	if err != nil {
		t.Fatal(err)
	}
	var iss *identity.Issuer
	iss, err = identity.NewIssuer(cur, identity.Options{Reload: func(ctx context.Context) error {
		reloads.Add(1)
		cur, prev, err := identity.LoadSigningKeys(ctx, st)
		if err == nil {
			_, _, err = iss.SetKeys(cur, prev)
		}
		return err
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := iss.SetKeys(cur, prev); err != nil {
		t.Fatal(err)
	}
	return iss
}

func TestRotateKeepsPreviousTokensValid(t *testing.T) {
	st := memory.New(memory.Options{})
	var reloadsA, reloadsB atomic.Int64
	a, b := issuerOn(t, st, &reloadsA), issuerOn(t, st, &reloadsB) // two replicas
	old, _, err := a.Issue(coder)
	if err != nil {
		t.Fatal(err)
	}
	oldID := a.KeyIDs()[0]

	cur, prev, err := identity.RotateSigningKey(t.Context(), st, false)
	if err != nil || prev == nil {
		t.Fatalf("rotate: %v (previous %x)", err, prev)
	}
	changed, removed, err := a.SetKeys(cur, prev)
	if err != nil || !changed || removed {
		t.Fatalf("SetKeys after a rotation: changed %v removed %v err %v, want changed and nothing removed", changed, removed, err)
	}
	if ids := a.KeyIDs(); len(ids) != 2 || ids[1] != oldID || ids[0] == oldID {
		t.Fatalf("key ids %v, want a new key then %s", ids, oldID)
	}
	fresh, _, err := a.Issue(coder)
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"old": old, "fresh": fresh} {
		if _, err := a.VerifyToken(t.Context(), tok); err != nil {
			t.Errorf("%s token on the rotating replica: %v", name, err)
		}
	}
	// Replica b has not reloaded yet: the fresh token's unknown signature
	// makes it reload once, and then it verifies.
	if _, err := b.VerifyToken(t.Context(), fresh); err != nil || reloadsB.Load() != 1 {
		t.Fatalf("fresh token on the other replica: %v after %d reloads, want it verified after 1", err, reloadsB.Load())
	}
	if _, err := b.VerifyToken(t.Context(), old); err != nil {
		t.Fatalf("old token on the other replica after its reload: %v", err)
	}
	// Forged tokens cannot make a replica reload more than once a second.
	forged := fresh[:len(fresh)-4] + "AAAA"
	for range 5 {
		if _, err := b.VerifyToken(t.Context(), forged); !errors.Is(err, identity.ErrBadSignature) {
			t.Fatalf("forged token: %v, want ErrBadSignature", err)
		}
	}
	if n := reloadsB.Load(); n > 2 {
		t.Fatalf("5 forged tokens within a second caused %d reloads, want at most 1 more", n-1)
	}
}

func TestRotateRevokingPrevious(t *testing.T) {
	st := memory.New(memory.Options{})
	var reloads atomic.Int64
	a := issuerOn(t, st, &reloads)
	first, _, _ := a.Issue(coder)
	cur, prev, err := identity.RotateSigningKey(t.Context(), st, false)
	if err != nil {
		t.Fatal(err)
	}
	a.SetKeys(cur, prev)
	second, _, _ := a.Issue(coder)

	// The key just rotated away cannot be rotated again (a concurrent call
	// that read it would otherwise store a key that is then lost).
	if err := st.PutSecret(t.Context(), identity.SigningKeySecret, prev); err != nil {
		t.Fatal(err)
	}
	if _, _, err := identity.RotateSigningKey(t.Context(), st, true); !errors.Is(err, identity.ErrRotationInProgress) {
		t.Fatalf("rotating the same key twice: %v, want ErrRotationInProgress", err)
	}
	if err := st.PutSecret(t.Context(), identity.SigningKeySecret, cur); err != nil {
		t.Fatal(err)
	}

	// The leak response, right after the first rotation: both earlier keys go.
	cur, prev, err = identity.RotateSigningKey(t.Context(), st, true)
	if err != nil || prev != nil {
		t.Fatalf("revoking rotation: %v, previous %x, want none", err, prev)
	}
	if _, err := st.GetSecret(t.Context(), identity.PreviousSigningKeySecret); err == nil {
		t.Fatal("the previous key is still stored after a revoking rotation")
	}
	changed, removed, err := a.SetKeys(cur, prev)
	if err != nil || !changed || !removed {
		t.Fatalf("SetKeys after revocation: changed %v removed %v err %v, want both", changed, removed, err)
	}
	for name, tok := range map[string]string{"first": first, "second": second} {
		if _, err := a.Parse(tok); !errors.Is(err, identity.ErrBadSignature) {
			t.Errorf("%s token after revocation: %v, want ErrBadSignature", name, err)
		}
	}
	if !a.PublicKey().Equal(ed25519.NewKeyFromSeed(cur).Public()) || len(a.KeyIDs()) != 1 {
		t.Fatalf("after revocation: key ids %v, want only the new signing key", a.KeyIDs())
	}
}
