package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/faultproxy"
)

// TestPostgresOutageFailsClosed cuts the gateway off from PostgreSQL
// mid-run: checks are denied with a reason that says why, nothing panics,
// /readyz reports the store, and service resumes by itself when the
// database is reachable again.
func TestPostgresOutageFailsClosed(t *testing.T) {
	raw := os.Getenv("AA_TEST_POSTGRES_URL")
	if raw == "" {
		t.Skip("AA_TEST_POSTGRES_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	schema := fmt.Sprintf("outage_%d", time.Now().UnixNano())
	conn, err := pgx.Connect(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })

	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	p := startProc(t, "-store", u.String(), "-secrets-key-file", filepath.Join(t.TempDir(), "k"), "-audit-timeout", "1s")
	policy, audit := p.client(t)
	req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}, TraceId: "outage",
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}
	check := func() *v1.CheckActionResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := policy.CheckAction(ctx, req)
		if err != nil {
			t.Fatalf("check during outage must answer, not fail: %v", err)
		}
		return resp
	}
	if r := check(); r.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("before the outage: %v", r)
	}

	proxy.Stop()
	for i := 0; i < 3; i++ {
		r := check()
		if r.GetDecision() != v1.Decision_DENY || r.GetPolicyRuleId() != "audit" || !strings.Contains(r.GetReason(), "audit log unavailable, failing closed") {
			t.Fatalf("during the outage: want a fail-closed deny naming the audit log, got %v", r)
		}
		t.Logf("during outage: %s", r.GetReason())
	}
	if body := httpGet(t, "http://"+p.http+"/readyz"); !strings.Contains(body, "not ready") {
		t.Fatalf("readyz during the outage: %s", body)
	}

	proxy.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := check()
		if r.GetDecision() == v1.Decision_ALLOW {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service did not resume after the database returned: %v", r)
		}
		time.Sleep(200 * time.Millisecond)
	}
	v, err := audit.VerifyAudit(context.Background(), &v1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("chain after the outage: %v %v", v, err)
	}
	if strings.Contains(p.log.String(), "panic") {
		t.Fatalf("gateway panicked:\n%s", p.log)
	}
}

func httpGet(t *testing.T, u string) string {
	t.Helper()
	resp, err := httpClient.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestRedisOutageFailsClosed cuts the gateway off from the Redis that holds
// its rate-limit counters: a rate-limited tool call is denied with a reason
// naming the backend, calls without a limit still work, and service resumes
// when Redis is reachable again.
func TestRedisOutageFailsClosed(t *testing.T) {
	raw := os.Getenv("AA_TEST_REDIS_URL")
	if raw == "" {
		t.Skip("AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
	q := u.Query()
	q.Set("prefix", fmt.Sprintf("outage%d:", time.Now().UnixNano()))
	u.RawQuery = q.Encode()
	dir := t.TempDir()
	p := startProc(t, "-store", "sqlite:"+filepath.Join(dir, "aa.db"), "-counters", u.String(), "-secrets-key-file", filepath.Join(dir, "k"))
	policy, _ := p.client(t)
	limited := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_fetch"}}} // git_*: 120/hour
	unlimited := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"},
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status"}}}
	check := func(req *v1.CheckActionRequest) *v1.CheckActionResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := policy.CheckAction(ctx, req)
		if err != nil {
			t.Fatalf("check must answer, not fail: %v", err)
		}
		return resp
	}
	if r := check(limited); r.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("before the outage: %v", r)
	}
	proxy.Stop()
	r := check(limited)
	if r.GetDecision() != v1.Decision_DENY || r.GetPolicyRuleId() != "rate limit" || !strings.Contains(r.GetReason(), "rate limit backend unavailable, failing closed") || !strings.Contains(r.GetReason(), "redis") {
		t.Fatalf("during the outage: want a fail-closed deny naming redis, got %v", r)
	}
	t.Logf("during outage: %s", r.GetReason())
	if r := check(unlimited); r.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("a call without a rate limit must not need redis: %v", r)
	}
	proxy.Start()
	deadline := time.Now().Add(30 * time.Second)
	for check(limited).GetDecision() != v1.Decision_ALLOW {
		if time.Now().After(deadline) {
			t.Fatal("service did not resume after redis returned")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
