package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

const blockWiki = `apiVersion: agent-assembly/v1
kind: Policy
metadata:
  name: block-wikipedia
spec:
  scope: {level: org, org: acme}
  default: allow
  rules:
    - id: no-wikipedia
      priority: 1000
      match: {action: network_call, name: "*.wikipedia.org"}
      decision: deny
      reason: blocked by the replica test
`

// examples reads the example policies as wire documents.
func examples(t *testing.T) []*v1.PolicyDocumentSource {
	t.Helper()
	entries, err := os.ReadDir("../../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	var out []*v1.PolicyDocumentSource
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile("../../examples/policies/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &v1.PolicyDocumentSource{Name: e.Name(), Yaml: string(b)})
	}
	return out
}

// waitDecision polls one replica until the wikipedia check answers want
// (the replica follows activations through Redis, with a poll fallback).
func waitDecision(t *testing.T, c v1.PolicyServiceClient, want v1.Decision, version string) {
	t.Helper()
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "research", AgentId: "researcher-1"},
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "en.wikipedia.org", Port: 443, Protocol: "https", Method: "GET"}}}
	deadline := time.Now().Add(20 * time.Second)
	var last *v1.CheckActionResponse
	for time.Now().Before(deadline) {
		resp, err := c.CheckAction(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetDecision() == want && resp.GetPolicyVersion() == version {
			return
		}
		last = resp
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("replica still answers %v under version %s, want %v under %s", last.GetDecision(), last.GetPolicyVersion(), want, version)
}

func lifecycleClients(t *testing.T, p *gatewayProc) v1.PolicyServiceClient {
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewPolicyServiceClient(conn)
}

// TestReplicasFollowPolicyApply applies a version on one replica and shows
// the other serving it without a restart, then rolls back on the other and
// shows the first following, both sharing PostgreSQL and Redis.
func TestReplicasFollowPolicyApply(t *testing.T) {
	gws := replicas(t)
	a, b := lifecycleClients(t, gws[0]), lifecycleClients(t, gws[1])
	ctx := metadata.AppendToOutgoingContext(context.Background(), "aa-author", "replica-test")

	start, err := b.GetPolicy(ctx, &v1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(start.GetAuthor(), "file:") {
		t.Fatalf("the files both replicas started from should be the first version, got author %q", start.GetAuthor())
	}
	waitDecision(t, b, v1.Decision_ALLOW, start.GetVersion())

	docs := append(examples(t), &v1.PolicyDocumentSource{Name: "zz-block-wikipedia.yaml", Yaml: blockWiki})
	applied, err := a.ApplyPolicy(ctx, &v1.ApplyPolicyRequest{Documents: docs, Message: "block wikipedia"})
	if err != nil {
		t.Fatal(err)
	}
	if applied.GetAuthor() != "replica-test" || !applied.GetActive() {
		t.Fatalf("apply: %v", applied)
	}
	waitDecision(t, a, v1.Decision_DENY, applied.GetVersion())
	waitDecision(t, b, v1.Decision_DENY, applied.GetVersion())

	// Both replicas read the same history.
	for _, c := range []v1.PolicyServiceClient{a, b} {
		list, err := c.ListPolicyVersions(ctx, &v1.ListPolicyVersionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetVersions()) != 2 || list.GetVersions()[0].GetVersion() != applied.GetVersion() || !list.GetVersions()[0].GetActive() {
			t.Fatalf("history: %v", list)
		}
	}

	// Roll back on the other replica; the first follows.
	if _, err := b.RollbackPolicy(ctx, &v1.RollbackPolicyRequest{Version: start.GetVersion(), Message: "undo"}); err != nil {
		t.Fatal(err)
	}
	waitDecision(t, b, v1.Decision_ALLOW, start.GetVersion())
	waitDecision(t, a, v1.Decision_ALLOW, start.GetVersion())

	// A replica restarted on the same store serves the active version, not
	// its (unchanged, older) files: the files only win when they change.
	if _, err := a.ApplyPolicy(ctx, &v1.ApplyPolicyRequest{Documents: docs, Message: "again"}); err != nil {
		t.Fatal(err)
	}
	waitDecision(t, b, v1.Decision_DENY, applied.GetVersion())
	third := startProc(t, "-store", argOf(t, gws[0], "-store"), "-counters", argOf(t, gws[0], "-counters"),
		"-secrets-key-file", argOf(t, gws[0], "-secrets-key-file"), "-replica-id", "gw-2", "-policy-poll", "0")
	c := lifecycleClients(t, third)
	waitDecision(t, c, v1.Decision_DENY, applied.GetVersion())

	// With polling off, the third replica follows a rollback made on
	// another one through the Redis notification alone.
	if _, err := a.RollbackPolicy(ctx, &v1.RollbackPolicyRequest{Version: start.GetVersion()}); err != nil {
		t.Fatal(err)
	}
	waitDecision(t, c, v1.Decision_ALLOW, start.GetVersion())
}

// argOf returns the value of a flag a replica was started with.
func argOf(t *testing.T, p *gatewayProc, flag string) string {
	t.Helper()
	for i, a := range p.cmd.Args[:len(p.cmd.Args)-1] {
		if a == flag {
			return p.cmd.Args[i+1]
		}
	}
	t.Fatalf("replica started without %s: %v", flag, p.cmd.Args)
	return ""
}
