package runtime_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime"
)

// TestRegistersAndFollowsControl: with Register, the runtime registers the
// agent with an Ed25519 key it keeps on disk, and a kill from the operator
// reaches the agent's OnControl hook.
func TestRegistersAndFollowsControl(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	cmds := make(chan *v1.ControlCommand, 8)
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents: []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid(),
			OnControl: func(c *v1.ControlCommand) { cmds <- c }}},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "rt", "events.db"), Register: true,
	})
	life := v1.NewAgentLifecycleServiceClient(gw.conn(t))
	ctx := context.Background()
	eventually(t, func() bool {
		ag, err := life.GetAgent(ctx, &v1.GetAgentRequest{Id: agentA.String()})
		return err == nil && ag.GetStatus() == v1.AgentStatus_AGENT_STATUS_ACTIVE && ag.GetLabels()["runtime"] != ""
	})
	if st, err := os.Stat(filepath.Join(dir, "rt", "keys", "acme.eng.a1.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("agent key: %v %v, want a 0600 file", st, err)
	}
	ag := dialAgent(t, sock)
	if _, err := ag.CheckToolCall(ctx, "echo", map[string]string{}); err != nil {
		t.Fatalf("check of a registered agent: %v", err)
	}
	// A suspension reaches the hook whether the control stream connects
	// before it (as an event) or after (as the stream's opening state).
	if _, err := life.SuspendAgent(ctx, &v1.AgentControlRequest{Id: agentA.String(), Reason: "test pause"}); err != nil {
		t.Fatal(err)
	}
	next := func(want v1.ControlCommand_Type) *v1.ControlCommand {
		t.Helper()
		var got *v1.ControlCommand
		eventually(t, func() bool {
			select {
			case got = <-cmds:
				return got.GetType() == want
			default:
				return false
			}
		})
		return got
	}
	next(v1.ControlCommand_TYPE_SUSPEND)
	if _, err := life.KillAgent(ctx, &v1.AgentControlRequest{Id: agentA.String(), Reason: "test kill"}); err != nil {
		t.Fatal(err)
	}
	if got := next(v1.ControlCommand_TYPE_KILL); got.GetReason() != "test kill" {
		t.Errorf("kill reason %q", got.GetReason())
	}
}
