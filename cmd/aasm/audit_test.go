package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
	"github.com/agent-assembly/agent-assembly/storage/sqlite/sqlitetest"
)

// startGatewayOn runs a real gateway on the given store URL and returns its address.
func startGatewayOn(t *testing.T, store string) string {
	return servertest.Start(t, "../../examples/policies", func(c *server.Config) {
		c.Store = store
		c.ReplicaID = "gw-test"
		c.AgentAuth = "off" // aasm check speaks for agents it never registers
	})
}

// makeDecisions runs n checks through aasm.
func makeDecisions(t *testing.T, addr string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		host := "en.wikipedia.org"
		if i%2 == 1 {
			host = "evil.example.com"
		}
		if code, _, errOut := run(t, "--addr", addr, "check", "--agent", "acme/research/researcher-1", "--host", host, "--trace", "trace-audit"); code == exitError {
			t.Fatalf("check failed: %s", errOut)
		}
	}
}

func TestAuditListExportTrace(t *testing.T) {
	addr := startGateway(t)
	makeDecisions(t, addr, 6)
	code, out, errOut := run(t, "--addr", addr, "audit", "list", "--agent", "acme/research", "--decision", "deny")
	if code != 0 || strings.Count(out, "DENY") != 3 || !strings.Contains(out, "research-agent/network.allowlist") {
		t.Fatalf("audit list: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, errOut = run(t, "--addr", addr, "audit", "export", "--trace", "trace-audit")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 6 {
		t.Fatalf("export: exit %d, %d lines\n%s", code, len(lines), errOut)
	}
	var prevSeq float64
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("export line is not JSON: %q", l)
		}
		seq, _ := m["seq"].(string) // int64 is a string in proto JSON
		var s float64
		fmt.Sscan(seq, &s)
		if s <= prevSeq {
			t.Fatalf("export not oldest first: %v after %v", s, prevSeq)
		}
		prevSeq = s
	}
	if code, _, errOut = run(t, "--addr", addr, "audit", "list", "--type", "teleport"); code != exitError || !strings.Contains(errOut, "--type \"teleport\" is not an action type") {
		t.Fatalf("bad --type: exit %d %s", code, errOut)
	}
	code, out, _ = run(t, "--addr", addr, "audit", "verify")
	if code != 0 || !strings.Contains(out, "true") {
		t.Fatalf("verify of an intact log: exit %d\n%s", code, out)
	}
}

func TestAuditTail(t *testing.T) {
	addr := startGateway(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"--addr", addr, "audit", "tail", "--decision", "deny"}, &out, &errOut)
	}()
	// Keep making decisions until the tail has printed a denied one.
	for i := 0; ; i++ {
		makeDecisions(t, addr, 2)
		if strings.Contains(out.String(), "evil.example.com") || strings.Contains(out.String(), "DENY") {
			break
		}
		if i > 100 {
			t.Fatalf("tail printed nothing: %q %q", out.String(), errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("tail exit %d: %s", code, errOut.String())
	}
	if strings.Contains(out.String(), "ALLOW") {
		t.Fatalf("tail --decision deny printed an allow:\n%s", out.String())
	}
}

// verifyNames runs aasm audit verify and checks it fails naming seq.
func verifyNames(t *testing.T, addr string, seq int) {
	t.Helper()
	code, out, errOut := run(t, "--addr", addr, "audit", "verify")
	if code != exitDeny {
		t.Fatalf("verify after tampering: exit %d, want %d\n%s\n%s", code, exitDeny, out, errOut)
	}
	if !strings.Contains(out, "false") || !strings.Contains(out, fmt.Sprint(seq)) {
		t.Fatalf("verify table does not name record %d:\n%s", seq, out)
	}
	code, out, _ = run(t, "--addr", addr, "-o", "json", "audit", "verify")
	if code != exitDeny {
		t.Fatalf("verify -o json after tampering: exit %d, want %d", code, exitDeny)
	}
	var resp struct {
		Ok              bool
		CheckpointKeyID string `json:"checkpoint_key_id"`
		Chains          []struct {
			Chain       string
			FirstBadSeq string `json:"first_bad_seq"`
			Problem     string
		}
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Ok || len(resp.Chains) != 1 || len(resp.CheckpointKeyID) != 16 {
		t.Fatalf("verify json (want the gateway's checkpoint key id too): %v\n%s", err, out)
	}
	if c := resp.Chains[0]; c.FirstBadSeq != fmt.Sprint(seq) || c.Problem == "" {
		t.Fatalf("verify names seq %s (%s), want %d", c.FirstBadSeq, c.Problem, seq)
	}
}

func TestAuditVerifyDetectsTamperingSQLite(t *testing.T) {
	db := filepath.Join(t.TempDir(), "aa.db")
	addr := startGatewayOn(t, "sqlite:"+db)
	makeDecisions(t, addr, 10)
	// An attacker with write access to the file changes one byte of record 4's payload.
	if err := sqlitetest.TamperRecord(t.Context(), db, "gw-test", 4, []byte("network_call"), []byte("network_cell")); err != nil {
		t.Fatal(err)
	}
	verifyNames(t, addr, 4)
}

func TestAuditVerifyDetectsTamperingPostgres(t *testing.T) {
	ctx := context.Background()
	schema, store := pgtest.Schema(t, "aasm_tamper")
	admin, err := pgx.Connect(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	addr := startGatewayOn(t, store)
	makeDecisions(t, addr, 10)
	// A database superuser bypasses the append-only trigger and edits record 7.
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"ALTER TABLE " + schema + ".audit_records DISABLE TRIGGER audit_records_append_only",
		"UPDATE " + schema + ".audit_records SET reason = reason || ' ' WHERE chain = 'gw-test' AND seq = 7",
		"ALTER TABLE " + schema + ".audit_records ENABLE TRIGGER audit_records_append_only",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	verifyNames(t, addr, 7)
}
