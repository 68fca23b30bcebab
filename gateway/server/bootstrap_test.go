package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

// TestBootstrapGeneratesAdminKeyOnce starts a gateway on an empty SQLite
// store with no key given: it shows a generated admin key once, writes it
// to a 0600 file, and the key works; a restart on the same store shows
// nothing new and the old key still works.
func TestBootstrapGeneratesAdminKeyOnce(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "data", "admin.key")
	out := &syncbuf.Buffer{}
	mod := func(c *Config) {
		c.Store, c.SecretsKeyFile = "sqlite:"+filepath.Join(dir, "aa.db"), filepath.Join(dir, "secrets.key")
		c.BootstrapAdminKey, c.AdminKeyFile, c.KeyOut = "", keyFile, out
	}
	g := startGateway(t, examplesDir(t), mod)
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("admin key file: %v", err)
	}
	key := strings.TrimSpace(string(b))
	if _, err := auth.ParseKey(key); err != nil {
		t.Fatalf("admin key file holds %q: %v", key, err)
	}
	if st, _ := os.Stat(keyFile); st.Mode().Perm() != 0o600 {
		t.Fatalf("admin key file mode %v, want 0600", st.Mode().Perm())
	}
	if n := strings.Count(out.String(), key); n != 1 || !strings.Contains(out.String(), "bootstrap admin key") || !strings.Contains(out.String(), "aasm login --key-file "+keyFile) {
		t.Fatalf("stderr shows the key %d times (want once, in the marked block):\n%s", n, out.String())
	}
	ctx := withKey(t.Context(), key)
	admin := v1.NewAdminServiceClient(bareConn(t, g))
	list, err := admin.ListApiKeys(ctx, &v1.ListApiKeysRequest{})
	if err != nil || len(list.GetKeys()) != 1 || list.GetKeys()[0].GetName() != auth.BootstrapKeyName || list.GetKeys()[0].GetRole() != "admin" {
		t.Fatalf("keys after bootstrap: %v %v", list, err)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}

	out2 := &syncbuf.Buffer{}
	g2 := startGateway(t, examplesDir(t), func(c *Config) { mod(c); c.KeyOut = out2 })
	if out2.String() != "" {
		t.Fatalf("a restart showed a key again:\n%s", out2.String())
	}
	if _, err := v1.NewAdminServiceClient(bareConn(t, g2)).ListApiKeys(withKey(t.Context(), key), &v1.ListApiKeysRequest{}); err != nil {
		t.Fatalf("the bootstrap key after a restart: %v", err)
	}
}

// TestBootstrapKeyFromFile stores the key given in
// --bootstrap-admin-key-file and shows nothing; a malformed or empty file
// stops the start with an error naming the setting.
func TestBootstrapKeyFromFile(t *testing.T) {
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "bootstrap.key")
	if err := os.WriteFile(f, []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := &syncbuf.Buffer{}
	g := startGateway(t, examplesDir(t), func(c *Config) {
		c.BootstrapAdminKey, c.BootstrapAdminKeyFile, c.KeyOut, c.AdminKeyFile = "", f, out, filepath.Join(dir, "admin.key")
	})
	if out.String() != "" {
		t.Fatalf("a given key was shown:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.key")); !os.IsNotExist(err) {
		t.Fatalf("a given key was written to the admin key file: %v", err)
	}
	if _, err := v1.NewAdminServiceClient(bareConn(t, g)).ListApiKeys(withKey(t.Context(), k.String()), &v1.ListApiKeysRequest{}); err != nil {
		t.Fatalf("the given bootstrap key: %v", err)
	}
	// The test admin key of the harness was not stored: the given one was.
	if _, err := v1.NewAdminServiceClient(g.conn).GetStatus(t.Context(), &v1.GetStatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("harness key accepted although a file key was given: %v", err)
	}

	for name, content := range map[string]string{"empty": "\n", "malformed": "aak_short_secret"} {
		bad := filepath.Join(dir, name+".key")
		if err := os.WriteFile(bad, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.PolicyPath, cfg.Store, cfg.SecretsKeyFile = examplesDir(t), "memory:", filepath.Join(dir, "s.key")
		cfg.BootstrapAdminKeyFile = bad
		_, err := New(t.Context(), cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "bootstrap") {
			t.Errorf("%s bootstrap key file: New = %v, want an error naming the bootstrap key", name, err)
		}
	}
}

// TestBootstrapReplicasCreateOneKey starts two replicas at once on one
// empty PostgreSQL schema with no key given: exactly one generates, shows
// and writes a key, and that key works on both.
func TestBootstrapReplicasCreateOneKey(t *testing.T) {
	_, store := pgtest.Schema(t, "bootstrap")
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets.key")
	outs := []*syncbuf.Buffer{{}, {}}
	files := []string{filepath.Join(dir, "a", "admin.key"), filepath.Join(dir, "b", "admin.key")}
	gws := make([]*testGateway, 2)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			gws[i] = startGatewayNoFatal(t, examplesDir(t), func(c *Config) {
				c.Store = store
				c.SecretsKeyFile, c.ReplicaID = secrets, fmt.Sprintf("gw-%d", i)
				c.BootstrapAdminKey, c.AdminKeyFile, c.KeyOut = "", files[i], outs[i]
			})
		}()
	}
	close(start)
	wg.Wait()
	if gws[0] == nil || gws[1] == nil {
		t.Fatal("a replica did not start (see the log)")
	}
	var key string
	shown := 0
	for i := range gws {
		if b, err := os.ReadFile(files[i]); err == nil {
			shown++
			key = strings.TrimSpace(string(b))
			if !strings.Contains(outs[i].String(), key) {
				t.Fatalf("replica %d wrote a key it did not show", i)
			}
		} else if outs[i].String() != "" {
			t.Fatalf("replica %d showed a key without writing it:\n%s", i, outs[i].String())
		}
	}
	if shown != 1 {
		t.Fatalf("%d replicas generated a bootstrap key, want exactly 1", shown)
	}
	for i, g := range gws {
		list, err := v1.NewAdminServiceClient(g.conn).ListApiKeys(withKey(t.Context(), key), &v1.ListApiKeysRequest{})
		if err != nil || len(list.GetKeys()) != 1 {
			t.Fatalf("replica %d: keys %v, %v; want the one bootstrap key", i, list, err)
		}
	}
}

// bareConn dials g without the harness's admin key.
func bareConn(t *testing.T, g *testGateway) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(g.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// startGatewayNoFatal is startGateway for a goroutine other than the
// test's: it reports a failure with t.Errorf and returns nil.
func startGatewayNoFatal(t *testing.T, policyPath string, mod func(*Config)) *testGateway {
	cfg := DefaultConfig()
	cfg.PolicyPath = policyPath
	cfg.AgentAuth = "off"
	cfg.APIAddr = ""
	mod(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, nil)
	if err != nil {
		cancel()
		t.Errorf("start gateway: %v", err)
		return nil
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		cancel()
		srv.Close()
		t.Errorf("listen: %v", err)
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, nil) }()
	stop := func() error { cancel(); return <-done }
	t.Cleanup(func() { _ = stop() })
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Errorf("dial: %v", err)
		return nil
	}
	t.Cleanup(func() { conn.Close() })
	return &testGateway{srv: srv, conn: conn, cfg: cfg, stop: stop}
}
