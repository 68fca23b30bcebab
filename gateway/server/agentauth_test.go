package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/extauthz"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/internal/testca"
	"github.com/agent-assembly/agent-assembly/storage"
)

// tokenMode runs a test gateway with agent authentication on (the default).
func tokenMode(c *Config) { c.AgentAuth = "token" }

// withToken puts token in the x-aa-credential-token metadata.
func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, gateway.CredentialTokenHeader, token)
}

// agentMethod calls one agent-facing method as the agent named, with token
// as its credential, and returns the call's error (nil when it got past
// authentication and was answered).
type agentMethod struct {
	name string
	call func(ctx context.Context, g *testGateway, token string, named *v1.AgentId) error
}

func toolCall(a *v1.AgentId, token string) *v1.CheckActionRequest {
	r := toolReq(a, "git_status", `{"short":true}`)
	r.ActionType, r.CredentialToken = v1.ActionType_TOOL_CALL, token
	return r
}

// agentMethods lists every agent-facing method whose credential is not the
// lifecycle's own (Register, Heartbeat, Deregister and ControlStream are
// tested in lifecycle_test.go).
func agentMethods(approvalID string) []agentMethod {
	return []agentMethod{
		{"CheckAction", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := g.client.CheckAction(ctx, toolCall(a, tok))
			return err
		}},
		{"CheckAction/metadata", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := g.client.CheckAction(withToken(ctx, tok), toolCall(a, ""))
			return err
		}},
		{"BatchCheck", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := g.client.BatchCheck(ctx, &v1.BatchCheckRequest{Requests: []*v1.CheckActionRequest{toolCall(a, tok), toolCall(a, tok)}})
			return err
		}},
		{"RecordUsage", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := g.client.RecordUsage(ctx, &v1.RecordUsageRequest{Agent: a, CredentialToken: tok, DecisionId: "0197a4b0-0000-7000-8000-000000000000", PromptTokens: 1})
			if status.Code(err) == codes.FailedPrecondition || status.Code(err) == codes.InvalidArgument {
				return nil // authenticated; there is no such reservation
			}
			return err
		}},
		{"DispatchTool", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := v1.NewSecretsServiceClient(g.conn).DispatchTool(ctx, &v1.DispatchToolRequest{Check: toolCall(a, tok)})
			return err
		}},
		{"WaitApproval", func(ctx context.Context, g *testGateway, tok string, _ *v1.AgentId) error {
			wctx, cancel := context.WithTimeout(withToken(ctx, tok), 300*time.Millisecond)
			defer cancel()
			_, err := approvalClient(g).WaitApproval(wctx, &v1.GetApprovalRequest{Id: approvalID})
			if status.Code(err) == codes.DeadlineExceeded {
				return nil // authenticated; still pending
			}
			return err
		}},
		{"Subscribe", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			sctx, cancel := context.WithCancel(withToken(ctx, tok))
			defer cancel()
			st, err := v1.NewInvalidationServiceClient(g.conn).Subscribe(sctx, &v1.SubscribeRequest{Subscriber: "test", Agents: []*v1.AgentId{a}})
			if err != nil {
				return err
			}
			if h, err := st.Header(); err == nil && len(h.Get(gateway.SubscribedSeqHeader)) > 0 {
				return nil
			}
			_, err = st.Recv()
			return err
		}},
		{"ReportEvents", func(ctx context.Context, g *testGateway, tok string, a *v1.AgentId) error {
			_, err := v1.NewAuditServiceClient(g.conn).ReportEvents(withToken(ctx, tok), &v1.ReportEventsRequest{Reporter: "runtime/test",
				Events: []*v1.ReportedEvent{{EventId: rand.Text(), Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.Now(),
					Decision: v1.Decision_DENY, RuleId: "kernel/exec", Reason: "exec denied",
					Action: &v1.CheckActionRequest{Agent: a, ActionType: v1.ActionType_PROCESS_EXEC,
						Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: "/usr/bin/curl"}}}}}})
			return err
		}},
	}
}

