package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// loginEnv is an environment with its own HOME and XDG_CONFIG_HOME, no
// AA_ADDR and no AA_API_KEY (the key comes from the login), plus extra.
func loginEnv(t *testing.T, extra ...string) (env []string, cfgDir string) {
	t.Helper()
	cfgDir = t.TempDir()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "AA_ADDR" && k != "AA_API_KEY" && k != "HOME" && k != "XDG_CONFIG_HOME" {
			env = append(env, kv)
		}
	}
	return append(append(env, "HOME="+t.TempDir(), "XDG_CONFIG_HOME="+cfgDir), extra...), cfgDir
}

// runEnv runs the aasm binary with env and stdin.
func runEnv(t *testing.T, env []string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(aasmBinary(t), args...)
	cmd.Env = env
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run aasm %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestLoginStatusLogout: login checks the gateway before saving, saves the
// address and key readable by the user only, later commands use the
// address, AA_ADDR and --addr still win, and logout forgets it.
func TestLoginStatusLogout(t *testing.T) {
	addr := startNamedGateway(t)
	env, cfgDir := loginEnv(t)
	path := filepath.Join(cfgDir, "agent-assembly", "config.yaml")
	noFile := func(what string) {
		t.Helper()
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Fatalf("%s: config file exists (or stat failed: %v)", what, err)
		}
	}

	code, _, errOut := runEnv(t, env, "", "login")
	if code != exitError || !strings.Contains(errOut, "aasm login --addr HOST:PORT") {
		t.Fatalf("login without an address: exit %d\n%s", code, errOut)
	}
	code, _, errOut = runEnv(t, env, servertest.AdminKey, "login", "--addr", "127.0.0.1:1", "--timeout", "2s")
	if code != exitError || !strings.Contains(errOut, "cannot reach the gateway at 127.0.0.1:1") || !strings.Contains(errOut, "nothing saved") {
		t.Fatalf("login to nothing: exit %d\n%s", code, errOut)
	}
	noFile("failed login")
	code, _, errOut = runEnv(t, env, "two words\n", "login", "--addr", addr)
	if code != exitError || !strings.Contains(errOut, "one word on one line") {
		t.Fatalf("login with a bad key: exit %d\n%s", code, errOut)
	}
	noFile("login with a bad key")
	code, _, errOut = runEnv(t, env, "aak_0123456789abcdef_dGVzdC1vbmx5LWFkbWluLWtleS1kby1ub3QtdXNlISE\n", "login", "--addr", addr)
	if code != exitError || !strings.Contains(errOut, "did not accept the credentials") || !strings.Contains(errOut, "nothing saved") {
		t.Fatalf("login with an unknown key: exit %d\n%s", code, errOut)
	}
	noFile("login with an unknown key")

	code, out, errOut := runEnv(t, env, servertest.AdminKey+"\n", "login", "--addr", addr)
	if code != 0 || !strings.Contains(out, "Logged in to "+addr) || !strings.Contains(out, "replica gw-test") || !strings.Contains(out, path) {
		t.Fatalf("login: exit %d\n%s\n%s", code, out, errOut)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v mode %v, want 0600", err, fi.Mode().Perm())
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("config directory: %v mode %v, want 0700", err, di.Mode().Perm())
	}
	var saved loginConfig
	b, _ := os.ReadFile(path)
	if err := yaml.Unmarshal(b, &saved); err != nil || saved.Addr != addr || saved.Key != servertest.AdminKey || saved.SavedAt.IsZero() {
		t.Fatalf("saved config %v: %q", err, b)
	}

	// No --addr, no AA_ADDR: the saved address.
	code, out, errOut = runEnv(t, env, "", "status")
	if code != 0 || !strings.Contains(out, "gw-test") || !strings.Contains(out, addr) {
		t.Fatalf("status with the saved login: exit %d\n%s\n%s", code, out, errOut)
	}
	// AA_ADDR and --addr override it.
	code, _, errOut = runEnv(t, append(env, "AA_ADDR=127.0.0.1:1"), "", "--timeout", "2s", "status")
	if code != exitError || !strings.Contains(errOut, "127.0.0.1:1") {
		t.Fatalf("AA_ADDR does not override the saved login: exit %d\n%s", code, errOut)
	}
	code, _, errOut = runEnv(t, env, "", "--addr", "127.0.0.1:1", "--timeout", "2s", "status")
	if code != exitError || !strings.Contains(errOut, "127.0.0.1:1") {
		t.Fatalf("--addr does not override the saved login: exit %d\n%s", code, errOut)
	}

	// A key file replaces the saved key.
	keyFile := filepath.Join(t.TempDir(), "key")
	viewer := servertest.CreateKey(t, addr, "login-viewer", "viewer")
	if err := os.WriteFile(keyFile, []byte(viewer+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runEnv(t, env, "", "login", "--addr", addr, "--key-file", keyFile); code != 0 {
		t.Fatalf("login --key-file: exit %d\n%s\n%s", code, out, errOut)
	}
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), "key: "+viewer) {
		t.Fatalf("key file not saved: %q", b)
	}

	// A broken file is reported, not fatal: --addr still works.
	if err := os.WriteFile(path, []byte("addr: [unclosed"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runEnv(t, env, "", "--addr", addr, "--api-key", servertest.AdminKey, "status")
	if code != 0 || !strings.Contains(errOut, "ignoring the saved login") || !strings.Contains(errOut, "run aasm login again") {
		t.Fatalf("status with a broken config: exit %d\n%s", code, errOut)
	}

	code, out, _ = runEnv(t, env, "", "logout")
	if code != 0 || !strings.Contains(out, "Logged out") {
		t.Fatalf("logout: exit %d\n%s", code, out)
	}
	noFile("logout")
	code, out, _ = runEnv(t, env, "", "logout")
	if code != 0 || !strings.Contains(out, "Not logged in") {
		t.Fatalf("second logout: exit %d\n%s", code, out)
	}
}

func TestDefaultAddr(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("AA_ADDR", "")
	if addr, warn := defaultAddr(); addr != "127.0.0.1:50051" || warn != "" {
		t.Fatalf("no login: %q %q", addr, warn)
	}
	path := filepath.Join(dir, "agent-assembly", "config.yaml")
	if err := saveLoginConfig(path, loginConfig{Addr: "gw:1"}); err != nil {
		t.Fatal(err)
	}
	if addr, warn := defaultAddr(); addr != "gw:1" || warn != "" {
		t.Fatalf("saved login: %q %q", addr, warn)
	}
	t.Setenv("AA_ADDR", "env:2")
	if addr, _ := defaultAddr(); addr != "env:2" {
		t.Fatalf("AA_ADDR set: %q", addr)
	}
	t.Setenv("AA_ADDR", "")
	if err := os.WriteFile(path, []byte("key: k\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if addr, warn := defaultAddr(); addr != "127.0.0.1:50051" || !strings.Contains(warn, "no addr") {
		t.Fatalf("login without addr: %q %q", addr, warn)
	}
}
