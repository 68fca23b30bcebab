package server_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/storage"
)

// TestShutdownEndsStreams checks that open long-lived streams (an
// invalidation subscription and an audit tail, as a connected runtime and
// an operator's `aasm audit tail` hold) do not hold up shutdown: Serve
// returns well inside the grace period, without error, and the decision
// answered just before is in the audit log after a restart.
func TestShutdownEndsStreams(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.PolicyPath = "../../examples/policies"
	dir := t.TempDir()
	cfg.Store = "sqlite:" + dir + "/aa.db"
	cfg.SecretsKeyFile = dir + "/secrets.key"
	cfg.APIAddr = ""
	cfg.ShutdownTimeout = 3 * time.Second
	cfg.BootstrapAdminKey = servertest.AdminKey
	cfg.AgentAuth = "off" // about draining streams, not who opens them
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, nil) }()

	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	sub, err := v1.NewInvalidationServiceClient(conn).Subscribe(sctx, &v1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The subscription says it is in place before any event.
	if hdr, err := sub.Header(); err != nil || len(hdr.Get("aa-subscribed-seq")) != 1 {
		t.Fatalf("subscription header %v, %v", hdr, err)
	}
	tail, err := v1.NewAuditServiceClient(conn).TailAudit(sctx, &v1.TailAuditRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The tail is live once it delivers a record; it only sees records
	// appended after the server registered it, so check until it does.
	live := make(chan error, 1)
	go func() { _, err := tail.Recv(); live <- err }()
	var resp *v1.CheckActionResponse
	for waited := false; !waited; {
		resp, err = v1.NewPolicyServiceClient(conn).CheckAction(context.Background(), &v1.CheckActionRequest{
			Agent:   &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
			Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-live:
			if err != nil {
				t.Fatal(err)
			}
			waited = true
		case <-time.After(50 * time.Millisecond):
		}
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown with open streams: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not stop")
	}
	if took := time.Since(start); took >= cfg.ShutdownTimeout {
		t.Errorf("shutdown took %s: the streams held it for the whole grace period", took)
	}
	if _, err := sub.Recv(); err == nil {
		t.Error("the subscription is still open after shutdown")
	}

	// The decision answered before shutdown is durable.
	srv2, err := server.New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	page, err := srv2.Store().QueryAudit(context.Background(), storage.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range page.Records {
		found = found || r.ID == resp.GetDecisionId()
	}
	if !found {
		t.Fatalf("decision %s lost in shutdown", resp.GetDecisionId())
	}
}