// wantRefused checks that err is code with the generic message: nothing in
// it tells the caller why the credential failed.
func wantRefused(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %s", what, err, code)
	}
	msg := status.Convert(err).Message()
	for _, leak := range []string{"expired", "revoked", "signature", "killed", "coder-1", "other-1", "malformed"} {
		if strings.Contains(msg, leak) {
			t.Fatalf("%s: message %q tells the caller %q", what, msg, leak)
		}
	}
}

// signedToken issues a token for agent with the gateway's signing key and
// the given clock (to make expired tokens).
func signedToken(t *testing.T, g *testGateway, agent action.AgentID, now func() time.Time) string {
	t.Helper()
	seed, err := identity.LoadOrCreateSigningKey(context.Background(), g.srv.Store())
	if err != nil {
		t.Fatal(err)
	}
	iss, err := identity.NewIssuer(seed, identity.Options{TTL: time.Minute, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := iss.Issue(agent)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// pendingApproval makes coder's check wait for a human and returns the
// approval id.
func pendingApproval(t *testing.T, g *testGateway, token string) string {
	t.Helper()
	req := rmReq(`{"command":"rm -rf build"}`)
	req.CredentialToken = token
	resp, err := g.client.CheckAction(context.Background(), req)
	if err != nil || resp.GetApprovalId() == "" {
		t.Fatalf("check needing approval: %v %v", resp, err)
	}
	return resp.GetApprovalId()
}

func countGovernance(t *testing.T, st storage.Store, rule string) int {
	t.Helper()
	page, err := st.QueryAudit(context.Background(), storage.AuditQuery{Event: storage.EventGovernance, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range page.Records {
		if r.RuleID == rule {
			n++
		}
	}
	return n
}

func TestAgentMethodsRequireTheAgentsCredential(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx := context.Background()
	other := agent("acme", "eng", "other-1")
	me := register(t, g, coder, nil)
	them := register(t, g, other, nil)
	approval := pendingApproval(t, g, me.token)
	expired := signedToken(t, g, action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}, func() time.Time { return time.Now().Add(-time.Hour) })
	garbled := me.token[:len(me.token)-6] + "AAAAAA"

	for _, m := range agentMethods(approval) {
		t.Run(m.name, func(t *testing.T) {
			before := countGovernance(t, g.srv.Store(), "agent.auth.unauthenticated")
			wantRefused(t, "no credential", m.call(ctx, g, "", coder), codes.Unauthenticated)
			wantRefused(t, "garbled token", m.call(ctx, g, garbled, coder), codes.Unauthenticated)
			wantRefused(t, "not a token", m.call(ctx, g, "hello", coder), codes.Unauthenticated)
			wantRefused(t, "expired token", m.call(ctx, g, expired, coder), codes.Unauthenticated)
			// An operator's API key is never an agent credential, as a
			// token or as the operator's bearer header.
			wantRefused(t, "operator key as token", m.call(ctx, g, "aa_live_0123456789abcdef", coder), codes.Unauthenticated)
			bearer := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer aa_live_0123456789abcdef")
			wantRefused(t, "operator bearer", m.call(bearer, g, "", coder), codes.Unauthenticated)
			wantRefused(t, "another agent's token", m.call(ctx, g, them.token, coder), codes.PermissionDenied)
			if err := m.call(ctx, g, me.token, coder); err != nil {
				t.Fatalf("valid token: %v", err)
			}
			if got := countGovernance(t, g.srv.Store(), "agent.auth.unauthenticated") - before; got != 6 {
				t.Fatalf("%d unauthenticated refusals audited, want 6", got)
			}
		})
	}
	if countGovernance(t, g.srv.Store(), "agent.auth.mismatch") == 0 {
		t.Fatal("mismatches were not audited")
	}
}

func TestRevokedCredentialsRefusedAtOnce(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx := context.Background()
	me := register(t, g, coder, nil)
	approval := pendingApproval(t, g, me.token) // also puts the token in the cache
	for _, m := range agentMethods(approval) {
		if err := m.call(ctx, g, me.token, coder); err != nil {
			t.Fatalf("%s before deregistration: %v", m.name, err)
		}
	}
	if _, err := lifecycle(g).Deregister(ctx, &v1.DeregisterRequest{Agent: coder, CredentialToken: me.token}); err != nil {
		t.Fatal(err)
	}
	for _, m := range agentMethods(approval) {
		wantRefused(t, m.name+" after Deregister", m.call(ctx, g, me.token, coder), codes.Unauthenticated)
	}

	// Killing an agent revokes every token it holds.
	again := register(t, g, coder, nil)
	if _, err := g.client.CheckAction(ctx, toolCall(coder, again.token)); err != nil {
		t.Fatalf("check after re-registration: %v", err)
	}
	if _, err := lifecycle(g).KillAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, m := range agentMethods(approval) {
		wantRefused(t, m.name+" after KillAgent", m.call(ctx, g, again.token, coder), codes.Unauthenticated)
	}
}

func TestCheckWithoutNamedAgentUsesTheTokensAgent(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx := context.Background()
	me := register(t, g, coder, nil)
	req := toolCall(nil, me.token)
	resp, err := g.client.CheckAction(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	rec := auditRecord(t, g.srv.Store(), resp.GetDecisionId())
	if rec.Agent.String() != "acme/eng/coder-1" {
		t.Fatalf("decision recorded for %q, want the token's agent", rec.Agent)
	}
}

func TestSubscribeLimitedToTheTokensAgents(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	me := register(t, g, coder, nil)
	other := agent("acme", "eng", "other-1")
	register(t, g, other, nil)
	st, err := v1.NewInvalidationServiceClient(g.conn).Subscribe(withToken(ctx, me.token), &v1.SubscribeRequest{Subscriber: "runtime/test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatal(err)
	}
	// Another agent's suspension is not delivered; this agent's is.
	if _, err := lifecycle(g).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/other-1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := lifecycle(g).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	ev, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetAgent().GetAgentId(); got != "coder-1" {
		t.Fatalf("first event is for %q (%s), want coder-1's suspension", got, ev.GetType())
	}
}

func TestReportEventsForAnotherAgentRefused(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx := context.Background()
	me := register(t, g, coder, nil)
	other := agent("acme", "eng", "other-1")
	them := register(t, g, other, nil)
	report := agentMethods("")[7]
	if report.name != "ReportEvents" {
		t.Fatal("agentMethods changed order")
	}
	wantRefused(t, "event for another agent", report.call(ctx, g, me.token, other), codes.PermissionDenied)
	// A runtime governing both agents presents both tokens.
	both := metadata.AppendToOutgoingContext(ctx, gateway.CredentialTokenHeader, them.token)
	if err := report.call(both, g, me.token, other); err != nil {
		t.Fatalf("runtime with both tokens: %v", err)
	}
}

func TestAgentAuthOffTrustsTheNamedAgent(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil) // the harness default is off
	if _, err := g.client.CheckAction(context.Background(), toolCall(coder, "")); err != nil {
		t.Fatalf("check with agent auth off: %v", err)
	}
}

func TestAgentAuthOffRefusedOffLoopback(t *testing.T) {
	c := DefaultConfig()
	c.AgentAuth, c.AllowRemote, c.GRPCAddr = "off", true, "0.0.0.0:50051"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "--agent-auth: off is for development on loopback only") {
		t.Fatalf("Validate = %v", err)
	}
	c.AgentAuth = "sometimes"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `--agent-auth: must be token or off, not "sometimes"`) {
		t.Fatalf("Validate = %v", err)
	}
	c = DefaultConfig()
	c.AgentSPIFFETrustDomain = "Bad/Domain"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--agent-spiffe-trust-domain") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestRevocationReachesAnotherReplica(t *testing.T) {
	a, b := sharedReplicasWith(t, tokenMode)
	ctx := context.Background()
	r := register(t, a, coder, nil)
	if _, err := b.client.CheckAction(ctx, toolCall(coder, r.token)); err != nil {
		t.Fatalf("check on b with a's token: %v", err) // now cached on b
	}
	if _, err := lifecycle(a).Deregister(ctx, &v1.DeregisterRequest{Agent: coder, CredentialToken: r.token}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to refuse the revoked token", func() bool {
		_, err := b.client.CheckAction(ctx, toolCall(coder, r.token))
		return status.Code(err) == codes.Unauthenticated
	})
	r2 := register(t, a, coder, nil)
	if _, err := b.client.CheckAction(ctx, toolCall(coder, r2.token)); err != nil {
		t.Fatalf("check on b with the new token: %v", err)
	}
	if _, err := lifecycle(a).KillAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to refuse the killed agent's token", func() bool {
		_, err := b.client.CheckAction(ctx, toolCall(coder, r2.token))
		return status.Code(err) == codes.Unauthenticated
	})
}

