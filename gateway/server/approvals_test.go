package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

func rmReq(args string) *v1.CheckActionRequest {
	return toolReq(coder, "shell_exec", args)
}

func approvalClient(g *testGateway) v1.ApprovalServiceClient {
	return v1.NewApprovalServiceClient(g.conn)
}

func TestApprovalApproveOverRESTThenPresent(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	resp, err := g.client.CheckAction(ctx, rmReq(`{"command":"rm -rf build"}`))
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetApprovalId()
	if resp.GetDecision() != v1.Decision_PENDING || id == "" {
		t.Fatalf("want PENDING with an approval id, got %v", resp)
	}
	list, err := approvalClient(g).ListPending(ctx, &v1.ListPendingRequest{OrgId: "acme"})
	if err != nil || len(list.GetApprovals()) != 1 || list.GetApprovals()[0].GetId() != id {
		t.Fatalf("ListPending: %v %v", list, err)
	}
	// An operator approves over REST.
	code, m := postJSON(t, g.base+"/v1/approvals/"+id+":decide", `{"approve": true, "decided_by": "alice", "comment": "build dir only"}`)
	if code != 200 || m["status"] != "APPROVAL_STATUS_APPROVED" || m["decided_by"] != "alice" {
		t.Fatalf("decide over REST: %d %v", code, m)
	}
	// Deciding twice is refused.
	code, m = postJSON(t, g.base+"/v1/approvals/"+id+":decide", `{"approve": false, "decided_by": "bob"}`)
	if code != 400 && code != 409 || !strings.Contains(fmt.Sprint(m["message"]), "already decided") {
		t.Fatalf("second decision: %d %v", code, m)
	}
	// The agent presents the approval for the same action: allowed.
	req := rmReq(`{"command":"rm -rf build"}`)
	req.ApprovalId = id
	resp, err = g.client.CheckAction(ctx, req)
	if err != nil || resp.GetDecision() != v1.Decision_ALLOW || resp.GetPolicyRuleId() != "approval" || !strings.Contains(resp.GetReason(), "alice") {
		t.Fatalf("presenting the approval: %v %v", resp, err)
	}
	// The same approval does not cover a different action.
	other := rmReq(`{"command":"rm -rf /"}`)
	other.ApprovalId = id
	resp, err = g.client.CheckAction(ctx, other)
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "different action") {
		t.Fatalf("approval reused for another action: %v %v", resp, err)
	}
	// The decision is audited as a governance event.
	// (Other governance events, such as the policy activation at start, may
	// be there too; the decision must be recorded exactly once.)
	page, err := g.srv.Store().QueryAudit(ctx, storage.AuditQuery{Event: storage.EventGovernance})
	n := 0
	for _, r := range page.Records {
		if strings.Contains(r.Reason, "approved by alice: build dir only") {
			n++
		}
	}
	if err != nil || n != 1 {
		t.Fatalf("governance audit of the decision: %d records say it in %+v %v", n, page.Records, err)
	}
}

func TestApprovalRejectOverGRPC(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	resp, err := g.client.CheckAction(ctx, rmReq(`{"command":"rm -rf /"}`))
	if err != nil || resp.GetDecision() != v1.Decision_PENDING {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := approvalClient(g).Decide(ctx, &v1.DecideRequest{Id: resp.GetApprovalId(), Approve: false, DecidedBy: "b\x07b"}); err == nil || !strings.Contains(err.Error(), "decided_by") {
		t.Fatalf("decide with a control character in decided_by: %v", err)
	}
	a, err := approvalClient(g).Decide(ctx, &v1.DecideRequest{Id: resp.GetApprovalId(), Approve: false, DecidedBy: "bob", Comment: "never on /"})
	if err != nil || a.GetStatus() != v1.ApprovalStatus_APPROVAL_STATUS_REJECTED {
		t.Fatalf("reject: %v %v", a, err)
	}
	req := rmReq(`{"command":"rm -rf /"}`)
	req.ApprovalId = resp.GetApprovalId()
	resp, err = g.client.CheckAction(ctx, req)
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "rejected by bob: never on /") {
		t.Fatalf("presenting a rejected approval: %v %v", resp, err)
	}
}

