package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// TestTokenCommand: aa-runtime token registers the agent with a key it
// keeps (0600) and prints a token the gateway accepts; run again with the
// same key it gets a new token for the same agent.
func TestTokenCommand(t *testing.T) {
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	key := filepath.Join(t.TempDir(), "keys", "a1.key")
	get := func() string {
		t.Helper()
		var out bytes.Buffer
		if code := tokenCmd([]string{"--gateway", gw, "--agent", "acme/eng/a1", "--key", key}, &out); code != 0 {
			t.Fatalf("aa-runtime token exited %d", code)
		}
		return strings.TrimSpace(out.String())
	}
	first := get()
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("agent key: %v %v, want a 0600 file", st, err)
	}
	second := get()
	if first == "" || first == second {
		t.Fatalf("tokens %q and %q, want two different tokens", first, second)
	}
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "a1"}, CredentialToken: second,
		ActionType: v1.ActionType_TOOL_CALL, Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "echo"}}}
	if _, err := v1.NewPolicyServiceClient(cc).CheckAction(context.Background(), req); err != nil {
		t.Fatalf("check with the printed token: %v", err)
	}
	// --out writes the token to a file (0640) and nothing to stdout; the
	// file's token is accepted too.
	outFile := filepath.Join(t.TempDir(), "token")
	var stdout bytes.Buffer
	if code := tokenCmd([]string{"--gateway", gw, "--agent", "acme/eng/a1", "--key", key, "--out", outFile}, &stdout); code != 0 || stdout.Len() != 0 {
		t.Fatalf("aa-runtime token --out: exit %d, stdout %q", code, stdout.String())
	}
	st, err := os.Stat(outFile)
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("token file: %v %v, want a 0640 file", st, err)
	}
	fromFile, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	req.CredentialToken = strings.TrimSpace(string(fromFile))
	if _, err := v1.NewPolicyServiceClient(cc).CheckAction(context.Background(), req); err != nil {
		t.Fatalf("check with the token from --out: %v", err)
	}
	if code := tokenCmd([]string{"--gateway", gw, "--agent", "acme/eng/a1", "--key", key, "--out", filepath.Join(t.TempDir(), "missing", "token")}, &bytes.Buffer{}); code != 1 {
		t.Fatalf("--out into a missing directory: exit %d, want 1", code)
	}
	if code := tokenCmd([]string{"--gateway", gw, "--agent", "acme/eng"}, &bytes.Buffer{}); code != 2 {
		t.Fatalf("bad agent id: exit %d, want 2", code)
	}
	if err := os.WriteFile(key, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := tokenCmd([]string{"--gateway", gw, "--agent", "acme/eng/a1", "--key", key}, &bytes.Buffer{}); code != 1 {
		t.Fatalf("corrupt key: exit %d, want 1", code)
	}
}
