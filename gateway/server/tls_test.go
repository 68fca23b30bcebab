package server

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/testca"
)

// startTLSGateway serves a gateway with TLS on both listeners and returns
// the gRPC and HTTPS addresses.
func startTLSGateway(t *testing.T, mod func(*Config)) (grpcAddr, httpsBase string, srv *Server) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.PolicyPath, cfg.Store = examplesDir(t), "memory:"
	cfg.SecretsKeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.AgentAuth, cfg.BootstrapAdminKey, cfg.AdminKeyFile = "off", testAdminKey, ""
	mod(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, nil)
	if err != nil {
		cancel()
		t.Fatalf("start gateway: %v", err)
	}
	gl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stop gateway: %v", err)
		}
	})
	return gl.Addr().String(), "https://" + hl.Addr().String(), srv
}

// TestTLSListenersAndClientCertificates serves TLS on both listeners with a
// client CA: plaintext clients fail, API keys work over TLS, an operator
// client certificate (aasm://role/operator/alice) authenticates with its
// role and no key, and a certificate from another CA is refused.
func TestTLSListenersAndClientCertificates(t *testing.T) {
	ca, other := testca.New(t), testca.New(t)
	scert, skey := ca.Server(t)
	operator := ca.ClientCert(t, "alice", "aasm://role/operator/alice")
	foreignAdmin := other.ClientCert(t, "mallory", "aasm://role/admin/mallory")
	grpcAddr, base, _ := startTLSGateway(t, func(c *Config) {
		c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = scert, skey, ca.File
	})
	roots := ca.Pool()
	tlsConf := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, Certificates: certs}
	}
	dial := func(opts ...grpc.DialOption) *grpc.ClientConn {
		conn, err := grpc.NewClient(grpcAddr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	plain := dial(grpc.WithTransportCredentials(insecure.NewCredentials()))
	if _, err := v1.NewAdminServiceClient(plain).GetStatus(withKey(ctx, testAdminKey), &v1.GetStatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext call to a TLS listener: %v, want Unavailable", err)
	}
	withKeyConn := dial(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf())))
	if _, err := v1.NewAdminServiceClient(withKeyConn).GetStatus(withKey(ctx, testAdminKey), &v1.GetStatusRequest{}); err != nil {
		t.Fatalf("API key over TLS: %v", err)
	}
	if _, err := v1.NewAdminServiceClient(withKeyConn).GetStatus(ctx, &v1.GetStatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("TLS without a key or certificate: %v, want Unauthenticated", err)
	}

	opConn := dial(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf(operator))))
	if _, err := v1.NewAdminServiceClient(opConn).GetStatus(ctx, &v1.GetStatusRequest{}); err != nil {
		t.Fatalf("operator certificate, viewer method: %v", err)
	}
	if _, err := v1.NewApprovalServiceClient(opConn).Decide(ctx, &v1.DecideRequest{}); status.Code(err) == codes.Unauthenticated || status.Code(err) == codes.PermissionDenied {
		t.Fatalf("operator certificate, operator method: %v", err)
	}
	if _, err := v1.NewAdminServiceClient(opConn).ListApiKeys(ctx, &v1.ListApiKeysRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("operator certificate, admin method: %v, want PermissionDenied", err)
	}
	// A key presented with the certificate must itself be valid.
	if _, err := v1.NewAdminServiceClient(opConn).GetStatus(withKey(ctx, "aak_junk"), &v1.GetStatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("operator certificate with a garbled key: %v, want Unauthenticated", err)
	}

	foreign := dial(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf(foreignAdmin))))
	// The client does not offer a certificate the server's CA list does
	// not name (or the handshake fails): either way, no admin.
	if _, err := v1.NewAdminServiceClient(foreign).GetStatus(ctx, &v1.GetStatusRequest{}); status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.Unavailable {
		t.Fatalf("a certificate from another CA: %v, want Unauthenticated or a failed handshake", err)
	}

	// HTTPS: the same rules on the REST listener.
	get := func(conf *tls.Config, key string) int {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 10 * time.Second}
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/status", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := client.Do(req)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(tlsConf(), testAdminKey); code != http.StatusOK {
		t.Fatalf("HTTPS with the admin key: %d", code)
	}
	if code := get(tlsConf(), ""); code != http.StatusUnauthorized {
		t.Fatalf("HTTPS without credentials: %d, want 401", code)
	}
	if code := get(tlsConf(operator), ""); code != http.StatusOK {
		t.Fatalf("HTTPS with the operator certificate: %d", code)
	}
	if code := get(tlsConf(foreignAdmin), ""); code != -1 && code != http.StatusUnauthorized {
		t.Fatalf("HTTPS with a foreign certificate: %d, want 401 or a failed handshake", code)
	}
	if resp, err := http.Get(strings.Replace(base, "https", "http", 1) + "/healthz"); err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plaintext HTTP answered on the TLS listener")
		}
		resp.Body.Close()
	}
}

// TestTLSConfigValidation: listeners off loopback need TLS (or
// --allow-remote); the TLS settings come in the right combinations; auth
// off is refused off loopback.
func TestTLSConfigValidation(t *testing.T) {
	base := func() Config {
		c := DefaultConfig()
		c.PolicyPath = "p"
		return c
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string // "" means valid
	}{
		{"remote plaintext", func(c *Config) { c.GRPCAddr = "0.0.0.0:50051" }, "serve TLS (--tls-cert, --tls-key) or set --allow-remote"},
		{"remote with TLS", func(c *Config) { c.GRPCAddr, c.TLSCertFile, c.TLSKeyFile = "0.0.0.0:50051", "c.pem", "k.pem" }, ""},
		{"remote allowed", func(c *Config) { c.GRPCAddr, c.AllowRemote = "0.0.0.0:50051", true }, ""},
		{"cert without key", func(c *Config) { c.TLSCertFile = "c.pem" }, "--tls-cert and --tls-key: give both"},
		{"client CA without cert", func(c *Config) { c.TLSClientCAFile = "ca.pem" }, "--tls-client-ca: client certificates need TLS"},
		{"auth off on loopback", func(c *Config) { c.Auth = AuthOff }, ""},
		{"auth off remote", func(c *Config) { c.Auth, c.APIAddr, c.AllowRemote = AuthOff, "0.0.0.0:7700", true }, "--auth: off is for development on loopback only"},
		{"auth bad", func(c *Config) { c.Auth = "maybe" }, "--auth: must be on or off"},
		{"bootstrap key malformed", func(c *Config) { c.BootstrapAdminKey = "secret" }, "$AA_BOOTSTRAP_ADMIN_KEY: malformed API key"},
		{"bootstrap key twice", func(c *Config) { c.BootstrapAdminKey, c.BootstrapAdminKeyFile = testAdminKey, "f" }, "not both"},
	}
	for _, tc := range cases {
		c := base()
		tc.mod(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
