package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// testGateway is a gateway serving on loopback listeners for one test.
type testGateway struct {
	srv    *Server
	conn   *grpc.ClientConn
	client v1.PolicyServiceClient
	base   string // http://127.0.0.1:port
	cfg    Config
	stop   func() error
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startGateway serves the given policy path with a SQLite store in a temp dir.
func startGateway(t testing.TB, policyPath string, mod func(*Config)) *testGateway {
	t.Helper()
	return startGatewayLogging(t, policyPath, mod, slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
}

// startGatewayLogging is startGateway with the gateway's logs going to log.
func startGatewayLogging(t testing.TB, policyPath string, mod func(*Config), log *slog.Logger) *testGateway {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.PolicyPath = policyPath
	cfg.Store = "sqlite:" + filepath.Join(dir, "aa.db")
	cfg.SecretsKeyFile = filepath.Join(dir, "secrets.key")
	cfg.ReplicaID = "test-replica"
	cfg.PolicyPoll = 50 * time.Millisecond
	// These tests are about decisions, audit and lifecycle, and name their
	// agents freely; agentauth_test.go runs the default (token) mode.
	cfg.AgentAuth = "off"
	cfg.BootstrapAdminKey = testAdminKey   // operator calls below carry it (auth_test.go)
	cfg.ExtAuthzTimeout = 10 * time.Second // loaded machines; the budget itself is tested in extauthz
	cfg.AdminKeyFile = "none"
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start gateway: %v", err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl) }()
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(15 * time.Second):
				stopErr = fmt.Errorf("gateway did not stop within 15s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stop gateway: %v", err)
		}
	})
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), keyCreds(testAdminKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	g := &testGateway{srv: srv, conn: conn, client: v1.NewPolicyServiceClient(conn), base: "http://" + hl.Addr().String(), cfg: cfg, stop: stop}
	// Wait until both listeners answer.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(g.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not healthy: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return g
}

func examplesDir(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func agent(org, team, id string) *v1.AgentId {
	return &v1.AgentId{OrgId: org, TeamId: team, AgentId: id}
}

func toolReq(a *v1.AgentId, name, args string) *v1.CheckActionRequest {
	return &v1.CheckActionRequest{Agent: a, Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: args}}}
}

func netReq(a *v1.AgentId, host string, port uint32) *v1.CheckActionRequest {
	return &v1.CheckActionRequest{Agent: a, Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: host, Port: port, Protocol: "https", Method: "GET"}}}
}

var (
	coder      = agent("acme", "eng", "coder-1")
	researcher = agent("acme", "research", "researcher-1")
)

// auditRecord finds the record with the given decision id in the store.
func auditRecord(t *testing.T, st storage.Store, id string) *storage.AuditRecord {
	t.Helper()
	page, err := st.QueryAudit(context.Background(), storage.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatalf("query audit: %v", err)
	}
	for _, r := range page.Records {
		if r.ID == id {
			return r
		}
	}
	return nil
}

func TestGRPCCheckAllowAndDeny(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	cases := []struct {
		name string
		req  *v1.CheckActionRequest
		want v1.Decision
	}{
		{"coder git_status", toolReq(coder, "git_status", "{}"), v1.Decision_ALLOW},
		{"researcher wikipedia", netReq(researcher, "en.wikipedia.org", 443), v1.Decision_ALLOW},
		{"researcher evil host", netReq(researcher, "evil.example.com", 443), v1.Decision_DENY},
		{"unknown org", toolReq(agent("nobody", "x", "y"), "git_status", "{}"), v1.Decision_DENY},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := g.client.CheckAction(ctx, tc.req)
			if err != nil {
				t.Fatalf("CheckAction: %v", err)
			}
			if resp.GetDecision() != tc.want {
				t.Fatalf("decision %s (rule %s: %s), want %s", resp.GetDecision(), resp.GetPolicyRuleId(), resp.GetReason(), tc.want)
			}
			if resp.GetPolicyRuleId() == "" || resp.GetPolicyVersion() == "" || resp.GetDecisionId() == "" {
				t.Fatalf("response lacks rule, version or decision id: %v", resp)
			}
			if resp.GetPolicyVersion() != g.srv.Core().Snapshot().Version() {
				t.Fatalf("policy version %q, serving %q", resp.GetPolicyVersion(), g.srv.Core().Snapshot().Version())
			}
			// The record is durable before the answer: it must be in the store now.
			rec := auditRecord(t, g.srv.Store(), resp.GetDecisionId())
			if rec == nil {
				t.Fatalf("decision %s not in the audit log", resp.GetDecisionId())
			}
			if rec.RuleID != resp.GetPolicyRuleId() || rec.Event != storage.EventDecision || rec.Chain != "test-replica" {
				t.Fatalf("audit record does not match the answer: %+v", rec)
			}
		})
	}
}

