package runtime_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

// TestInvalidationFlipsCachedAllow: a cached allow is served from the
// runtime's cache until a policy change arrives on the invalidation stream;
// then the next check is denied. The same holds after the gateway restarts
// and the runtime resubscribes. The time from the policy change to the first
// denied answer is logged (speed is measured, not asserted).
func TestInvalidationFlipsCachedAllow(t *testing.T) {
	dir := t.TempDir()
	gw := startGateway(t, dir, "127.0.0.1:0")
	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: gw.addr, BufferPath: filepath.Join(dir, "events.db"), CacheTTL: time.Hour,
	})
	ag := dialAgent(t, sock)
	ctx := context.Background()
	base, err := os.ReadFile("testdata/policies/runtime-test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	allowDoc := string(base)
	denyDoc := strings.Replace(allowDoc, "echo: {allow: true}", "echo: {allow: false}", 1)
	apply := func(g *gatewayProc, doc string) {
		t.Helper()
		_, err := v1.NewPolicyServiceClient(g.conn(t)).ApplyPolicy(ctx, &v1.ApplyPolicyRequest{
			Documents: []*v1.PolicyDocumentSource{{Name: "runtime-test.yaml", Yaml: doc}}, Message: "test"})
		if err != nil {
			t.Fatalf("apply policy: %v", err)
		}
	}
	check := func() *sdkclient.Decision {
		d, _ := ag.CheckToolCall(ctx, "echo", map[string]string{"say": "hi"})
		if d == nil {
			t.Fatal("no decision")
		}
		return d
	}
	cachedAllow := func() {
		t.Helper()
		eventually(t, func() bool { d := check(); return d.Decision == v1.Decision_ALLOW && d.Cached })
	}
	flip := func(g *gatewayProc, round string) {
		t.Helper()
		cachedAllow()
		start := time.Now()
		apply(g, denyDoc)
		applied := time.Since(start)
		eventually(t, func() bool { return check().Decision == v1.Decision_DENY })
		t.Logf("%s: cached allow flipped to deny %v after ApplyPolicy returned (apply took %v)", round, time.Since(start)-applied, applied)
		if d := check(); d.Decision != v1.Decision_DENY {
			t.Fatalf("%s: after the flip: %v", round, d.Decision)
		}
		apply(g, allowDoc)
	}
	flip(gw, "first subscription")

	// The gateway restarts; the runtime's stream breaks, the cache stops
	// serving, and both come back once it resubscribes.
	gw.stop()
	if d := check(); d.Decision != v1.Decision_DENY || d.Cached {
		t.Fatalf("with the gateway down the cache must not answer: %+v", d)
	}
	gw = startGateway(t, dir, gw.addr)
	flip(gw, "after reconnect")
}
