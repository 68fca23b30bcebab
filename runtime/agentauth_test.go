package runtime_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime"
)

// TestRegisteredRuntimeUnderAgentAuth: against a gateway that authenticates
// agents (the default), a registering runtime presents its agent's token on
// every call: checks are decided, the invalidation stream comes up (so the
// decision cache serves), and reported events are appended.
func TestRegisteredRuntimeUnderAgentAuth(t *testing.T) {
	dir := t.TempDir()
	gw := startGatewayAuth(t, dir, "127.0.0.1:0", "token")
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "rt", "events.db"), Register: true, CacheTTL: time.Hour,
	})
	ag := dialAgent(t, sock)
	ctx := context.Background()
	// Registration runs in the background: the first checks may be refused.
	eventually(t, func() bool {
		d, err := ag.CheckToolCall(ctx, "echo", map[string]string{"say": "hi"})
		return err == nil && d.Decision == v1.Decision_ALLOW
	})
	// A cached answer is served only while the invalidation stream is up.
	eventually(t, func() bool {
		d, _ := ag.CheckToolCall(ctx, "echo", map[string]string{"say": "hi"})
		return d != nil && d.Decision == v1.Decision_ALLOW && d.Cached
	})
	if err := ag.Report(ctx, event(1)); err != nil {
		t.Fatal(err)
	}
	// The runtime drains its buffer only when the gateway accepted the
	// events (ReportEvents refuses events without their agent's token).
	eventually(t, func() bool {
		h, err := ag.Health(ctx)
		return err == nil && h.GetBufferedEvents() == 0
	})
}