func TestGRPCExplain(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	resp, err := g.client.ExplainAction(context.Background(), netReq(researcher, "evil.example.com", 443))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetResult().GetDecision() != v1.Decision_DENY {
		t.Fatalf("explain decision %s, want DENY", resp.GetResult().GetDecision())
	}
	if len(resp.GetTrace()) == 0 {
		t.Fatal("explain returned no trace")
	}
	var sawDecider bool
	for _, s := range resp.GetTrace() {
		if s.GetRuleId() == resp.GetResult().GetPolicyRuleId() {
			sawDecider = true
		}
	}
	if !sawDecider {
		t.Fatalf("trace does not contain the deciding rule %q: %v", resp.GetResult().GetPolicyRuleId(), resp.GetTrace())
	}
	// Explain does not audit.
	if rec := auditRecord(t, g.srv.Store(), resp.GetResult().GetDecisionId()); rec != nil && resp.GetResult().GetDecisionId() != "" {
		t.Fatalf("explain wrote an audit record: %+v", rec)
	}
}

func TestGRPCBatchCheck(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	resp, err := g.client.BatchCheck(context.Background(), &v1.BatchCheckRequest{Requests: []*v1.CheckActionRequest{
		toolReq(coder, "git_status", "{}"),
		netReq(researcher, "evil.example.com", 443),
		{Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}, // no agent
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := []v1.Decision{}
	for _, r := range resp.GetResponses() {
		got = append(got, r.GetDecision())
	}
	want := []v1.Decision{v1.Decision_ALLOW, v1.Decision_DENY, v1.Decision_DENY}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("batch decisions %v, want %v", got, want)
	}
	if r := resp.GetResponses()[2].GetReason(); !strings.Contains(r, "requests[2].agent") {
		t.Fatalf("malformed batch entry reason %q does not name requests[2].agent", r)
	}
	if _, err := g.client.BatchCheck(context.Background(), &v1.BatchCheckRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty batch: %v, want InvalidArgument", err)
	}
}

func TestGRPCMalformedRequests(t *testing.T) {
	g := startGateway(t, examplesDir(t), func(c *Config) { c.MaxRequestBytes = 4096 })
	big := `{"blob":"` + strings.Repeat("a", 5000) + `"}`
	cases := []struct {
		name  string
		req   *v1.CheckActionRequest
		field string
	}{
		{"missing agent", &v1.CheckActionRequest{Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}, "agent"},
		{"missing agent id", toolReq(agent("acme", "eng", ""), "git_status", ""), "agent.agent_id"},
		{"no action", &v1.CheckActionRequest{Agent: coder}, "context"},
		{"unknown action type", &v1.CheckActionRequest{Agent: coder, ActionType: 99, Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}, "action_type"},
		{"mismatched action type", &v1.CheckActionRequest{Agent: coder, ActionType: v1.ActionType_LLM_CALL, Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}, "action_type"},
		{"oversized args", toolReq(coder, "git_status", big), "tool_call.args_json"},
		{"garbled args", toolReq(coder, "git_status", "{not json"), "tool_call.args_json"},
		{"bad port", &v1.CheckActionRequest{Agent: coder, Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "a.b", Port: 70000}}}, "network_call.port"},
		{"control char", toolReq(agent("acme", "eng", "co\x00der"), "git_status", ""), "agent.agent_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := countEvents(t, g.srv.Store(), storage.EventRejected)
			_, err := g.client.CheckAction(context.Background(), tc.req)
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if !strings.Contains(st.Message(), tc.field+":") {
				t.Fatalf("message %q does not name field %q", st.Message(), tc.field)
			}
			if after := countEvents(t, g.srv.Store(), storage.EventRejected); after != before+1 {
				t.Fatalf("rejected records %d -> %d, want one more", before, after)
			}
		})
	}
}

func countEvents(t *testing.T, st storage.Store, ev storage.RecordEvent) int {
	t.Helper()
	page, err := st.QueryAudit(context.Background(), storage.AuditQuery{Event: ev, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Records)
}

// postJSON posts body with the admin key and returns the status and the
// decoded JSON answer.
func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	return postJSONAs(t, url, body, testAdminKey)
}

