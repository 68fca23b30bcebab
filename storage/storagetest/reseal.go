package storagetest

import (
	"errors"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

// OpenSealed opens a driver's secret store with sealer: on a new backend
// when on is nil, else on the backend on uses (as a gateway restarted with
// another key configuration would). A driver whose backend lives in its
// Store (memory) may instead switch on's sealer and return on.
type OpenSealed func(t *testing.T, sealer storage.Sealer, on storage.Secrets) storage.Secrets

// RunSecretsReseal runs the key rotation case: secrets sealed with key A
// are read with B current and A retired, ResealSecrets rewrites them under
// B keeping values and versions, and then B alone opens everything; a key
// that opens nothing makes ResealSecrets name the secrets it cannot open.
func RunSecretsReseal(t *testing.T, open OpenSealed) {
	t.Run("Reseal", func(t *testing.T) {
		keys := make([]secretbox.Key, 3)
		for i := range keys {
			k, err := secretbox.GenerateKey()
			check(t, "GenerateKey", err)
			keys[i] = k
		}
		box := func(k ...secretbox.Key) storage.Sealer {
			b, err := secretbox.New(k[0], k[1:]...)
			check(t, "secretbox.New", err)
			return b
		}
		ctx := testContext(t)
		a := open(t, box(keys[0]), nil)
		want := map[string]string{"openai": "sk-one", "anthropic": "sk-two"}
		for name, v := range want {
			check(t, "PutSecret", a.PutSecret(ctx, name, []byte(v)))
		}
		check(t, "PutSecret", a.PutSecret(ctx, "openai", []byte(want["openai"]))) // version 2
		before, err := a.ListSecrets(ctx)
		check(t, "ListSecrets", err)
		if n, err := a.ResealSecrets(ctx); n != 0 || err != nil {
			t.Fatalf("ResealSecrets with nothing to do = %d, %v", n, err)
		}

		rotated := open(t, box(keys[1], keys[0]), a)
		check(t, "PutSecret", rotated.PutSecret(ctx, "mistral", []byte("sk-three"))) // sealed with B already
		want["mistral"] = "sk-three"
		n, err := rotated.ResealSecrets(ctx)
		if n != 2 || err != nil {
			t.Fatalf("ResealSecrets after rotation = %d, %v; want the 2 secrets sealed with the old key", n, err)
		}
		after, err := rotated.ListSecrets(ctx)
		check(t, "ListSecrets", err)
		for _, m := range before {
			i := indexOf(after, m.Name)
			if i < 0 || after[i].Version != m.Version {
				t.Fatalf("%s: version %d before resealing, %+v after: the value did not change, so neither may its version", m.Name, m.Version, after)
			}
		}
		if n, err := rotated.ResealSecrets(ctx); n != 0 || err != nil {
			t.Fatalf("second ResealSecrets = %d, %v; want nothing left", n, err)
		}

		only := open(t, box(keys[1]), a)
		for name, v := range want {
			got, err := only.GetSecret(ctx, name)
			if err != nil || string(got) != v {
				t.Fatalf("GetSecret(%s) with only the new key = %q, %v; want %q", name, got, err, v)
			}
		}

		wrong := open(t, box(keys[2]), a)
		if _, err := wrong.GetSecret(ctx, "openai"); !errors.Is(err, secretbox.ErrDecrypt) {
			t.Fatalf("GetSecret with an unrelated key: %v, want ErrDecrypt", err)
		}
		n, err = wrong.ResealSecrets(ctx)
		if n != 0 || err == nil || !strings.Contains(err.Error(), "openai") || !strings.Contains(err.Error(), "mistral") {
			t.Fatalf("ResealSecrets with an unrelated key = %d, %v; want an error naming each secret", n, err)
		}
		if got, err := open(t, box(keys[1]), a).GetSecret(ctx, "anthropic"); err != nil || string(got) != "sk-two" {
			t.Fatalf("a failed reseal changed a secret: %q, %v", got, err)
		}
	})
}

func indexOf(ms []storage.SecretMeta, name string) int {
	for i, m := range ms {
		if m.Name == name {
			return i
		}
	}
	return -1
}
