package runtime_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

// runtimeChild runs a runtime in a child process so the test can SIGKILL it.
func runtimeChild(t *testing.T, cfg childRuntime) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(cfg)
	cmd := childCmd(self, "runtime", "AA_RUNTIME_TEST_CONFIG="+string(b))
	log, err := os.OpenFile(filepath.Join(filepath.Dir(cfg.Buffer), "runtime.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	_ = os.Remove(cfg.Socket)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
	})
	eventually(t, func() bool { _, err := os.Stat(cfg.Socket); return err == nil })
	return cmd
}

func dialAgent(t *testing.T, sock string) *sdkclient.Client {
	t.Helper()
	var c *sdkclient.Client
	eventually(t, func() bool {
		var err error
		c, err = sdkclient.Dial(context.Background(), sdkclient.Options{Socket: sock})
		return err == nil
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func event(n int) *v1.RuntimeEvent {
	return &v1.RuntimeEvent{Action: toolCheck("echo", fmt.Sprintf(`{"n":%d}`, n)), Outcome: fmt.Sprintf("ev-%d", n)}
}

// TestOutageBuffersAndReplaysExactlyOnce: with the gateway stopped, checks
// fail closed and events go to the disk buffer; the runtime is killed and
// restarted during the outage; when the gateway returns every event arrives
// once, in order, and the audit chains verify.
func TestOutageBuffersAndReplaysExactlyOnce(t *testing.T) {
	gwDir, rtDir := t.TempDir(), t.TempDir()
	gw := startGateway(t, gwDir, "127.0.0.1:0")
	cfg := childRuntime{Gateway: gw.addr, Buffer: filepath.Join(rtDir, "events.db"), Socket: filepath.Join(rtDir, "a1.sock"), Agent: agentA.String()}
	rt1 := runtimeChild(t, cfg)
	ag := dialAgent(t, cfg.Socket)
	ctx := context.Background()

	n := 0
	report := func(c *sdkclient.Client, k int) {
		t.Helper()
		for range k {
			n++
			if err := c.Report(ctx, event(n)); err != nil {
				t.Fatalf("report ev-%d: %v", n, err)
			}
		}
	}
	if _, err := ag.CheckToolCall(ctx, "echo", map[string]int{"n": 0}); err != nil {
		t.Fatalf("check while the gateway is up: %v", err)
	}
	report(ag, 3)

	gw.stop()
	for i := range 3 {
		_, err := ag.CheckToolCall(ctx, "echo", map[string]int{"outage": i})
		var e *sdkclient.Error
		if !errors.As(err, &e) || !errors.Is(err, sdkclient.ErrUnavailable) || !strings.Contains(e.Reason, runtime.ReasonUnavailable) {
			t.Fatalf("check during the outage: %v, want ErrUnavailable saying %q", err, runtime.ReasonUnavailable)
		}
		if e.Decision == nil || e.Decision.Decision != v1.Decision_DENY {
			t.Fatalf("check during the outage: decision %v, want DENY (fail closed)", e.Decision)
		}
	}
	report(ag, 3)
	var buffered int64
	eventually(t, func() bool {
		h, err := ag.Health(ctx)
		if err == nil {
			buffered = h.GetBufferedEvents()
		}
		return err == nil && !h.GetGatewayReachable() && buffered >= 6 // at least the 3 reports and 3 fail-closed decisions of the outage
	})

	// Kill the runtime mid-outage; a new one takes over the same buffer.
	if err := rt1.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = rt1.Wait()
	runtimeChild(t, cfg)
	ag2 := dialAgent(t, cfg.Socket)
	if h, err := ag2.Health(ctx); err != nil || h.GetBufferedEvents() != buffered {
		t.Fatalf("after restart: %v buffered (err %v), want the %d from before", h.GetBufferedEvents(), err, buffered)
	}
	report(ag2, 2)

	gw = startGateway(t, gwDir, gw.addr)
	eventually(t, func() bool {
		h, err := ag2.Health(ctx)
		return err == nil && h.GetBufferedEvents() == 0
	})

	audit := v1.NewAuditServiceClient(gw.conn(t))
	resp, err := audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{AgentId: agentA.Agent}, Ascending: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var failClosed int
	var lastSeq int64
	for _, r := range resp.GetRecords() {
		if !strings.HasSuffix(r.GetChain(), "/reports") {
			continue
		}
		if r.GetSeq() <= lastSeq {
			t.Fatalf("reports chain out of order: seq %d after %d", r.GetSeq(), lastSeq)
		}
		lastSeq = r.GetSeq()
		if r.GetRuleId() == "runtime/fail-closed" {
			failClosed++
			if r.GetDecision() != v1.Decision_DENY || !strings.Contains(r.GetReason(), runtime.ReasonUnavailable) {
				t.Errorf("fail-closed record: %v %q", r.GetDecision(), r.GetReason())
			}
			continue
		}
		if i := strings.Index(r.GetReason(), "ev-"); i >= 0 {
			got = append(got, strings.Fields(r.GetReason()[i:])[0])
		}
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("ev-%d", i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events at the gateway:\n got %v\nwant %v (each once, in order)", got, want)
	}
	if failClosed != 3 {
		t.Errorf("%d fail-closed decisions recorded, want 3", failClosed)
	}
	v, err := audit.VerifyAudit(ctx, &v1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("verify audit: %v %v", v, err)
	}
}

// TestReportEventsDeduplicates: a batch resent under the same reporter and
// event ids is acknowledged and not appended again; a bad batch changes nothing.
func TestReportEventsDeduplicates(t *testing.T) {
	gw := startGateway(t, t.TempDir(), "127.0.0.1:0")
	audit := v1.NewAuditServiceClient(gw.conn(t))
	ctx := context.Background()
	batch := &v1.ReportEventsRequest{Reporter: "test/reporter", Events: []*v1.ReportedEvent{
		{EventId: "1", Layer: v1.Layer_LAYER_KERNEL, Action: withAgent(toolCheck("echo", `{"k":"`+fakeGitHub+`"}`)), Decision: v1.Decision_DENY, Reason: "connect blocked"},
		{EventId: "2", Layer: v1.Layer_LAYER_RUNTIME, Action: withAgent(toolCheck("echo", `{}`))},
	}}
	for i, want := range []*v1.ReportEventsResponse{{Appended: 2}, {Duplicates: 2}} {
		got, err := audit.ReportEvents(ctx, batch)
		if err != nil || got.GetAppended() != want.GetAppended() || got.GetDuplicates() != want.GetDuplicates() {
			t.Fatalf("send %d: %v %v, want %v", i, got, err, want)
		}
	}
	bad := &v1.ReportEventsRequest{Reporter: "test/reporter", Events: []*v1.ReportedEvent{
		{EventId: "3", Layer: v1.Layer_LAYER_SDK, Action: withAgent(toolCheck("echo", `{}`))},
		{EventId: "4", Layer: v1.Layer(42), Action: withAgent(toolCheck("echo", `{}`))},
	}}
	if _, err := audit.ReportEvents(ctx, bad); err == nil || !strings.Contains(err.Error(), "events[1].layer") {
		t.Fatalf("bad layer: %v, want an error naming events[1].layer", err)
	}
	resp, err := audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{AgentId: agentA.Agent}, Limit: 100})
	if err != nil || len(resp.GetRecords()) != 2 {
		t.Fatalf("records: %d %v, want 2", len(resp.GetRecords()), err)
	}
	for _, r := range resp.GetRecords() {
		if strings.Contains(r.GetPayloadJson(), fakeGitHub) {
			t.Errorf("reported payload stored unredacted: %s", r.GetPayloadJson())
		}
	}
}

func withAgent(r *v1.CheckActionRequest) *v1.CheckActionRequest {
	r.Agent = &v1.AgentId{OrgId: agentA.Org, TeamId: agentA.Team, AgentId: agentA.Agent}
	return r
}