// sharedReplicasWith starts two replicas sharing PostgreSQL and Redis, like
// sharedReplicas, with mod applied to both.
func sharedReplicasWith(t *testing.T, mod func(*Config)) (a, b *testGateway) {
	t.Helper()
	pgURL, redisURL := os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pgURL == "" || redisURL == "" {
		t.Skip("AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	name, store := pgtest.Schema(t, "agentauth")
	key := filepath.Join(t.TempDir(), "secrets.key")
	replica := func(id string) func(*Config) {
		return func(c *Config) {
			c.Store = store
			c.Counters = pgtest.WithParam(redisURL, "prefix", name+":")
			c.SecretsKeyFile = key
			c.ReplicaID = id
			mod(c)
		}
	}
	return startGateway(t, examplesDir(t), replica("gw-a")), startGateway(t, examplesDir(t), replica("gw-b"))
}

// TestAgentClientCertificate serves the gateway's gRPC server behind a TLS
// listener that verifies client certificates, and checks that an agent
// certificate authenticates its agent without a token, and only that agent.
func TestAgentClientCertificate(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	register(t, g, coder, nil)
	ca := testca.New(t)
	pool, srvCert := ca.Pool(), ca.ServerCert(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The gateway's gRPC server takes the transport credentials at
	// construction; serve a second one with the same services over TLS.
	tlsSrv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
		ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13})))
	v1.RegisterPolicyServiceServer(tlsSrv, gateway.NewPolicyService(g.srv.Core()).WithAgentAuth(g.srv.AgentAuth()))
	go tlsSrv.Serve(l)
	t.Cleanup(tlsSrv.Stop)

	dial := func(cert *tls.Certificate) v1.PolicyServiceClient {
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return v1.NewPolicyServiceClient(conn)
	}
	ctx := context.Background()
	mine := ca.ClientCert(t, "agent", "spiffe://agent-assembly/agent/acme/eng/coder-1")
	if _, err := dial(&mine).CheckAction(ctx, toolCall(coder, "")); err != nil {
		t.Fatalf("check with the agent's certificate: %v", err)
	}
	wantRefused(t, "certificate of another agent", func() error {
		_, err := dial(&mine).CheckAction(ctx, toolCall(agent("acme", "eng", "other-1"), ""))
		return err
	}(), codes.PermissionDenied)
	foreign := ca.ClientCert(t, "agent", "spiffe://elsewhere/agent/acme/eng/coder-1")
	wantRefused(t, "certificate of another trust domain", func() error {
		_, err := dial(&foreign).CheckAction(ctx, toolCall(coder, ""))
		return err
	}(), codes.Unauthenticated)
	wantRefused(t, "no certificate", func() error {
		_, err := dial(nil).CheckAction(ctx, toolCall(coder, ""))
		return err
	}(), codes.Unauthenticated)
}

