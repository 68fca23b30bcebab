package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// storeAudit appends each decision straight to a store.
type storeAudit struct{ st storage.AuditLog }

func (a storeAudit) Append(ctx context.Context, r *storage.AuditRecord) error {
	return a.st.AppendAudit(ctx, []*storage.AuditRecord{r})
}

// TestKernelEventsCorrelate checks that a kernel verdict reported after the
// SDK's check of the same exec names that decision and joins its trace, so
// GetTrace shows both layers; an unrelated kernel event is left alone.
func TestKernelEventsCorrelate(t *testing.T) {
	st := memory.New(memory.Options{})
	core, err := NewCore(Options{Audit: storeAudit{st}, Chain: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	core.SetSnapshot(exampleSnapshot(t))
	ctx := context.Background()
	agent := &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}
	sdk, err := core.Check(ctx, &v1.CheckActionRequest{Agent: agent, TraceId: "trace-exec-1",
		Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: "curl", Args: []string{"https://example.com"}}}})
	if err != nil {
		t.Fatal(err)
	}
	svc := NewAuditService(st).WithReports(core, st)
	kernel := func(id, command string) *v1.ReportedEvent {
		return &v1.ReportedEvent{EventId: id, Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.New(time.Now()), Decision: v1.Decision_DENY,
			RuleId: "kernel/exec", Reason: "kill: exec denied",
			Action: &v1.CheckActionRequest{Agent: agent, ActionType: v1.ActionType_PROCESS_EXEC,
				Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: command}}}}
	}
	if _, err := svc.ReportEvents(ctx, &v1.ReportEventsRequest{Reporter: "runtime/test",
		Events: []*v1.ReportedEvent{kernel("e1", "/usr/bin/curl"), kernel("e2", "/usr/bin/wget")}}); err != nil {
		t.Fatal(err)
	}
	page, err := st.QueryAudit(ctx, storage.AuditQuery{Kind: action.KindProcessExec, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var curl, wget *storage.AuditRecord
	for _, r := range page.Records {
		if strings.HasSuffix(r.Chain, "/reports") && strings.Contains(string(r.Payload), "curl") {
			curl = r
		}
		if strings.HasSuffix(r.Chain, "/reports") && strings.Contains(string(r.Payload), "wget") {
			wget = r
		}
	}
	if curl == nil || wget == nil {
		t.Fatalf("reported records missing: %+v", page.Records)
	}
	if !strings.Contains(curl.Reason, "decision "+sdk.GetDecisionId()) || curl.TraceID != "trace-exec-1" {
		t.Fatalf("kernel record not linked to the SDK decision %s: reason %q trace %q", sdk.GetDecisionId(), curl.Reason, curl.TraceID)
	}
	if strings.Contains(wget.Reason, "also decided") || wget.TraceID != "" {
		t.Fatalf("unrelated kernel record linked: %q %q", wget.Reason, wget.TraceID)
	}
	trace, err := st.QueryAudit(ctx, storage.AuditQuery{TraceID: "trace-exec-1"})
	if err != nil || len(trace.Records) != 2 {
		t.Fatalf("the trace lists %d records, want the SDK decision and the kernel verdict: %v", len(trace.Records), err)
	}
}

// TestKernelNetworkEventCorrelatesByResolvedHost: the SDK checked a
// connection by host name; the kernel saw the address. With the host names
// the runtime's resolver mapped that address from, the kernel record is
// linked to the SDK decision; without them, or on another port, it is not.
func TestKernelNetworkEventCorrelatesByResolvedHost(t *testing.T) {
	st := memory.New(memory.Options{})
	core, err := NewCore(Options{Audit: storeAudit{st}, Chain: "gw"})
	if err != nil {
		t.Fatal(err)
	}
	core.SetSnapshot(exampleSnapshot(t))
	ctx := context.Background()
	agent := &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}
	sdk, err := core.Check(ctx, &v1.CheckActionRequest{Agent: agent, TraceId: "trace-net-1",
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "API.example.com", Port: 443, Protocol: "https"}}})
	if err != nil {
		t.Fatal(err)
	}
	svc := NewAuditService(st).WithReports(core, st)
	kernel := func(id string, port uint32, hosts ...string) *v1.ReportedEvent {
		return &v1.ReportedEvent{EventId: id, Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.New(time.Now()), Decision: v1.Decision_ALLOW,
			RuleId: "kernel/connect4", Reason: "allow", ResolvedHosts: hosts,
			Action: &v1.CheckActionRequest{Agent: agent, ActionType: v1.ActionType_NETWORK_CALL,
				Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "93.184.216.34", Port: port, Protocol: "tcp"}}}}
	}
	if _, err := svc.ReportEvents(ctx, &v1.ReportEventsRequest{Reporter: "runtime/test", Events: []*v1.ReportedEvent{
		kernel("named", 443, "cdn.example.net", "api.example.com"), kernel("bare", 443), kernel("otherport", 8443, "api.example.com"),
	}}); err != nil {
		t.Fatal(err)
	}
	page, err := st.QueryAudit(ctx, storage.AuditQuery{Kind: action.KindNetworkCall, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*storage.AuditRecord{}
	for _, r := range page.Records {
		for _, id := range []string{"named", "bare", "otherport"} {
			if r.ID == reportRecordID("runtime/test", id) {
				got[id] = r
			}
		}
	}
	if len(got) != 3 {
		t.Fatalf("reported records missing: %v", got)
	}
	if r := got["named"]; !strings.Contains(r.Reason, "for host api.example.com") || !strings.Contains(r.Reason, "decision "+sdk.GetDecisionId()) || r.TraceID != "trace-net-1" {
		t.Errorf("kernel record not linked to the SDK decision %s by its resolved host: reason %q trace %q", sdk.GetDecisionId(), r.Reason, r.TraceID)
	}
	for _, id := range []string{"bare", "otherport"} {
		if r := got[id]; strings.Contains(r.Reason, "also decided") || r.TraceID != "" {
			t.Errorf("%s: linked without a matching resolved host and port: %q %q", id, r.Reason, r.TraceID)
		}
	}
}
