package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// registerAgent registers org/team/name with a fresh key, as an agent's
// runtime would.
func registerAgent(t *testing.T, addr string, id *v1.AgentId) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewAgentLifecycleServiceClient(conn)
	ctx := context.Background()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	ch, err := c.RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, &v1.RegisterRequest{Agent: id, PublicKey: pub, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, ch.GetNonce()), Labels: map[string]string{"owner": "alice"}}); err != nil {
		t.Fatal(err)
	}
}

func TestAgentCommands(t *testing.T) {
	addr := startGateway(t)
	registerAgent(t, addr, &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"})
	registerAgent(t, addr, &v1.AgentId{OrgId: "acme", TeamId: "ops", AgentId: "bot"})

	code, out, errOut := run(t, "--addr", addr, "agent", "list")
	if code != 0 || !strings.Contains(out, "AGENT") || !strings.Contains(out, "acme/eng/coder-1") || !strings.Contains(out, "acme/ops/bot") {
		t.Fatalf("list: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = run(t, "--addr", addr, "agent", "list", "--team", "ops")
	if code != 0 || strings.Contains(out, "coder-1") || !strings.Contains(out, "acme/ops/bot") {
		t.Fatalf("list --team ops: exit %d\n%s", code, out)
	}

	code, out, errOut = run(t, "--addr", addr, "agent", "suspend", "acme/eng/coder-1", "--reason", "SEC-42")
	if code != 0 || !strings.Contains(out, "suspended") || !strings.Contains(out, "SEC-42") {
		t.Fatalf("suspend: exit %d\n%s\n%s", code, out, errOut)
	}
	// A suspended agent's check is denied (exit 1) with the reason.
	code, out, _ = run(t, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "git_status")
	if code != exitDeny || !strings.Contains(out, "agent suspended") {
		t.Fatalf("check of a suspended agent: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "--addr", addr, "agent", "list", "--status", "suspended")
	if code != 0 || !strings.Contains(out, "coder-1") || strings.Contains(out, "acme/ops/bot") {
		t.Fatalf("list --status suspended: exit %d\n%s", code, out)
	}
	if code, out, errOut = run(t, "--addr", addr, "agent", "resume", "acme/eng/coder-1"); code != 0 || !strings.Contains(out, "active") {
		t.Fatalf("resume: exit %d\n%s\n%s", code, out, errOut)
	}

	// mode: shown in inspect, honoured by checks.
	if code, out, errOut = run(t, "--addr", addr, "agent", "mode", "acme/eng/coder-1", "observe", "--reason", "rollout"); code != 0 || !strings.Contains(out, "observe") {
		t.Fatalf("mode observe: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run(t, "--addr", addr, "agent", "inspect", "acme/eng/coder-1")
	for _, want := range []string{"acme/eng/coder-1", "Enforcement mode:", "observe (operator override)", "owner=alice", "Depth:"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("inspect: exit %d, want %q in\n%s\n%s", code, want, out, errOut)
		}
	}
	code, out, _ = run(t, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "launch_missiles")
	if code != exitAllow || !strings.Contains(strings.ToLower(out), "observe") {
		t.Fatalf("check in observe mode: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "--addr", addr, "-o", "json", "agent", "mode", "acme/eng/coder-1", "policy")
	var info map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info["mode_override"] != nil {
		t.Fatalf("mode policy (clear): exit %d\n%s", code, out)
	}
	if code, _, _ = run(t, "--addr", addr, "check", "--agent", "acme/eng/coder-1", "--tool", "launch_missiles"); code != exitDeny {
		t.Fatalf("check after clearing the override: exit %d, want %d", code, exitDeny)
	}

	if code, out, errOut = run(t, "--addr", addr, "agent", "kill", "acme/ops/bot", "--reason", "compromised"); code != 0 || !strings.Contains(out, "killed") {
		t.Fatalf("kill: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut = run(t, "--addr", addr, "agent", "resume", "acme/ops/bot"); code != exitError || !strings.Contains(errOut, "killed") {
		t.Fatalf("resume a killed agent: exit %d %s", code, errOut)
	}
}

func TestAgentCommandsRejectBadInput(t *testing.T) {
	addr := startGateway(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"agent", "inspect", "coder-1"}, "is not org/team/agent"},
		{[]string{"agent", "suspend", "acme//x"}, "agent.team_id: is required"},
		{[]string{"agent", "mode", "acme/eng/coder-1", "audit"}, "use enforce, observe, disabled, or policy"},
		{[]string{"agent", "list", "--status", "sleepy"}, "use active, suspended, killed or stale"},
		{[]string{"agent", "inspect", "acme/eng/nobody"}, "acme/eng/nobody"},
	}
	for _, tc := range cases {
		code, _, errOut := run(t, append([]string{"--addr", addr}, tc.args...)...)
		if code != exitError || !strings.Contains(errOut, tc.want) {
			t.Fatalf("%v: exit %d, stderr %q, want %q", tc.args, code, errOut, tc.want)
		}
	}
}
