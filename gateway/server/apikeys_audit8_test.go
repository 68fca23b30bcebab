package server

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
)

// TestAPIKeysHashedAtRest creates and rotates a key on a gateway with a
// SQLite store, then reads the store: it holds the SHA-256 of the current
// secret, and neither secret appears in any file of the data directory
// (database, WAL, audit journal). The list API never returns a secret.
func TestAPIKeysHashedAtRest(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := t.Context()
	admin := v1.NewAdminServiceClient(g.conn)
	created, err := admin.CreateApiKey(ctx, &v1.CreateApiKeyRequest{Name: "at-rest", Role: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := admin.RotateApiKey(ctx, &v1.RotateApiKeyRequest{Id: created.GetKey().GetId()})
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{secretOf(created.GetSecret()), secretOf(rotated.GetSecret())}
	if secrets[0] == "" || secrets[1] == "" || secrets[0] == secrets[1] {
		t.Fatalf("secrets %q", secrets)
	}
	stored, err := g.srv.Store().GetAPIKey(ctx, created.GetKey().GetId())
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(secrets[1]))
	if !bytes.Equal(stored.Hash, want[:]) || !bytes.Equal(stored.Hash, auth.HashSecret(secrets[1])) {
		t.Fatalf("stored hash %x, want the SHA-256 of the rotated secret %x", stored.Hash, want)
	}
	list, err := admin.ListApiKeys(ctx, &v1.ListApiKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if strings.Contains(list.String(), s) {
			t.Fatalf("ListApiKeys shows a secret: %v", list)
		}
	}
	// Stop the gateway so that everything it wrote is in the files.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(strings.TrimPrefix(g.cfg.Store, "sqlite:"))
	files := 0
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a key secret in plain text", path)
			}
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Fatalf("read %s: %d files, %v", dir, files, err)
	}
}