// postJSONAs is postJSON presenting bearer ("" sends no Authorization).
func postJSONAs(t *testing.T, url, body, bearer string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("response is not JSON (%d): %s", resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

func TestRESTCheckExplainBatch(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	code, m := postJSON(t, g.base+"/v1/actions:check", `{"agent":{"org_id":"acme","team_id":"eng","agent_id":"coder-1"},"tool_call":{"name":"git_status","args_json":"{}"}}`)
	if code != 200 || m["decision"] != "ALLOW" {
		t.Fatalf("allowed check: %d %v", code, m)
	}
	code, m = postJSON(t, g.base+"/v1/actions:check", `{"agent":{"org_id":"acme","team_id":"research","agent_id":"researcher-1"},"network_call":{"host":"evil.example.com","port":443}}`)
	if code != 200 || m["decision"] != "DENY" || m["policy_rule_id"] == "" {
		t.Fatalf("denied check: %d %v", code, m)
	}
	code, m = postJSON(t, g.base+"/v1/actions:check", `{"tool_call":{"name":"git_status"}}`)
	if code != 400 || !strings.Contains(fmt.Sprint(m["message"]), "agent: is required") {
		t.Fatalf("malformed check: %d %v", code, m)
	}
	code, m = postJSON(t, g.base+"/v1/actions:check", `{"agent": 7`)
	if code != 400 {
		t.Fatalf("garbled JSON: %d %v", code, m)
	}
	code, m = postJSON(t, g.base+"/v1/actions:explain", `{"agent":{"org_id":"acme","team_id":"research","agent_id":"researcher-1"},"network_call":{"host":"evil.example.com","port":443}}`)
	if code != 200 || m["trace"] == nil {
		t.Fatalf("explain: %d %v", code, m)
	}
	code, m = postJSON(t, g.base+"/v1/actions:batchCheck", `{"requests":[{"agent":{"org_id":"acme","team_id":"eng","agent_id":"coder-1"},"tool_call":{"name":"git_status"}},{"agent":{"org_id":"acme","team_id":"research","agent_id":"researcher-1"},"network_call":{"host":"evil.example.com","port":443}}]}`)
	if code != 200 {
		t.Fatalf("batch: %d %v", code, m)
	}
	if rs, _ := m["responses"].([]any); len(rs) != 2 {
		t.Fatalf("batch responses: %v", m)
	}
}

func TestRESTServiceEndpoints(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	get := func(path string) (int, string) {
		resp, err := adminGet(g.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/openapi.json")
	var doc map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &doc) != nil || !strings.Contains(body, "/v1/actions:check") {
		t.Fatalf("openapi.json: %d %.200s", code, body)
	}
	if code, body = get("/readyz"); code != 200 || !strings.Contains(body, g.srv.Core().Snapshot().Version()) {
		t.Fatalf("readyz: %d %s", code, body)
	}
	if _, err := g.client.CheckAction(context.Background(), toolReq(coder, "git_status", "")); err != nil {
		t.Fatal(err)
	}
	if code, body = get("/metrics"); code != 200 || !strings.Contains(body, `aa_checks_total{decision="allow",kind="tool_call",layer="sdk",mode="enforce"}`) {
		t.Fatalf("metrics: %d, no aa_checks_total for the allowed check", code)
	}
	hc, err := healthpb.NewHealthClient(g.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: v1.PolicyService_ServiceDesc.ServiceName})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health: %v %v", hc, err)
	}
	// Oversized bodies are refused before they are read.
	big := bytes.Repeat([]byte("a"), 5<<20)
	resp, err := adminPost(g.base+"/v1/actions:check", "application/json", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("5 MiB body: status %d, want 413", resp.StatusCode)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// writeAtomic replaces a file the way editors and config managers do.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const blockWikipedia = `apiVersion: agent-assembly/v1
kind: Policy
metadata:
  name: hot-reload-test
spec:
  scope: {level: org, org: acme}
  default: allow
  rules:
    - id: no-wikipedia
      priority: 1000
      match: {action: network_call, name: "*.wikipedia.org"}
      decision: deny
      reason: blocked by the hot-reload test
`

func TestHotReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, examplesDir(t), dir)
	g := startGateway(t, dir, nil)
	v0 := g.srv.Core().Snapshot().Version()

	// Concurrent load for the whole test: no check may fail while versions swap.
	ctx, cancel := context.WithCancel(context.Background())
	var failures, checks atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := g.client.CheckAction(ctx, toolReq(coder, "git_status", "{}"))
				if ctx.Err() != nil {
					return
				}
				checks.Add(1)
				if err != nil || resp.GetDecision() != v1.Decision_ALLOW {
					failures.Add(1)
				}
			}
		}()
	}
	waitVersion := func(pred func(string) bool) string {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if v := g.srv.Core().Snapshot().Version(); pred(v) {
				return v
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("policy version did not change from %s", g.srv.Core().Snapshot().Version())
		return ""
	}

	// 1. A valid change swaps in.
	writeAtomic(t, filepath.Join(dir, "zz-hot-reload.yaml"), blockWikipedia)
	v1v := waitVersion(func(v string) bool { return v != v0 })
	resp, err := g.client.CheckAction(context.Background(), netReq(researcher, "en.wikipedia.org", 443))
	if err != nil || resp.GetDecision() != v1.Decision_DENY || resp.GetPolicyRuleId() != "hot-reload-test/no-wikipedia" || resp.GetPolicyVersion() != v1v {
		t.Fatalf("after reload: %v %v", resp, err)
	}

	// 2. An invalid change is rejected; the previous version keeps serving.
	writeAtomic(t, filepath.Join(dir, "zz-hot-reload.yaml"), strings.Replace(blockWikipedia, "decision: deny", "decision: maybe", 1))
	deadline := time.Now().Add(5 * time.Second)
	for g.srv.Reloader().LastError() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	lerr := g.srv.Reloader().LastError()
	if lerr == nil || !strings.Contains(lerr.Error(), "zz-hot-reload.yaml:") || !strings.Contains(lerr.Error(), "decision") {
		t.Fatalf("invalid policy not rejected with a precise error: %v", lerr)
	}
	if v := g.srv.Core().Snapshot().Version(); v != v1v {
		t.Fatalf("version changed to %s after an invalid edit", v)
	}
	resp, err = g.client.CheckAction(context.Background(), netReq(researcher, "en.wikipedia.org", 443))
	if err != nil || resp.GetDecision() != v1.Decision_DENY {
		t.Fatalf("old version not serving after invalid edit: %v %v", resp, err)
	}

	// 3. Removing the file restores the original version (same fingerprint).
	if err := os.Remove(filepath.Join(dir, "zz-hot-reload.yaml")); err != nil {
		t.Fatal(err)
	}
	waitVersion(func(v string) bool { return v == v0 })
	g.srv.Reloader().Trigger() // SIGHUP path: a no-op reload must not disturb anything

	time.Sleep(100 * time.Millisecond)
	cancel()
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d checks failed during reloads", n, checks.Load())
	}
	if checks.Load() == 0 {
		t.Fatal("the load generator made no checks")
	}
	t.Logf("%d checks during three reloads, none failed", checks.Load())
}

func TestStartRefusesInvalidPolicy(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  default: sometimes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PolicyPath = dir
	cfg.Store = "memory:"
	cfg.SecretsKeyFile = filepath.Join(t.TempDir(), "k")
	_, err := New(context.Background(), cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:5") {
		t.Fatalf("want a refusal naming bad.yaml:5, got %v", err)
	}
}

func TestGracefulShutdownFlushesAudit(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	var ids []string
	for i := 0; i < 20; i++ {
		resp, err := g.client.CheckAction(context.Background(), toolReq(coder, "git_status", ""))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetDecisionId())
	}
	if err := g.stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	// Reopen the same SQLite file with a fresh gateway: every answered decision is there and the chain verifies.
	g2 := startGateway(t, examplesDir(t), func(c *Config) { c.Store = g.cfg.Store; c.SecretsKeyFile = g.cfg.SecretsKeyFile })
	for _, id := range ids {
		if auditRecord(t, g2.srv.Store(), id) == nil {
			t.Fatalf("decision %s lost across restart", id)
		}
	}
	rep, err := g2.srv.Store().VerifyAudit(context.Background(), "test-replica")
	if err != nil || !rep.OK {
		t.Fatalf("chain does not verify after restart: %+v %v", rep, err)
	}
}

// TestUnixSocketListener serves gRPC on a Unix socket, as a per-host
// deployment next to the runtime would.
func TestUnixSocketListener(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "gw.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PolicyPath = examplesDir(t)
	cfg.Store = "memory:"
	cfg.SecretsKeyFile = filepath.Join(t.TempDir(), "k")
	cfg.BootstrapAdminKey = testAdminKey
	cfg.AgentAuth = "off" // about the listener; a unix socket counts as local
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l, nil) }()
	defer func() { cancel(); <-done }()
	conn, err := grpc.NewClient("unix:"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := v1.NewPolicyServiceClient(conn).CheckAction(context.Background(), toolReq(coder, "git_status", ""))
	if err != nil || resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("check over a unix socket: %v %v", resp, err)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", st.Mode(), err)
	}
	// A stale socket file left by a crashed run is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l2, err := Listen("unix:" + stale)
	if err != nil {
		t.Fatalf("listen over a stale socket file: %v", err)
	}
	l2.Close()
}

func TestRESTAuditAndTrace(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	for i := 0; i < 3; i++ {
		req := toolReq(coder, "git_status", "")
		req.TraceId = "run-42"
		if _, err := g.client.CheckAction(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	get := func(path string) (int, map[string]any) {
		resp, err := adminGet(g.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, m
	}
	code, m := get("/v1/traces/run-42")
	recs, _ := m["records"].([]any)
	if code != 200 || len(recs) != 3 {
		t.Fatalf("GET /v1/traces/run-42: %d %v", code, m)
	}
	code, m = get("/v1/audit?filter.agent_id=coder-1&limit=2")
	recs, _ = m["records"].([]any)
	if code != 200 || len(recs) != 2 || m["next_cursor"] == "" {
		t.Fatalf("GET /v1/audit page: %d %v", code, m)
	}
	code, m = get("/v1/audit?cursor=" + fmt.Sprint(m["next_cursor"]) + "&filter.agent_id=coder-1&limit=2")
	if recs, _ = m["records"].([]any); code != 200 || len(recs) != 1 {
		t.Fatalf("GET /v1/audit second page: %d %v", code, m)
	}
	if code, m = get("/v1/audit?cursor=garbage"); code != 400 {
		t.Fatalf("bad cursor: %d %v", code, m)
	}
	if code, m = get("/v1/audit?filter.event=nonsense"); code != 400 || !strings.Contains(fmt.Sprint(m["message"]), "filter.event") {
		t.Fatalf("bad event filter: %d %v", code, m)
	}
	resp, err := adminPost(g.base+"/v1/audit:verify", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if resp.StatusCode != 200 || v["ok"] != true {
		t.Fatalf("POST /v1/audit:verify: %d %v", resp.StatusCode, v)
	}
}

// TestExtAuthzOnGatewayListener calls the gateway's gRPC port as Envoy's
// ext_authz filter would.
func TestExtAuthzOnGatewayListener(t *testing.T) {
	// A loaded CI machine can take longer than the 150ms default for the
	// first durable decision; the timeout itself is tested in extauthz.
	g := startGateway(t, examplesDir(t), func(c *Config) { c.ExtAuthzTimeout = 10 * time.Second })
	client := authv3.NewAuthorizationClient(g.conn)
	var meta *corev3.Metadata // Envoy's metadata context, usually empty
	check := func(host string) *authv3.CheckResponse {
		resp, err := client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Scheme: "https", Host: host, Path: "/wiki/Go",
				Headers: map[string]string{"x-aa-agent-id": "acme/research/researcher-1"},
			}},
			MetadataContext: meta,
		}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// The listener's codec reads plain requests itself and leaves the
	// others to protobuf-go, counting them; both are answered alike.
	const slow = "aa_extauthz_requests_decoded_slowly_total"
	if r := check("en.wikipedia.org"); r.GetOkResponse() == nil {
		t.Fatalf("allowed host denied: %v", r)
	}
	if n := scrape(t, g, slow); n != 0 {
		t.Fatalf("plain requests decoded slowly: %v", n)
	}
	meta = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.rbac": {}}}
	if r := check("en.wikipedia.org"); r.GetOkResponse() == nil {
		t.Fatalf("allowed host with a metadata context denied: %v", r)
	}
	if n := scrape(t, g, slow); n != 1 {
		t.Fatalf("a request with a metadata context was not counted as decoded slowly: %v", n)
	}
	r := check("evil.example.com")
	if d := r.GetDeniedResponse(); d == nil || d.GetStatus().GetCode() != 403 || !strings.Contains(d.GetBody(), "research-agent/network.allowlist") {
		t.Fatalf("denied host: %v", r)
	}
	hc, err := healthpb.NewHealthClient(g.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("ext_authz health: %v %v", hc, err)
	}
}
