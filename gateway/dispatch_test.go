package gateway

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

func dispatchReq(tool, args string) *v1.DispatchToolRequest {
	r := coderTool(tool, args)
	r.ActionType = v1.ActionType_TOOL_CALL
	return &v1.DispatchToolRequest{Check: r}
}

func TestDispatchToolResolvesGrantedSecret(t *testing.T) {
	svc, st, rec := newSecretsService(t)
	ctx := context.Background()
	secret := `tok"en\with-quotes ${NOT_EXPANDED}`
	if err := st.PutSecret(ctx, "GITHUB_TOKEN", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	resp, err := svc.DispatchTool(ctx, dispatchReq("git_push", `{"remote":"origin","auth":"Bearer ${GITHUB_TOKEN}","n":1.50}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetResult().GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("decision %s: %s", resp.GetResult().GetDecision(), resp.GetResult().GetReason())
	}
	var args map[string]any
	if err := json.Unmarshal([]byte(resp.GetResolvedArgsJson()), &args); err != nil {
		t.Fatalf("resolved args are not JSON: %v: %s", err, resp.GetResolvedArgsJson())
	}
	if args["auth"] != "Bearer "+secret || args["remote"] != "origin" || !strings.Contains(resp.GetResolvedArgsJson(), `"n":1.50`) {
		t.Fatalf("resolved args %s", resp.GetResolvedArgsJson())
	}
	r := rec.last(t)
	if r.ID != resp.GetResult().GetDecisionId() || strings.Contains(string(r.Payload), "tok") || !strings.Contains(string(r.Payload), "${GITHUB_TOKEN}") {
		t.Fatalf("audit record %s holds %q, want the placeholder form only", r.ID, r.Payload)
	}
}

func TestDispatchToolRefusals(t *testing.T) {
	svc, st, rec := newSecretsService(t)
	ctx := context.Background()
	if err := st.PutSecret(ctx, "DEPLOY_KEY", []byte("k")); err != nil {
		t.Fatal(err)
	}
	// Not granted: git_push may use GITHUB_TOKEN only.
	n := len(rec.recs)
	_, err := svc.DispatchTool(ctx, dispatchReq("git_push", `{"auth":"${DEPLOY_KEY}"}`))
	wantCode(t, err, codes.PermissionDenied, "may not use secret ${DEPLOY_KEY}")
	if r := rec.last(t); len(rec.recs) != n+1 || r.Event != storage.EventGovernance || r.RuleID != "secrets.dispatch" {
		t.Fatalf("refusal not audited: %+v", r)
	}
	// Granted but not set.
	_, err = svc.DispatchTool(ctx, dispatchReq("git_push", `{"auth":"${GITHUB_TOKEN}"}`))
	wantCode(t, err, codes.FailedPrecondition, "secret ${GITHUB_TOKEN} is not set")
	for _, c := range []struct {
		name string
		req  *v1.DispatchToolRequest
		want string
	}{
		{"no check", &v1.DispatchToolRequest{}, "check: is required"},
		{"not a tool call", &v1.DispatchToolRequest{Check: &v1.CheckActionRequest{ActionType: v1.ActionType_LLM_CALL}}, "check.action_type"},
		{"bad placeholder", dispatchReq("git_push", `{"a":"${github_token}"}`), "not a secret name"},
		{"unterminated", dispatchReq("git_push", `["${GITHUB_TOKEN"]`), "unterminated placeholder"},
		{"placeholder across values", dispatchReq("git_push", `{"a":"${GITHUB_TOKEN","b":"}"}`), "not a secret name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := svc.DispatchTool(ctx, c.req)
			wantCode(t, err, codes.InvalidArgument, c.want)
		})
	}
	// Oversized arguments are rejected before any secret is read.
	_, err = svc.DispatchTool(ctx, dispatchReq("git_push", `{"auth":"${GITHUB_TOKEN}","x":"`+strings.Repeat("y", 5000)+`"}`))
	wantCode(t, err, codes.InvalidArgument, "args_json")
}
