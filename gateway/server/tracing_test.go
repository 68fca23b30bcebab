package server_test

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// collector is an OTLP/gRPC trace receiver that keeps what it is sent.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans map[string]map[string]string // trace id -> span name -> aa.decision
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				id := hex.EncodeToString(sp.GetTraceId())
				if c.spans[id] == nil {
					c.spans[id] = map[string]string{}
				}
				dec := ""
				for _, kv := range sp.GetAttributes() {
					if kv.GetKey() == "aa.decision" {
						dec = kv.GetValue().GetStringValue()
					}
				}
				c.spans[id][sp.GetName()] = dec
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) span(trace, name string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.spans[trace][name]
	return d, ok
}

// TestTracesReachCollector checks that a CheckAction carrying a W3C
// traceparent is traced into a real OTLP/gRPC receiver, with the decision on
// the span, and that its audit record is named by the caller's trace id.
func TestTracesReachCollector(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{spans: map[string]map[string]string{}}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, col)
	go gs.Serve(l)
	defer gs.Stop()

	addr := servertest.Start(t, "../../examples/policies", func(c *server.Config) {
		c.OTLPEndpoint, c.OTLPInsecure = l.Addr().String(), true
		c.AgentAuth = "off"
	})
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	checkNamedByTrace(t, addr, traceID)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if dec, ok := col.span(traceID, "agentassembly.v1.PolicyService/CheckAction"); ok {
			if dec != "allow" {
				t.Fatalf("span aa.decision = %q, want allow", dec)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CheckAction span of trace %s reached the collector; got %v", traceID, col.spans)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNamedByTrace makes a CheckAction carrying traceID in a W3C
// traceparent and checks that its audit record is found by that trace id.
func checkNamedByTrace(t *testing.T, addr, traceID string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := v1.NewPolicyServiceClient(conn).CheckAction(ctx, &v1.CheckActionRequest{
		Agent:   &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := v1.NewAuditServiceClient(conn).ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{
		Filter: &v1.AuditFilter{TraceId: traceID}})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs.GetRecords()) != 1 || recs.GetRecords()[0].GetId() != resp.GetDecisionId() {
		t.Fatalf("audit records for trace %s: %v (decision %s)", traceID, recs.GetRecords(), resp.GetDecisionId())
	}
}

// TestAuditNamedByCallerTraceWithTracingOff: with no collector configured
// (the default), the caller's traceparent still names the audit record.
func TestAuditNamedByCallerTraceWithTracingOff(t *testing.T) {
	addr := servertest.Start(t, "../../examples/policies", func(c *server.Config) { c.AgentAuth = "off" })
	checkNamedByTrace(t, addr, "0af7651916cd43dd8448eb211c80319c")
}