func TestApprovalWaitIsAnswered(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	watch, err := approvalClient(g).WatchApprovals(ctx, &v1.WatchApprovalsRequest{OrgId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	// The headers arrive once the gateway has subscribed the watcher; only
	// then is the approval below sure to reach it.
	if _, err := watch.Header(); err != nil {
		t.Fatal(err)
	}
	done := make(chan *v1.CheckActionResponse, 1)
	go func() {
		req := rmReq(`{"command":"rm -rf tmp"}`)
		req.WaitForApproval = true
		resp, err := g.client.CheckAction(ctx, req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	// The watcher sees the new request; the operator approves it.
	a, err := watch.Recv()
	if err != nil || a.GetStatus() != v1.ApprovalStatus_APPROVAL_STATUS_PENDING {
		t.Fatalf("watch: %v %v", a, err)
	}
	if _, err := approvalClient(g).Decide(ctx, &v1.DecideRequest{Id: a.GetId(), Approve: true, DecidedBy: "carol"}); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-done:
		if resp.GetDecision() != v1.Decision_ALLOW || resp.GetApprovalId() != a.GetId() {
			t.Fatalf("waiting check answered %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting check was not answered after the approval")
	}
	if a, err = watch.Recv(); err != nil || a.GetStatus() != v1.ApprovalStatus_APPROVAL_STATUS_APPROVED {
		t.Fatalf("watch after decision: %v %v", a, err)
	}
}

const shortApproval = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: fast-approvals}
spec:
  scope: {level: team, org: acme, team: eng}
  enforcement_mode: enforce
  default: allow
  approval: {timeout: 1s}
`

func TestApprovalTimeoutDenies(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, examplesDir(t), dir)
	if err := os.WriteFile(filepath.Join(dir, "fast.yaml"), []byte(shortApproval), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, dir, nil)
	req := rmReq(`{"command":"rm x"}`)
	req.WaitForApproval = true
	start := time.Now()
	resp, err := g.client.CheckAction(context.Background(), req)
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.HasPrefix(resp.GetReason(), "approval timed out") {
		t.Fatalf("unanswered approval: %v %v", resp, err)
	}
	if el := time.Since(start); el < 900*time.Millisecond {
		t.Fatalf("answered after %s, before the 1s approval timeout", el)
	}
	a, err := approvalClient(g).GetApproval(context.Background(), &v1.GetApprovalRequest{Id: resp.GetApprovalId()})
	if err != nil || a.GetStatus() != v1.ApprovalStatus_APPROVAL_STATUS_EXPIRED {
		t.Fatalf("approval after timeout: %v %v", a, err)
	}
}

func TestApprovalSurvivesRestart(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	resp, err := g.client.CheckAction(context.Background(), rmReq(`{"command":"rm old.log"}`))
	if err != nil || resp.GetApprovalId() == "" {
		t.Fatalf("%v %v", resp, err)
	}
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	g2 := startGateway(t, examplesDir(t), func(c *Config) { c.Store = g.cfg.Store; c.SecretsKeyFile = g.cfg.SecretsKeyFile })
	if _, err := approvalClient(g2).Decide(context.Background(), &v1.DecideRequest{Id: resp.GetApprovalId(), Approve: true, DecidedBy: "dave"}); err != nil {
		t.Fatalf("deciding after a restart: %v", err)
	}
	req := rmReq(`{"command":"rm old.log"}`)
	req.ApprovalId = resp.GetApprovalId()
	if r, err := g2.client.CheckAction(context.Background(), req); err != nil || r.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("approved after restart: %v %v", r, err)
	}
}
