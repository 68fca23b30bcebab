package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
	"github.com/agent-assembly/agent-assembly/tracing"
)

var reRequestUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// startGatewayJSONLogs starts a gateway as startGateway does, with its logs
// written as JSON records (every level) to buf.
func startGatewayJSONLogs(t *testing.T, buf *syncbuf.Buffer) *testGateway {
	t.Helper()
	return startGatewayLogging(t, examplesDir(t), nil, slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// withRequestID returns the records whose request_id is id.
func withRequestID(recs []map[string]any, id string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["request_id"] == id {
			out = append(out, r)
		}
	}
	return out
}

// TestRequestIDsInGatewayLogs runs a gateway logging JSON: an operator's REST
// call with X-Request-Id gets it echoed and its log records carry it; a gRPC
// call without one gets a fresh UUID, echoed in the response header and in
// its log records; CheckAction, a hot path, gets none.
func TestRequestIDsInGatewayLogs(t *testing.T) {
	buf := &syncbuf.Buffer{}
	g := startGatewayJSONLogs(t, buf)
	ctx := context.Background()
	v0 := g.srv.Core().Snapshot().Version()

	// REST: apply a policy with the caller's request id.
	doc, _ := json.Marshal(map[string]any{"message": "block wikipedia", "documents": []map[string]string{{"name": "block.yaml", "yaml": blockWikipedia}}})
	req, err := http.NewRequest(http.MethodPost, g.base+"/v1/policies:apply", strings.NewReader(string(doc)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "abc-123")
	resp, err := adminDo(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/policies:apply: %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "abc-123" {
		t.Errorf("REST response header X-Request-Id = %q, want the caller's abc-123", got)
	}
	applied := buf.JSONRecords(t, "policy applied")
	if recs := withRequestID(applied, "abc-123"); len(recs) != 1 || recs[0]["version"] == v0 {
		t.Errorf("'policy applied' records %v, want one for the new version with request_id abc-123", applied)
	}

	// gRPC without a request id: roll back; the gateway makes one.
	var hdr metadata.MD
	if _, err := g.client.RollbackPolicy(ctx, &v1.RollbackPolicyRequest{Version: v0, Message: "undo"}, grpc.Header(&hdr)); err != nil {
		t.Fatalf("RollbackPolicy: %v", err)
	}
	ids := hdr.Get(tracing.RequestIDHeader)
	if len(ids) != 1 || !reRequestUUID.MatchString(ids[0]) {
		t.Fatalf("gRPC response header %s = %v, want one UUID", tracing.RequestIDHeader, ids)
	}
	applied = buf.JSONRecords(t, "policy applied")
	if recs := withRequestID(applied, ids[0]); len(recs) != 1 || recs[0]["version"] != v0 {
		t.Errorf("'policy applied' records %v, want one for %s with request_id %s", applied, v0, ids[0])
	}

	// The hot path: no id made, none echoed.
	hdr = nil
	if _, err := g.client.CheckAction(ctx, toolReq(coder, "git_status", ""), grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get(tracing.RequestIDHeader); len(got) != 0 {
		t.Errorf("CheckAction response header %s = %v, want none (hot path)", tracing.RequestIDHeader, got)
	}
}
