// Package servertest starts real gateways on loopback for the tests of the
// commands that talk to one (aasm, aa-load).
package servertest

import (
	"context"
	"crypto/ed25519"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// Start serves a gateway with the policies in policyPath on a loopback gRPC
// listener (no HTTP) and an in-memory store, after mod adjusts the
// configuration, and returns the gRPC address. The gateway stops, and must
// stop cleanly, when the test ends.
func Start(t testing.TB, policyPath string, mod func(*server.Config)) string {
	t.Helper()
	addr, _ := start(t, policyPath, mod, false)
	return addr
}

// StartHTTP is Start with the HTTP listener too (REST, /metrics, /healthz):
// it returns the gRPC address and the HTTP one (host:port).
func StartHTTP(t testing.TB, policyPath string, mod func(*server.Config)) (grpcAddr, httpAddr string) {
	t.Helper()
	return start(t, policyPath, mod, true)
}

func start(t testing.TB, policyPath string, mod func(*server.Config), withHTTP bool) (string, string) {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.PolicyPath = policyPath
	cfg.Store = "memory:"
	cfg.SecretsKeyFile = filepath.Join(t.TempDir(), "secrets.key")
	cfg.APIAddr = ""
	cfg.BootstrapAdminKey = AdminKey
	cfg.AdminKeyFile = "none"
	// Tests run on loaded machines; the 150ms ext_authz budget is tested
	// in extauthz, not by every test that goes through ext_authz.
	cfg.ExtAuthzTimeout = 10 * time.Second
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
	var hl net.Listener
	httpAddr := ""
	if withHTTP {
		if hl, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			l.Close()
			cancel()
			t.Fatal(err)
		}
		httpAddr = hl.Addr().String()
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, hl) }()
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
	return l.Addr().String(), httpAddr
}

// RegisterAgent registers the agent "org/team/agent" with the gateway at
// addr through the Ed25519 challenge and returns its credential token, for
// tests that call agent-facing methods (CheckAction, ReportEvents, ...)
// with --agent-auth token, the default.
func RegisterAgent(t testing.TB, addr, agent string) string {
	t.Helper()
	parts := strings.Split(agent, "/")
	if len(parts) != 3 {
		t.Fatalf("register agent: %q is not org/team/agent", agent)
	}
	id := &v1.AgentId{OrgId: parts[0], TeamId: parts[1], AgentId: parts[2]}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("register agent %s: %v", agent, err)
	}
	defer conn.Close()
	life := v1.NewAgentLifecycleServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := life.RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: id})
	if err != nil {
		t.Fatalf("register agent %s: request challenge: %v", agent, err)
	}
	resp, err := life.Register(ctx, &v1.RegisterRequest{Agent: id, PublicKey: pub, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, ch.GetNonce())})
	if err != nil {
		t.Fatalf("register agent %s: %v", agent, err)
	}
	return resp.GetCredentialToken()
}

// WithToken returns ctx carrying token as x-aa-credential-token metadata,
// the credential of agent calls whose request has no credential_token field
// (ReportEvents, Subscribe, WaitApproval, ADS streams).
func WithToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-aa-credential-token", token)
}

// AdminKey is the bootstrap admin API key of every gateway Start serves. It
// is public (it is in this file): for tests only.
const AdminKey = "aak_00000000000000ad_dGVzdC1vbmx5LWFkbWluLWtleS1kby1ub3QtdXNlISE"

// WithKey returns ctx carrying key as the operator credential
// (authorization: Bearer <key> metadata).
func WithKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// AdminCreds returns a dial option that sends AdminKey on every call made
// on the connection (over plaintext loopback).
func AdminCreds() grpc.DialOption { return KeyCreds(AdminKey) }

// KeyCreds returns a dial option that sends key on every call made on the
// connection (over plaintext loopback).
func KeyCreds(key string) grpc.DialOption { return grpc.WithPerRPCCredentials(bearer(key)) }

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// CreateKey creates an API key named name with role (viewer, operator or
// admin) on the gateway at addr, using AdminKey, and returns the key.
func CreateKey(t testing.TB, addr, name, role string) string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), AdminCreds())
	if err != nil {
		t.Fatalf("create key %s: %v", name, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, err := v1.NewAdminServiceClient(conn).CreateApiKey(ctx, &v1.CreateApiKeyRequest{Name: name, Role: role})
	if err != nil {
		t.Fatalf("create key %s: %v", name, err)
	}
	return k.GetSecret()
}

// AgentAuthOff is a Start mod for tests that are about something else than
// agent authentication and call agent methods for agents they never
// register (the gateway then trusts the agent a call names).
func AgentAuthOff(c *server.Config) { c.AgentAuth = "off" }
