package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
	"github.com/agent-assembly/agent-assembly/storage"
)

// TestStatusREST: GET /v1/status reports the replica, its store and policy,
// and counts a runtime stream while it is open and not after it closes.
func TestStatusREST(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	code, st := restCall(t, "GET", g.base+"/v1/status", "")
	if code != 200 || st["healthy"] != true || st["replica_id"] != "test-replica" || st["version"] != Version ||
		st["audit_durability"] != "sync" || !strings.HasPrefix(st["store"].(string), "sqlite:") ||
		st["policy_version"] != g.srv.Core().Snapshot().Version() || st["started_at"] == nil {
		t.Fatalf("GET /v1/status: %d %v", code, st)
	}
	if reps, _ := st["replicas"].([]any); len(reps) != 1 || reps[0] != "test-replica" {
		t.Fatalf("replicas = %v, want [test-replica]", st["replicas"])
	}
	if st["connected_runtimes"] != nil {
		t.Fatalf("connected_runtimes = %v with no runtime connected", st["connected_runtimes"])
	}

	_, cancel := subscribe(t, g, 0)
	admin := v1.NewAdminServiceClient(g.conn)
	runtimes := func() int32 {
		s, err := admin.GetStatus(context.Background(), &v1.GetStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return s.GetConnectedRuntimes()
	}
	waitFor(t, "one runtime stream counted", func() bool { return runtimes() == 1 })
	cancel()
	waitFor(t, "the closed runtime stream uncounted", func() bool { return runtimes() == 0 })
}

// TestStatusDurabilityFromStoreURL: a durability parameter in the store URL
// overrides --audit-durability, and the status and the "gateway serving"
// log line report what the store runs, with os durability's flush window.
func TestStatusDurabilityFromStoreURL(t *testing.T) {
	var logs syncbuf.Buffer
	g := startGatewayLogging(t, examplesDir(t), func(c *Config) {
		c.AuditDurability = "sync"
		c.Store += "?durability=os&flush=10ms"
	}, slog.New(slog.NewTextHandler(&logs, nil)))
	code, st := restCall(t, "GET", g.base+"/v1/status", "")
	if code != 200 || st["audit_durability"] != "os" {
		t.Fatalf("GET /v1/status: %d, audit_durability %v, want os", code, st["audit_durability"])
	}
	line := ""
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, `msg="gateway serving"`) {
			line = l
		}
	}
	if !strings.Contains(line, "durability=os flush_window=20ms") {
		t.Fatalf("the serving line does not report os durability and its window:\n%s", line)
	}
}