// extCheck sends an ext_authz Check for en.wikipedia.org (allowed for
// researcher-1 by the example policy) with the given request headers.
func extCheck(t *testing.T, ctx context.Context, client authv3.AuthorizationClient, hdr map[string]string, principal string) *authv3.CheckResponse {
	t.Helper()
	resp, err := client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: principal},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Scheme: "https", Host: "en.wikipedia.org", Path: "/wiki/Go", Headers: hdr,
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func wantExtDenied(t *testing.T, what string, r *authv3.CheckResponse, reason string) {
	t.Helper()
	d := r.GetDeniedResponse()
	if d == nil || d.GetStatus().GetCode() != 403 || !strings.Contains(d.GetBody(), reason) {
		t.Fatalf("%s: %v, want 403 %q", what, r, reason)
	}
}

func wantExtAllowed(t *testing.T, what string, r *authv3.CheckResponse) {
	t.Helper()
	ok := r.GetOkResponse()
	if ok == nil {
		t.Fatalf("%s: %v, want allowed", what, r)
	}
	removed := false
	for _, h := range ok.GetHeadersToRemove() {
		removed = removed || h == gateway.CredentialTokenHeader
	}
	if !removed {
		t.Fatalf("%s: the token header is not removed before the request goes upstream: %v", what, ok.GetHeadersToRemove())
	}
	for _, h := range ok.GetHeaders() {
		if h.GetHeader().GetKey() == "x-aa-agent" && h.GetHeader().GetValue() != "acme/research/researcher-1" {
			t.Fatalf("%s: agent %q", what, h.GetHeader().GetValue())
		}
	}
}

