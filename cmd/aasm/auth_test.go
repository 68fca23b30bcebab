package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/testca"
)

// TestMain makes every command the tests run present the test gateways'
// admin key ($AA_API_KEY), as an operator who ran aasm login would; the
// tests of authentication itself set their own key or none.
func TestMain(m *testing.M) {
	os.Setenv("AA_API_KEY", servertest.AdminKey)
	os.Exit(m.Run())
}

// TestAdminKeyCommands: create prints the secret once (table and JSON),
// list never shows one, a viewer key reads but cannot administer, rotate
// makes the old secret fail, revoke makes the key fail.
func TestAdminKeyCommands(t *testing.T) {
	addr := startGateway(t)
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }

	code, out, errOut := run(t, a("admin", "key", "create", "--name", "ci", "--role", "viewer")...)
	if code != 0 || !strings.Contains(out, "shown once") || !strings.Contains(out, "viewer") {
		t.Fatalf("create: exit %d\n%s\n%s", code, out, errOut)
	}
	var secret string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "aak_") {
			secret = f
		}
	}
	if secret == "" || strings.Count(out, secret) != 1 {
		t.Fatalf("create does not print the key exactly once:\n%s", out)
	}
	id := strings.Split(secret, "_")[1]

	code, out, _ = run(t, a("-o", "json", "admin", "key", "create", "--name", "ops", "--role", "operator")...)
	var created struct {
		Key    struct{ ID, Name, Role string }
		Secret string
	}
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || !strings.HasPrefix(created.Secret, "aak_") || created.Key.Role != "operator" {
		t.Fatalf("create -o json: exit %d\n%s", code, out)
	}

	code, out, _ = run(t, a("admin", "key", "list")...)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "bootstrap-admin") || strings.Contains(out, "aak_") {
		t.Fatalf("list: exit %d (must show ids, never secrets)\n%s", code, out)
	}

	viewer := []string{"--api-key", secret, "--addr", addr}
	if code, out, errOut := run(t, append(viewer, "status")...); code != 0 {
		t.Fatalf("status with a viewer key: exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = run(t, append(viewer, "admin", "key", "list")...)
	if code != exitError || !strings.Contains(errOut, "needs the admin role") {
		t.Fatalf("list with a viewer key: exit %d\n%s", code, errOut)
	}

	code, out, _ = run(t, a("admin", "key", "rotate", id)...)
	if code != 0 || strings.Contains(out, secret) || !strings.Contains(out, "aak_"+id+"_") {
		t.Fatalf("rotate: exit %d\n%s", code, out)
	}
	code, _, errOut = run(t, append(viewer, "status")...)
	if code != exitError || !strings.Contains(errOut, "did not accept the credentials") || !strings.Contains(errOut, "aasm login") {
		t.Fatalf("status with the rotated-away secret: exit %d\n%s", code, errOut)
	}
	if code, out, errOut := run(t, a("admin", "key", "revoke", id)...); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = run(t, a("admin", "key", "create", "--name", "x", "--role", "root")...)
	if code != exitError || !strings.Contains(errOut, "--role: role must be viewer, operator or admin") {
		t.Fatalf("create with a bad role: exit %d\n%s", code, errOut)
	}
	code, _, errOut = run(t, "--api-key", "nonsense", "--addr", addr, "status")
	if code != exitError || !strings.Contains(errOut, "is not one") {
		t.Fatalf("a malformed --api-key: exit %d\n%s", code, errOut)
	}
}

// TestNoKeyIsRefused: without any key an operator command exits 3 with
// advice; a saved login key goes to its own gateway only.
func TestNoKeyIsRefused(t *testing.T) {
	addr, other := startGateway(t), startGateway(t)
	env, cfgDir := loginEnv(t)
	code, _, errOut := runEnv(t, env, "", "--addr", addr, "status")
	if code != exitError || !strings.Contains(errOut, "a valid API key is required") || !strings.Contains(errOut, "aasm login --addr "+addr) {
		t.Fatalf("status without a key: exit %d\n%s", code, errOut)
	}
	if code, out, errOut := runEnv(t, env, servertest.AdminKey, "login", "--addr", addr); code != 0 {
		t.Fatalf("login: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := runEnv(t, env, "", "status"); code != 0 {
		t.Fatalf("status after login: exit %d\n%s\n%s", code, out, errOut)
	}
	// The other gateway accepts the same test key, so a leak would show as
	// success: the saved key must not be sent there.
	code, _, errOut = runEnv(t, env, "", "--addr", other, "status")
	if code != exitError || !strings.Contains(errOut, "a valid API key is required") {
		t.Fatalf("the saved key was sent to another gateway: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(cfgDir, "agent-assembly", "config.yaml")); err != nil {
		t.Fatal(err)
	}
}

// TestKeyGenerate prints a fresh, well-formed key without a gateway.
func TestKeyGenerate(t *testing.T) {
	code, out1, _ := run(t, "admin", "key", "generate")
	_, out2, _ := run(t, "admin", "key", "generate")
	if code != 0 || !strings.HasPrefix(out1, "aak_") || out1 == out2 || len(strings.TrimSpace(out1)) != 4+16+1+43 {
		t.Fatalf("generate: exit %d %q %q", code, out1, out2)
	}
}

// TestAdminKeyHelp: every key command's help has an example.
func TestAdminKeyHelp(t *testing.T) {
	for _, sub := range []string{"create", "rotate", "revoke", "list", "generate"} {
		code, out, _ := run(t, "admin", "key", sub, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "aasm admin key "+sub) {
			t.Fatalf("admin key %s --help: exit %d\n%s", sub, code, out)
		}
	}
}

// TestTLS: aasm reaches a TLS gateway at https://host:port with --ca-file,
// refuses an unverified certificate without it, presents an operator
// client certificate, and aasm login remembers the CA.
func TestTLS(t *testing.T) {
	ca := testca.New(t)
	cert, key := ca.Server(t)
	addr := servertest.Start(t, "../../examples/policies", func(c *server.Config) {
		c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = cert, key, ca.File
	})
	https := "https://" + addr
	if code, out, errOut := run(t, "--addr", https, "--ca-file", ca.File, "status"); code != 0 {
		t.Fatalf("status over TLS: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := run(t, "--addr", https, "--timeout", "3s", "status"); code != exitError || !strings.Contains(errOut, "certificate") {
		t.Fatalf("TLS without the CA: exit %d\n%s", code, errOut)
	}
	if code, _, errOut := run(t, "--addr", addr, "--timeout", "3s", "status"); code != exitError {
		t.Fatalf("plaintext to a TLS gateway: exit %d\n%s", code, errOut)
	}
	ccert, ckey := ca.Client(t, "alice", "aasm://role/viewer/alice")
	env, _ := loginEnv(t)
	if code, out, errOut := runEnv(t, env, "", "--addr", https, "--ca-file", ca.File, "--client-cert", ccert, "--client-key", ckey, "status"); code != 0 {
		t.Fatalf("status with a viewer client certificate and no key: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := runEnv(t, env, "", "--addr", https, "--ca-file", ca.File, "--client-cert", ccert, "--client-key", ckey, "admin", "key", "list"); code != exitError || !strings.Contains(errOut, "needs the admin role") {
		t.Fatalf("admin call with a viewer certificate: exit %d\n%s", code, errOut)
	}
	if code, out, errOut := runEnv(t, env, servertest.AdminKey, "login", "--addr", https, "--ca-file", ca.File); code != 0 {
		t.Fatalf("login over TLS: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := runEnv(t, env, "", "status"); code != 0 {
		t.Fatalf("status with the saved TLS login: exit %d\n%s\n%s", code, out, errOut)
	}
}

// TestAdminTokenKeyRotate: rotate names the new key and keeps the old one;
// --revoke-previous drops both; -o json carries the same.
func TestAdminTokenKeyRotate(t *testing.T) {
	addr := startGateway(t)
	code, out, errOut := run(t, "--addr", addr, "-o", "json", "admin", "token-key", "rotate")
	var r struct {
		Key      string   `json:"key_id"`
		Previous string   `json:"previous_key_id"`
		Revoked  []string `json:"revoked_key_ids"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || len(r.Key) != 16 || len(r.Previous) != 16 || len(r.Revoked) != 0 {
		t.Fatalf("rotate: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run(t, "--addr", addr, "admin", "token-key", "rotate", "--revoke-previous")
	if code != 0 || !strings.Contains(out, "REVOKED") || !strings.Contains(out, r.Key+","+r.Previous) {
		t.Fatalf("rotate --revoke-previous: exit %d, want %s and %s revoked\n%s\n%s", code, r.Key, r.Previous, out, errOut)
	}
}