// TestAPIKeysOverREST creates, lists, rotates and revokes a key over REST:
// the secret is in the create and rotate answers only, the list never
// carries one, and each step is audited with the acting key's name.
func TestAPIKeysOverREST(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	code, body := restCall(t, "POST", g.base+"/v1/admin/keys", `{"name": "ci", "role": "viewer"}`)
	if code != 200 {
		t.Fatalf("create: %d %v", code, body)
	}
	secret, _ := body["secret"].(string)
	key, _ := body["key"].(map[string]any)
	id, _ := key["id"].(string)
	if !strings.HasPrefix(secret, "aak_"+id+"_") || key["role"] != "viewer" || key["name"] != "ci" {
		t.Fatalf("create answer: %v", body)
	}
	code, body = restCall(t, "GET", g.base+"/v1/admin/keys", "")
	if code != 200 || strings.Contains(fmt.Sprint(body), secretOf(secret)) || strings.Contains(fmt.Sprint(body), "secret") {
		t.Fatalf("list: %d %v (must not hold secrets)", code, body)
	}
	code, body = restCall(t, "POST", g.base+"/v1/admin/keys/"+id+":rotate", `{}`)
	if code != 200 || body["secret"] == secret || !strings.HasPrefix(fmt.Sprint(body["secret"]), "aak_"+id+"_") {
		t.Fatalf("rotate: %d %v", code, body)
	}
	code, body = restCall(t, "POST", g.base+"/v1/admin/keys/"+id+":revoke", `{}`)
	if code != 200 || body["revoked"] != true {
		t.Fatalf("revoke: %d %v", code, body)
	}
	for name, tc := range map[string]struct {
		method, path, body string
		code               int
	}{
		"bad role":       {"POST", "/v1/admin/keys", `{"name": "x", "role": "root"}`, 400},
		"no name":        {"POST", "/v1/admin/keys", `{"role": "admin"}`, 400},
		"bad name":       {"POST", "/v1/admin/keys", `{"name": "a b", "role": "admin"}`, 400},
		"unknown id":     {"POST", "/v1/admin/keys/0123456789abcdef:revoke", `{}`, 404},
		"bad id":         {"POST", "/v1/admin/keys/xyz:rotate", `{}`, 400},
		"rotate revoked": {"POST", "/v1/admin/keys/" + id + ":rotate", `{}`, 400},
	} {
		if code, body := restCall(t, tc.method, g.base+tc.path, tc.body); code != tc.code {
			t.Errorf("%s: %d %v, want %d", name, code, body, tc.code)
		}
	}
	waitFor(t, "key changes audited by the admin key's name", func() bool {
		page, err := g.srv.Store().QueryAudit(context.Background(), storage.AuditQuery{Event: storage.EventGovernance, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range page.Records {
			if strings.HasPrefix(r.RuleID, "apikey.") && strings.Contains(r.Reason, "by bootstrap-admin") && strings.Contains(string(r.Payload), `"by":"bootstrap-admin"`) {
				n++
			}
		}
		return n == 3
	})
}

// TestStatusReplicasSeen: each replica lists the other once it has written
// an audit record, found through the shared store.
func TestStatusReplicasSeen(t *testing.T) {
	a, b := sharedReplicas(t)
	if _, err := b.client.CheckAction(context.Background(), toolReq(agent("acme", "eng", "coder-1"), "git_status", "")); err != nil {
		t.Fatal(err)
	}
	st, err := v1.NewAdminServiceClient(a.conn).GetStatus(context.Background(), &v1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.GetReplicas(), []string{"gw-a", "gw-b"}) || !st.GetHealthy() {
		t.Fatalf("gw-a status: replicas %v healthy %v, want [gw-a gw-b] and healthy", st.GetReplicas(), st.GetHealthy())
	}
	if strings.Contains(st.GetStore(), "password") && !strings.Contains(st.GetStore(), "xxxxx") {
		t.Fatalf("store URL not redacted: %s", st.GetStore())
	}
	if !strings.HasPrefix(st.GetCounters(), "redis://") {
		t.Fatalf("counters = %q, want the redis URL", st.GetCounters())
	}
}

func TestRedactStore(t *testing.T) {
	cases := map[string]string{
		"":                    "",
		"memory:":             "memory:",
		"sqlite:./data/aa.db": "sqlite:./data/aa.db",
		"postgres://aa:s3cret@db:5432/aa?sslmode=disable":          "postgres://aa:xxxxx@db:5432/aa?sslmode=disable",
		"postgres://aa@db/aa?password=s3cret&sslmode=require":      "postgres://aa@db/aa?password=xxxxx&sslmode=require",
		"redis://:s3cret@127.0.0.1:6379/0":                         "redis://:xxxxx@127.0.0.1:6379/0",
		"redis://127.0.0.1:56379/0?prefix=x":                       "redis://127.0.0.1:56379/0?prefix=x",
		"postgres://aa:s3cret@db/aa?schema=x&Password=also-secret": "postgres://aa:xxxxx@db/aa?Password=xxxxx&schema=x",
	}
	for in, want := range cases {
		got := redactStore(in)
		if got != want {
			t.Errorf("redactStore(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(got, "s3cret") || strings.Contains(got, "also-secret") {
			t.Errorf("redactStore(%q) leaks a secret: %q", in, got)
		}
	}
}

// BenchmarkReplicaStatus measures a status call on a SQLite store whose
// last hour holds more records than the replica scan reads (5000), written
// by three replicas.
func BenchmarkReplicaStatus(b *testing.B) {
	g := startGateway(b, examplesDir(b), nil)
	ctx := context.Background()
	now := time.Now()
	for i := range 6 {
		recs := make([]*storage.AuditRecord, 1000)
		for j := range recs {
			recs[j] = &storage.AuditRecord{
				Chain: fmt.Sprintf("bench-%d", j%3), ID: fmt.Sprintf("bench-%d-%d", i, j), Time: now.Add(-time.Duration(i*1000+j) * time.Millisecond),
				Event: storage.EventDecision, Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"},
				Kind: action.KindToolCall, Payload: []byte(`{}`), Decision: action.Allow, Mode: action.ModeEnforce,
			}
		}
		if err := g.srv.Store().AppendAudit(ctx, recs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		st, err := g.srv.ReplicaStatus(ctx)
		if err != nil || len(st.Replicas) != 4 {
			b.Fatalf("status: %v, replicas %v", err, st.Replicas)
		}
	}
}