func TestExtAuthzRequiresAgentCredential(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	ctx := context.Background()
	client := authv3.NewAuthorizationClient(g.conn)
	researcher := agent("acme", "research", "researcher-1")
	r := register(t, g, researcher, nil)
	other := register(t, g, coder, nil)
	named := map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}

	before := countGovernance(t, g.srv.Store(), "agent.auth.unauthenticated")
	wantExtDenied(t, "bare x-aa-agent-id", extCheck(t, ctx, client, named, ""), "agent not authenticated")
	wantExtDenied(t, "no identity at all", extCheck(t, ctx, client, nil, ""), "agent not authenticated")
	wantExtDenied(t, "principal over an unverified connection", extCheck(t, ctx, client, nil, "spiffe://cluster.local/org/acme/team/research/agent/researcher-1"), "agent not authenticated")
	wantExtDenied(t, "garbled header token", extCheck(t, ctx, client, map[string]string{gateway.CredentialTokenHeader: r.token + "x"}, ""), "agent not authenticated")
	if got := countGovernance(t, g.srv.Store(), "agent.auth.unauthenticated") - before; got != 4 {
		t.Fatalf("%d refusals audited, want 4", got)
	}
	wantExtDenied(t, "another agent's token", extCheck(t, ctx, client, map[string]string{"x-aa-agent-id": "acme/research/researcher-1", gateway.CredentialTokenHeader: other.token}, ""), "does not match")

	wantExtAllowed(t, "header token", extCheck(t, ctx, client, map[string]string{gateway.CredentialTokenHeader: r.token}, ""))
	wantExtAllowed(t, "header token and matching agent header", extCheck(t, ctx, client, map[string]string{"x-aa-agent-id": "acme/research/researcher-1", gateway.CredentialTokenHeader: r.token}, ""))
	// Envoy's grpc_service initial_metadata (set by the gateway's xDS for an
	// authenticated node) carries the token on the Check call itself.
	wantExtAllowed(t, "metadata token", extCheck(t, withToken(ctx, r.token), client, named, ""))
}

// TestExtAuthzClientCertificate: Envoy's connection to the gateway presents
// an agent certificate (its own identity), or a mesh proxy certificate that
// vouches for the request's source principal.
func TestExtAuthzClientCertificate(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	register(t, g, agent("acme", "research", "researcher-1"), nil)
	ca := testca.New(t)
	pool, srvCert := ca.Pool(), ca.ServerCert(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool,
		ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13})))
	extauthz.New(g.srv.Core(), extauthz.Options{Auth: g.srv.AgentAuth()}).Register(tlsSrv)
	go tlsSrv.Serve(l)
	t.Cleanup(tlsSrv.Stop)
	dial := func(cert *tls.Certificate) authv3.AuthorizationClient {
		cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return authv3.NewAuthorizationClient(conn)
	}
	ctx := context.Background()
	envoy := ca.ClientCert(t, "agent", "spiffe://agent-assembly/agent/acme/research/researcher-1")
	wantExtAllowed(t, "agent certificate", extCheck(t, ctx, dial(&envoy), nil, ""))
	wantExtDenied(t, "agent certificate naming another agent", extCheck(t, ctx, dial(&envoy), map[string]string{"x-aa-agent-id": "acme/eng/coder-1"}, ""), "does not match")
	mesh := ca.ClientCert(t, "agent", "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway")
	wantExtAllowed(t, "mesh proxy vouching for the principal", extCheck(t, ctx, dial(&mesh), nil, "spiffe://cluster.local/org/acme/team/research/agent/researcher-1"))
	wantExtDenied(t, "mesh proxy without a principal", extCheck(t, ctx, dial(&mesh), map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}, ""), "agent not authenticated")
	wantExtDenied(t, "no certificate", extCheck(t, ctx, dial(nil), nil, "spiffe://cluster.local/org/acme/team/research/agent/researcher-1"), "agent not authenticated")
}

