package runtime_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

// TestFailOpenOnlyForObservePolicies: with FailOpenObserve, an agent whose
// policy the gateway last reported in observe mode is allowed during an
// outage; an agent under an enforcing policy is still denied.
func TestFailOpenOnlyForObservePolicies(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	lab := action.AgentID{Org: "acme", Team: "lab", Agent: "l1"}
	sockA, sockL := filepath.Join(dir, "a1.sock"), filepath.Join(dir, "l1.sock")
	startRuntime(t, runtime.Options{
		Agents: []runtime.Agent{
			{ID: agentA, Socket: sockA, UID: os.Getuid()},
			{ID: lab, Socket: sockL, UID: os.Getuid()},
		},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "events.db"), FailMode: runtime.FailOpenObserve, CacheTTL: -1,
	})
	enf, obs := dialAgent(t, sockA), dialAgent(t, sockL)
	ctx := context.Background()
	if d, err := obs.CheckToolCall(ctx, "echo", nil); err != nil || d.Mode != v1.EnforcementMode_OBSERVE {
		t.Fatalf("observe agent with the gateway up: %+v %v", d, err)
	}
	if _, err := enf.CheckToolCall(ctx, "echo", nil); err != nil {
		t.Fatal(err)
	}
	gw.stop()
	d, err := obs.CheckToolCall(ctx, "echo", nil)
	if err != nil || d.Decision != v1.Decision_ALLOW || !strings.Contains(d.Reason, "failing open") {
		t.Fatalf("observe agent during the outage: %+v %v, want ALLOW failing open", d, err)
	}
	if _, err := enf.CheckToolCall(ctx, "echo", nil); !errors.Is(err, sdkclient.ErrUnavailable) {
		t.Fatalf("enforce agent during the outage: %v, want ErrUnavailable (fail closed)", err)
	}
}
