package server

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
)

// newKeyFile writes a fresh secrets key to dir/name.
func newKeyFile(t *testing.T, dir, name string) string {
	t.Helper()
	k, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(secretbox.EncodeKey(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSecretsKeyRotation rotates the secrets key of a gateway on SQLite as
// docs/operations.md says: restart with the new key and the old one in
// --secrets-extra-key-files (every secret, the token-signing key among them,
// is resealed), then restart with the new key alone.
func TestSecretsKeyRotation(t *testing.T) {
	dir := t.TempDir()
	keyA, keyB, keyC := newKeyFile(t, dir, "a.key"), newKeyFile(t, dir, "b.key"), newKeyFile(t, dir, "c.key")
	with := func(key string, old ...string) func(*Config) {
		return func(c *Config) {
			c.Store = "sqlite:" + filepath.Join(dir, "aa.db")
			c.SecretsKeyFile, c.SecretsExtraKeyFiles = key, old
		}
	}
	ctx := context.Background()

	g := startGateway(t, examplesDir(t), with(keyA))
	if _, err := v1.NewSecretsServiceClient(g.conn).PutSecret(ctx, &v1.PutSecretRequest{Name: "OPENAI_KEY", Value: []byte("sk-test-123")}); err != nil {
		t.Fatal(err)
	}
	before, err := g.srv.Store().ListSecrets(ctx)
	if err != nil || len(before) < 2 { // OPENAI_KEY and the token-signing key
		t.Fatalf("secrets before rotation: %v %v", before, err)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}

	// The new key alone cannot open what the old one sealed.
	cfg := DefaultConfig()
	with(keyB)(&cfg)
	cfg.PolicyPath, cfg.AdminKeyFile, cfg.BootstrapAdminKey = examplesDir(t), "none", testAdminKey
	if srv, err := New(ctx, cfg, slog.New(slog.DiscardHandler)); err == nil {
		srv.Close()
		t.Fatal("gateway started with a key that opens none of its secrets")
	} else if !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("start with the wrong key: %v, want it to say the sealing key is not configured", err)
	}

	g = startGateway(t, examplesDir(t), with(keyB, keyA))
	after, err := g.srv.Store().ListSecrets(ctx)
	if err != nil || len(after) != len(before) {
		t.Fatalf("secrets after rotation: %v %v", after, err)
	}
	for i := range before {
		if after[i].Name != before[i].Name || after[i].Version != before[i].Version {
			t.Fatalf("secret %s: version %d before, %+v after: resealing keeps the version", before[i].Name, before[i].Version, after[i])
		}
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}

	g = startGateway(t, examplesDir(t), with(keyB)) // the old key file is no longer needed
	got, err := g.srv.Store().GetSecret(ctx, "OPENAI_KEY")
	if err != nil || string(got) != "sk-test-123" {
		t.Fatalf("secret with the new key alone: %q %v", got, err)
	}
	if _, err := g.srv.Store().GetSecret(ctx, identity.SigningKeySecret); err != nil {
		t.Fatalf("token-signing key with the new key alone: %v", err)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		old  []string
		want string
	}{
		{[]string{filepath.Join(dir, "missing.key")}, "missing.key"},
		{[]string{keyB}, "holds the current key"},
		{[]string{keyC, filepath.Join(dir, "aa.db")}, "aa.db"},
	} {
		cfg := DefaultConfig()
		with(keyB, tc.old...)(&cfg)
		cfg.PolicyPath, cfg.AdminKeyFile, cfg.BootstrapAdminKey = examplesDir(t), "none", testAdminKey
		srv, err := New(ctx, cfg, slog.New(slog.DiscardHandler))
		if err == nil {
			srv.Close()
			t.Fatalf("old keys %v accepted", tc.old)
		}
		if !strings.Contains(err.Error(), "--secrets-extra-key-files") || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("old keys %v: %v, want an error naming --secrets-extra-key-files and %s", tc.old, err, tc.want)
		}
	}
}

// TestSecretsKeyRotationAcrossReplicas rolls a new secrets key over two
// replicas on one PostgreSQL as docs/operations.md says: first every replica
// learns the new key without resealing, then a replica that seals with it
// reseals everything, which the replicas still sealing with the old key can
// read, and which a restart of one of them does not undo.
func TestSecretsKeyRotationAcrossReplicas(t *testing.T) {
	pgURL, redisURL := os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pgURL == "" || redisURL == "" {
		t.Skip("AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	name, store := pgtest.Schema(t, "keyrotation")
	dir := t.TempDir()
	oldKey, newKey := newKeyFile(t, dir, "old.key"), newKeyFile(t, dir, "new.key")
	replica := func(id, key string, reseal bool, extra ...string) *testGateway {
		return startGateway(t, examplesDir(t), func(c *Config) {
			c.Store, c.Counters = store, pgtest.WithParam(redisURL, "prefix", name+":")
			c.ReplicaID = id
			c.SecretsKeyFile, c.SecretsExtraKeyFiles, c.SecretsReseal = key, extra, reseal
		})
	}
	ctx := context.Background()
	secret := func(g *testGateway) string {
		t.Helper()
		v, err := g.srv.Store().GetSecret(ctx, "OPENAI_KEY")
		if err != nil {
			t.Fatalf("replica %s reads the secret: %v", g.cfg.ReplicaID, err)
		}
		return string(v)
	}

	a := replica("gw-a", oldKey, true)
	if _, err := v1.NewSecretsServiceClient(a.conn).PutSecret(ctx, &v1.PutSecretRequest{Name: "OPENAI_KEY", Value: []byte("sk-1")}); err != nil {
		t.Fatal(err)
	}
	// Phase 1: a learns the new key (it reseals nothing).
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	a = replica("gw-a", oldKey, false, newKey)
	// Phase 2: b seals with the new key and reseals what the old one sealed.
	b := replica("gw-b", newKey, true, oldKey)
	if secret(a) != "sk-1" || secret(b) != "sk-1" {
		t.Fatal("secret changed by resealing")
	}
	// a restarts while still in phase 1: nothing goes back to the old key.
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	a = replica("gw-a", oldKey, false, newKey)
	if secret(a) != "sk-1" {
		t.Fatal("secret changed")
	}
	// Phase 3: the new key alone opens everything, the token-signing key too
	// (a replica does not start without it).
	c := replica("gw-c", newKey, true)
	if secret(c) != "sk-1" {
		t.Fatal("secret changed")
	}
}