// sendRecv sends req on a client stream and returns the first answer. A
// server that refuses the stream at once may end it before the send lands;
// gRPC then reports io.EOF from Send and the real status from Recv.
func sendRecv[Req, Resp any](st interface {
	Send(Req) error
	Recv() (Resp, error)
}, req Req) (Resp, error) {
	if err := st.Send(req); err != nil && !errors.Is(err, io.EOF) {
		var zero Resp
		return zero, err
	}
	return st.Recv()
}

// adsStream opens an ADS stream with token and asks for node's listeners.
func adsStream(t *testing.T, g *testGateway, token, node string) (*discoverygrpc.DiscoveryResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 10*time.Second)
	defer cancel()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(g.conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	return sendRecv(st, &discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"})
}

func TestADSRequiresTheNodesCredential(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	researcher := agent("acme", "research", "researcher-1")
	r := register(t, g, researcher, nil)
	other := register(t, g, coder, nil)

	_, err := adsStream(t, g, "", "acme/research/researcher-1")
	wantRefused(t, "ADS without a credential", err, codes.Unauthenticated)
	_, err = adsStream(t, g, r.token+"x", "acme/research/researcher-1")
	wantRefused(t, "ADS with a garbled token", err, codes.Unauthenticated)
	_, err = adsStream(t, g, other.token, "acme/research/researcher-1")
	wantRefused(t, "ADS for another agent's node", err, codes.PermissionDenied)

	resp, err := adsStream(t, g, r.token, "acme/research/researcher-1")
	if err != nil {
		t.Fatalf("ADS with the node's token: %v", err)
	}
	// The node's route carries its token for ext_authz, so its checks are
	// corroborated without the agent sending anything.
	var rc routev3.RouteConfiguration
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].UnmarshalTo(&rc) != nil {
		t.Fatalf("route response: %v", resp)
	}
	var per extauthzv3.ExtAuthzPerRoute
	if err := rc.GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"].UnmarshalTo(&per); err != nil {
		t.Fatalf("per-route ext_authz config: %v (%v)", err, rc.GetTypedPerFilterConfig())
	}
	ext := per.GetCheckSettings().GetContextExtensions()
	if ext[extauthz.ExtToken] != r.token {
		t.Fatalf("context extensions %v do not carry the node's token", ext)
	}
	var proc extprocv3.ExtProcPerRoute
	if err := rc.GetTypedPerFilterConfig()["envoy.filters.http.ext_proc"].UnmarshalTo(&proc); err != nil {
		t.Fatalf("per-route ext_proc config: %v", err)
	}
	if md := proc.GetOverrides().GetGrpcInitialMetadata(); len(md) != 1 || md[0].GetValue() != r.token {
		t.Fatalf("ext_proc stream metadata %v does not carry the node's token", md)
	}
	client := authv3.NewAuthorizationClient(g.conn)
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{ContextExtensions: ext,
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Scheme: "https", Host: "en.wikipedia.org", Path: "/wiki/Go"}}}}
	resp2, err := client.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	wantExtAllowed(t, "check with the route's context extensions", resp2)
	delete(ext, extauthz.ExtToken)
	resp2, err = client.Check(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	wantExtDenied(t, "context extensions without the token", resp2, "agent not authenticated")
}

// procHeaders opens an ext_proc stream with token and sends request
// headers as ext_authz leaves them for agent; it returns the stream's
// error or the answer.
func procHeaders(t *testing.T, g *testGateway, token, agent string) (*procv3.ProcessingResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 10*time.Second)
	defer cancel()
	st, err := procv3.NewExternalProcessorClient(g.conn).Process(ctx)
	if err != nil {
		return nil, err
	}
	defer st.CloseSend()
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-aa-decision", RawValue: []byte("allow")},
		{Key: "x-aa-decision-id", RawValue: []byte("d1")}, {Key: "x-aa-agent", RawValue: []byte(agent)}}}
	return sendRecv(st, &procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{Headers: hm}}})
}

