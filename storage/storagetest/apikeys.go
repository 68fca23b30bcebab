package storagetest

import (
	"bytes"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// RunAPIKeys runs the operator API key cases. Hooks used: Reopen (a
// revocation through one instance is seen by another at once).
func RunAPIKeys[S storage.APIKeys](t *testing.T, newKeys func(t *testing.T) S, opts ...Option) {
	c := newConfig(opts)
	t.Run("Lifecycle", func(t *testing.T) { testAPIKeyLifecycle(t, newKeys(t)) })
	t.Run("Invalid", func(t *testing.T) { testAPIKeyInvalid(t, newKeys(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newKeys(t)
		b := second(t, c, a)
		ctx := testContext(t)
		id := uniq("shared")
		check(t, "CreateAPIKey", a.CreateAPIKey(ctx, &storage.APIKey{ID: id, Name: "ci", Role: "viewer", Hash: []byte("h1"), CreatedAt: base}))
		got, err := b.GetAPIKey(ctx, id)
		check(t, "GetAPIKey on the second instance", err)
		if got.Revoked() {
			t.Fatal("fresh key reads as revoked on the second instance")
		}
		_, err = a.RevokeAPIKey(ctx, id, base.Add(time.Minute))
		check(t, "RevokeAPIKey", err)
		got, err = b.GetAPIKey(ctx, id)
		check(t, "GetAPIKey on the second instance after revoke", err)
		if !got.Revoked() {
			t.Fatal("a revocation through one instance is not seen by the other")
		}
	})
}

func testAPIKeyLifecycle(t *testing.T, s storage.APIKeys) {
	ctx := testContext(t)
	_, err := s.GetAPIKey(ctx, "nope")
	checkIs(t, "GetAPIKey(unknown)", err, storage.ErrNotFound)
	list, err := s.ListAPIKeys(ctx)
	check(t, "ListAPIKeys(empty)", err)
	if len(list) != 0 {
		t.Fatalf("ListAPIKeys of an empty store = %v", list)
	}

	admin := &storage.APIKey{ID: "k2admin", Name: "bootstrap", Role: "admin", Hash: []byte{0, 1, 2, 0xff}, CreatedAt: base, CreatedBy: "gateway"}
	ci := &storage.APIKey{ID: "k1ci", Name: "ci", Role: "viewer", Hash: []byte("hash-ci"), CreatedAt: base.Add(time.Second), CreatedBy: "bootstrap"}
	check(t, "CreateAPIKey", s.CreateAPIKey(ctx, ci))
	check(t, "CreateAPIKey", s.CreateAPIKey(ctx, admin))
	checkIs(t, "CreateAPIKey(duplicate id)", s.CreateAPIKey(ctx, &storage.APIKey{ID: "k1ci", Name: "x", Role: "admin", Hash: []byte("x"), CreatedAt: base}), storage.ErrConflict)

	got, err := s.GetAPIKey(ctx, "k1ci")
	check(t, "GetAPIKey", err)
	if got.Name != "ci" || got.Role != "viewer" || !bytes.Equal(got.Hash, []byte("hash-ci")) || !got.CreatedAt.Equal(ci.CreatedAt) ||
		got.CreatedBy != "bootstrap" || got.Revoked() || !got.LastUsedAt.IsZero() || !got.RotatedAt.IsZero() {
		t.Fatalf("GetAPIKey = %+v, want %+v", got, ci)
	}
	got.Hash[0] = 'X' // the caller's copy, not the store's
	if again, _ := s.GetAPIKey(ctx, "k1ci"); !bytes.Equal(again.Hash, []byte("hash-ci")) {
		t.Fatal("changing a returned key changed the stored one")
	}

	list, err = s.ListAPIKeys(ctx)
	check(t, "ListAPIKeys", err)
	if len(list) != 2 || list[0].ID != "k2admin" || list[1].ID != "k1ci" {
		t.Fatalf("ListAPIKeys = %v, want k2admin then k1ci (oldest first)", keyIDs(list))
	}

	used := base.Add(time.Hour)
	check(t, "TouchAPIKey", s.TouchAPIKey(ctx, "k1ci", used))
	checkIs(t, "TouchAPIKey(unknown)", s.TouchAPIKey(ctx, "nope", used), storage.ErrNotFound)
	if got, _ := s.GetAPIKey(ctx, "k1ci"); !got.LastUsedAt.Equal(used) {
		t.Fatalf("LastUsedAt = %v, want %v", got.LastUsedAt, used)
	}

	rot := base.Add(2 * time.Hour)
	got, err = s.RotateAPIKey(ctx, "k1ci", []byte("hash-2"), rot)
	check(t, "RotateAPIKey", err)
	if !bytes.Equal(got.Hash, []byte("hash-2")) || !got.RotatedAt.Equal(rot) || got.Role != "viewer" || got.Name != "ci" {
		t.Fatalf("RotateAPIKey = %+v", got)
	}
	if got, _ := s.GetAPIKey(ctx, "k1ci"); !bytes.Equal(got.Hash, []byte("hash-2")) {
		t.Fatal("rotation not stored")
	}
	_, err = s.RotateAPIKey(ctx, "nope", []byte("h"), rot)
	checkIs(t, "RotateAPIKey(unknown)", err, storage.ErrNotFound)

	rev := base.Add(3 * time.Hour)
	got, err = s.RevokeAPIKey(ctx, "k1ci", rev)
	check(t, "RevokeAPIKey", err)
	if !got.Revoked() || !got.RevokedAt.Equal(rev) {
		t.Fatalf("RevokeAPIKey = %+v", got)
	}
	got, err = s.RevokeAPIKey(ctx, "k1ci", rev.Add(time.Hour))
	check(t, "RevokeAPIKey(again)", err)
	if !got.RevokedAt.Equal(rev) {
		t.Fatalf("revoking again moved RevokedAt to %v, want the first %v", got.RevokedAt, rev)
	}
	_, err = s.RevokeAPIKey(ctx, "nope", rev)
	checkIs(t, "RevokeAPIKey(unknown)", err, storage.ErrNotFound)
	_, err = s.RotateAPIKey(ctx, "k1ci", []byte("hash-3"), rev)
	checkIs(t, "RotateAPIKey(revoked)", err, storage.ErrConflict)
	if got, _ := s.GetAPIKey(ctx, "k1ci"); !bytes.Equal(got.Hash, []byte("hash-2")) || !got.Revoked() {
		t.Fatalf("a refused rotation changed the key: %+v", got)
	}
	if got, _ := s.GetAPIKey(ctx, "k2admin"); got.Revoked() {
		t.Fatal("revoking one key revoked another")
	}
}

func testAPIKeyInvalid(t *testing.T, s storage.APIKeys) {
	ctx := testContext(t)
	for name, k := range map[string]*storage.APIKey{
		"no id":   {Name: "n", Role: "admin", Hash: []byte("h"), CreatedAt: base},
		"no name": {ID: "i", Role: "admin", Hash: []byte("h"), CreatedAt: base},
		"no role": {ID: "i", Name: "n", Hash: []byte("h"), CreatedAt: base},
		"no hash": {ID: "i", Name: "n", Role: "admin", CreatedAt: base},
	} {
		checkIs(t, "CreateAPIKey("+name+")", s.CreateAPIKey(ctx, k), storage.ErrInvalid)
	}
	check(t, "CreateAPIKey", s.CreateAPIKey(ctx, &storage.APIKey{ID: "i", Name: "n", Role: "admin", Hash: []byte("h"), CreatedAt: base}))
	_, err := s.RotateAPIKey(ctx, "i", nil, base)
	checkIs(t, "RotateAPIKey(empty hash)", err, storage.ErrInvalid)
	list, err := s.ListAPIKeys(ctx)
	check(t, "ListAPIKeys", err)
	if len(list) != 1 {
		t.Fatalf("invalid keys were stored: %v", keyIDs(list))
	}
}

func keyIDs(ks []*storage.APIKey) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = k.ID
	}
	return out
}
