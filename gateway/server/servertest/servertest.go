// Package servertest starts real gateways on loopback for the tests of the
// commands that talk to one (aasm, aa-load).
package servertest

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// Start serves a gateway with the policies in policyPath on a loopback gRPC
// listener (no HTTP) and an in-memory store, after mod adjusts the
// configuration, and returns the gRPC address. The gateway stops, and must
// stop cleanly, when the test ends.
func Start(t testing.TB, policyPath string, mod func(*server.Config)) string {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.PolicyPath = policyPath
	cfg.Store = "memory:"
	cfg.SecretsKeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.APIAddr = ""
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("gateway stopped with: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop within 15s")
		}
	})
	return l.Addr().String()
}
