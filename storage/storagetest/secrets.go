package storagetest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"slices"
	"testing"

	"github.com/agent-assembly/agent-assembly/storage"
)

// RunSecrets runs the secret store cases. Hooks used: RawSecrets (nothing
// stored contains a plaintext), Reopen.
func RunSecrets[S storage.Secrets](t *testing.T, newSecrets func(t *testing.T) S, opts ...Option) {
	c := newConfig(opts)
	t.Run("RoundTrip", func(t *testing.T) { testSecretsRoundTrip(t, newSecrets(t)) })
	t.Run("EncryptedAtRest", func(t *testing.T) {
		if c.rawSecrets == nil {
			t.Skip("driver provides no storagetest.RawSecrets hook")
		}
		s := newSecrets(t)
		testSecretsAtRest(t, s, func() [][]byte { return c.rawSecrets(t, s) })
	})
	t.Run("SharedBackend", func(t *testing.T) {
		a := newSecrets(t)
		b := second(t, c, a)
		ctx := testContext(t)
		check(t, "PutSecret", a.PutSecret(ctx, "shared", []byte("v")))
		got, err := b.GetSecret(ctx, "shared")
		check(t, "GetSecret on the second instance", err)
		if string(got) != "v" {
			t.Fatalf("second instance reads %q, want v", got)
		}
	})
}

func testSecretsRoundTrip(t *testing.T, s storage.Secrets) {
	ctx := testContext(t)
	_, err := s.GetSecret(ctx, "openai")
	checkIs(t, "GetSecret(unknown)", err, storage.ErrNotFound)
	list, err := s.ListSecrets(ctx)
	check(t, "ListSecrets(empty)", err)
	if len(list) != 0 {
		t.Fatalf("ListSecrets of an empty store = %v", list)
	}

	binary := []byte{0, 1, 2, 0xff, 0xfe, 0}
	check(t, "PutSecret", s.PutSecret(ctx, "openai", []byte("sk-first")))
	check(t, "PutSecret", s.PutSecret(ctx, "github", binary))
	check(t, "PutSecret", s.PutSecret(ctx, "openai", []byte("sk-second")))
	check(t, "PutSecret(empty value)", s.PutSecret(ctx, "empty", nil))
	checkIs(t, "PutSecret(no name)", s.PutSecret(ctx, "", []byte("x")), storage.ErrInvalid)

	for name, want := range map[string][]byte{"openai": []byte("sk-second"), "github": binary, "empty": nil} {
		got, err := s.GetSecret(ctx, name)
		check(t, "GetSecret", err)
		if !bytes.Equal(got, want) {
			t.Fatalf("GetSecret(%s) = %q, want %q", name, got, want)
		}
	}
	got, err := s.GetSecret(ctx, "openai")
	check(t, "GetSecret", err)
	got[0] = 'X'
	again, err := s.GetSecret(ctx, "openai")
	check(t, "GetSecret", err)
	if string(again) != "sk-second" {
		t.Fatal("changing a returned secret changed the store")
	}

	list, err = s.ListSecrets(ctx)
	check(t, "ListSecrets", err)
	var names []string
	versions := map[string]int64{}
	for _, m := range list {
		names = append(names, m.Name)
		versions[m.Name] = m.Version
		if m.UpdatedAt.IsZero() {
			t.Fatalf("secret %s has no UpdatedAt", m.Name)
		}
	}
	if !slices.Equal(names, []string{"empty", "github", "openai"}) {
		t.Fatalf("ListSecrets = %v, want [empty github openai] (by name)", names)
	}
	if versions["openai"] != 2 || versions["github"] != 1 {
		t.Fatalf("versions = %v, want openai 2 (replaced once) and github 1", versions)
	}

	check(t, "DeleteSecret", s.DeleteSecret(ctx, "openai"))
	_, err = s.GetSecret(ctx, "openai")
	checkIs(t, "GetSecret(deleted)", err, storage.ErrNotFound)
	checkIs(t, "DeleteSecret(unknown)", s.DeleteSecret(ctx, "openai"), storage.ErrNotFound)
	list, err = s.ListSecrets(ctx)
	check(t, "ListSecrets", err)
	if len(list) != 2 {
		t.Fatalf("ListSecrets after delete = %v, want 2 entries", list)
	}
	// A deleted name starts again at version 1.
	check(t, "PutSecret", s.PutSecret(ctx, "openai", []byte("sk-third")))
	list, err = s.ListSecrets(ctx)
	check(t, "ListSecrets", err)
	for _, m := range list {
		if m.Name == "openai" && m.Version != 1 {
			t.Fatalf("re-created secret has version %d, want 1", m.Version)
		}
	}
}

func testSecretsAtRest(t *testing.T, s storage.Secrets, raw func() [][]byte) {
	ctx := testContext(t)
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	plain := "sk-live-" + hex.EncodeToString(rnd[:])
	check(t, "PutSecret", s.PutSecret(ctx, "provider-key", []byte(plain)))
	check(t, "PutSecret", s.PutSecret(ctx, "other-key", []byte(plain+"-2")))
	stored := raw()
	if len(stored) == 0 {
		t.Fatal("RawSecrets hook returned nothing: it must return the bytes the backend stores")
	}
	needle := []byte(plain[:20])
	for i, b := range stored {
		if bytes.Contains(b, needle) {
			t.Fatalf("raw stored bytes %d contain the plaintext secret", i)
		}
		if bytes.Contains(b, []byte(hex.EncodeToString(needle))) {
			t.Fatalf("raw stored bytes %d contain the plaintext secret in hex", i)
		}
	}
	got, err := s.GetSecret(ctx, "provider-key")
	check(t, "GetSecret", err)
	if string(got) != plain {
		t.Fatal("secret did not round-trip")
	}
}
