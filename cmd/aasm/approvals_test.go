package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestApprovalsFlow(t *testing.T) {
	addr := startGateway(t)
	// A pending action, with its approval id in JSON output.
	code, out, errOut := run(t, "--addr", addr, "-o", "json", "check", "--agent", "acme/eng/coder-1", "--tool", "shell_exec", "--args", `{"command":"rm -rf build"}`)
	var resp struct {
		Decision   string `json:"decision"`
		ApprovalID string `json:"approval_id"`
	}
	if code != exitPending || json.Unmarshal([]byte(out), &resp) != nil || resp.ApprovalID == "" {
		t.Fatalf("pending check: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = run(t, "--addr", addr, "approvals", "list")
	if code != 0 || !strings.Contains(out, resp.ApprovalID) || !strings.Contains(out, "PENDING") {
		t.Fatalf("approvals list: exit %d\n%s", code, out)
	}
	code, out, errOut = run(t, "--addr", addr, "approvals", "approve", resp.ApprovalID, "--by", "alice", "--comment", "ok")
	if code != 0 || !strings.Contains(out, "APPROVED") || !strings.Contains(out, "alice") {
		t.Fatalf("approve: exit %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = run(t, "--addr", addr, "approvals", "reject", resp.ApprovalID, "--by", "bob")
	if code != exitError || !strings.Contains(errOut, "already decided") {
		t.Fatalf("second decision: exit %d %s", code, errOut)
	}
	code, out, _ = run(t, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "shell_exec", "--args", `{"command":"rm -rf build"}`, "--approval", resp.ApprovalID)
	if code != exitAllow || !strings.Contains(out, "approval") {
		t.Fatalf("check with the approval: exit %d\n%s", code, out)
	}
	if code, _, errOut = run(t, "--addr", addr, "approvals", "list", "--status", "maybe"); code != exitError || !strings.Contains(errOut, "--status \"maybe\"") {
		t.Fatalf("bad --status: %d %s", code, errOut)
	}
}

func TestBudgetShow(t *testing.T) {
	addr := startGateway(t)
	if code, _, errOut := run(t, "--addr", addr, "check", "--agent", "acme/research/researcher-1", "--provider", "openai", "--model", "gpt-4o", "--prompt-tokens", "100000", "--completion-tokens", "75000"); code != exitAllow {
		t.Fatalf("llm call: exit %d %s", code, errOut)
	}
	code, out, errOut := run(t, "--addr", addr, "budget", "show", "team/acme/research")
	if code != 0 || !strings.Contains(out, "daily") || !strings.Contains(out, "50.00") || !strings.Contains(out, "1.0000") {
		t.Fatalf("budget show: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut = run(t, "--addr", addr, "budget", "show", "galaxy/x"); code != exitError || !strings.Contains(errOut, "scope") {
		t.Fatalf("bad scope: exit %d %s", code, errOut)
	}
}