func TestExtProcRequiresTheAgentsCredential(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	r := register(t, g, agent("acme", "research", "researcher-1"), nil)
	_, err := procHeaders(t, g, "", "acme/research/researcher-1")
	wantRefused(t, "ext_proc without a credential", err, codes.Unauthenticated)
	resp, err := procHeaders(t, g, r.token, "acme/eng/coder-1")
	if err != nil || resp.GetImmediateResponse() == nil || resp.GetImmediateResponse().GetStatus().GetCode() != 403 {
		t.Fatalf("ext_proc for another agent than the token's: %v %v, want 403", resp, err)
	}
	resp, err = procHeaders(t, g, r.token, "acme/research/researcher-1")
	if err != nil || resp.GetRequestHeaders() == nil {
		t.Fatalf("ext_proc with the agent's token: %v %v", resp, err)
	}
}

// registerTB registers id with a fresh key and returns its token (for
// benchmarks, which register() does not serve).
func registerTB(tb testing.TB, g *testGateway, id *v1.AgentId) string {
	tb.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	ch, err := lifecycle(g).RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: id})
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := lifecycle(g).Register(ctx, &v1.RegisterRequest{Agent: id, PublicKey: pub, Nonce: ch.GetNonce(), Signature: ed25519.Sign(key, ch.GetNonce())})
	if err != nil {
		tb.Fatal(err)
	}
	return resp.GetCredentialToken()
}

// TestAgentCertificateOnTheGatewayListener: with --tls-client-ca, an agent
// certificate verified by the gateway's own gRPC listener authenticates its
// agent on CheckAction, ext_authz and ADS without a token, and only that
// agent.
func TestAgentCertificateOnTheGatewayListener(t *testing.T) {
	ca := testca.New(t)
	scert, skey := ca.Server(t)

	grpcAddr, _, _ := startTLSGateway(t, func(c *Config) {
		c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = scert, skey, ca.File
		c.AgentAuth = "token"
	})
	roots := ca.Pool()
	kp := ca.ClientCert(t, "researcher-1", "spiffe://agent-assembly/agent/acme/research/researcher-1")
	dial := func(cert []tls.Certificate) *grpc.ClientConn {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: cert, MinVersion: tls.VersionTLS12})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	agentConn, anonConn := dial([]tls.Certificate{kp}), dial(nil)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	researcher := agent("acme", "research", "researcher-1")
	req := &v1.CheckActionRequest{Agent: researcher, ActionType: v1.ActionType_NETWORK_CALL,
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "en.wikipedia.org", Port: 443, Protocol: "https"}}}
	if resp, err := v1.NewPolicyServiceClient(agentConn).CheckAction(ctx, req); err != nil || resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("check with the agent certificate: %v %v", resp, err)
	}
	_, err := v1.NewPolicyServiceClient(anonConn).CheckAction(ctx, req)
	wantRefused(t, "TLS without a certificate or token", err, codes.Unauthenticated)
	req.Agent = coder
	_, err = v1.NewPolicyServiceClient(agentConn).CheckAction(ctx, req)
	wantRefused(t, "certificate of another agent", err, codes.PermissionDenied)

	// ext_authz over the agent's connection: the certificate is Envoy's
	// own identity for its node.
	ext, err := authv3.NewAuthorizationClient(agentConn).Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Scheme: "https", Host: "en.wikipedia.org", Path: "/"}}}})
	if err != nil {
		t.Fatal(err)
	}
	wantExtAllowed(t, "ext_authz over an agent certificate", ext)

	// ADS for the certificate's node, and not for another.
	ads := func(conn *grpc.ClientConn, node string) error {
		st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			return err
		}
		_, err = sendRecv(st, &discoverygrpc.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"})
		return err
	}
	if err := ads(agentConn, "acme/research/researcher-1"); err != nil {
		t.Fatalf("ADS with the agent certificate: %v", err)
	}
	wantRefused(t, "ADS for another node", ads(agentConn, "acme/eng/coder-1"), codes.PermissionDenied)
	wantRefused(t, "ADS without a credential", ads(anonConn, "acme/research/researcher-1"), codes.Unauthenticated)
}
