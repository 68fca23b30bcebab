package server

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/auth"
)

// The runtime profiles are off by default; with --debug-pprof they answer
// admin keys only (401 without a valid key, 403 below admin), and what they
// serve is a real profile of the running gateway.
func TestDebugPprof(t *testing.T) {
	off := startGateway(t, examplesDir(t), nil)
	if code := restStatus(t, http.MethodGet, off.base+"/debug/pprof/", ""); code != http.StatusNotFound {
		t.Fatalf("GET /debug/pprof/ with --debug-pprof off: %d, want 404", code)
	}

	g := startGateway(t, examplesDir(t), func(c *Config) { c.DebugPprof = true })
	creds := matrixCredentials(t, g)
	for _, c := range creds {
		want := http.StatusForbidden
		switch {
		case c.role == auth.RoleAdmin:
			want = http.StatusOK
		case c.key == "" || c.role == auth.RoleNone:
			want = http.StatusUnauthorized
		}
		if got := restStatus(t, http.MethodGet, g.base+"/debug/pprof/cmdline", c.key); got != want {
			t.Errorf("GET /debug/pprof/cmdline with %s: %d, want %d", c.name, got, want)
		}
	}
	adminKey := creds[5].key
	get := func(path string) []byte {
		t.Helper()
		code, body := restBody(t, http.MethodGet, g.base+path, adminKey)
		if code != http.StatusOK {
			t.Fatalf("GET %s as admin: %d\n%s", path, code, body)
		}
		return body
	}
	if idx := get("/debug/pprof/"); !bytes.Contains(idx, []byte("goroutine")) {
		t.Fatalf("the index does not list the goroutine profile:\n%s", idx)
	}
	for _, name := range []string{"heap", "goroutine", "profile?seconds=1"} {
		// Profiles in pprof's format are gzip-compressed protocol buffers.
		if p := get("/debug/pprof/" + name); len(p) < 100 || !bytes.HasPrefix(p, []byte{0x1f, 0x8b}) {
			t.Fatalf("%s: %d bytes, not a gzip-compressed profile", name, len(p))
		}
	}
	// A goroutine of the gRPC server is in the gateway's goroutine dump.
	if dump := string(get("/debug/pprof/goroutine?debug=1")); !strings.Contains(dump, "google.golang.org/grpc") {
		t.Fatalf("the goroutine dump shows no gRPC server goroutine:\n%.2000s", dump)
	}
}
