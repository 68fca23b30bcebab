package postgres

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/internal/faultproxy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// eventually retries f until it succeeds or d passes; every failure must
// be storage.ErrUnavailable.
func eventually(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("%s while the database returns: %v, want an error matching ErrUnavailable", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still failing %v after the database returned: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func auditRec(chain string, i int) *storage.AuditRecord {
	return &storage.AuditRecord{
		Chain: chain, ID: "dec-" + chain, Time: time.Now(), Event: storage.EventDecision,
		Agent:    action.AgentID{Org: "acme", Team: "eng", Agent: "coder"},
		Kind:     action.KindToolCall,
		Payload:  []byte(`{"tool":"deploy","i":` + string(rune('0'+i%10)) + `}`),
		Decision: action.Allow, Mode: action.ModeEnforce, Latency: time.Millisecond,
	}
}

// TestOutage takes the database away under a running store: every
// operation fails with ErrUnavailable naming the server, nothing panics,
// and when the database returns the same store recovers: the pool redials,
// the listener reconnects, the subscription and the tail carry on, and the
// audit chain continues where it was.
func TestOutage(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testURL(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.New(t, u.Host)
	u.Host = proxy.Addr()
	schema := newSchema(t)
	ctx := t.Context()
	s, err := Open(ctx, u.String(), Options{Schema: schema, Sealer: testKey, ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	sub, err := s.Subscribe(ctx, "outage")
	if err != nil {
		t.Fatal(err)
	}
	tail, err := s.TailAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, []*storage.AuditRecord{auditRec("gw-1", 1)}); err != nil {
		t.Fatal(err)
	}
	if r := <-tail; r.Seq != 1 {
		t.Fatalf("tailed seq %d, want 1", r.Seq)
	}

	proxy.Stop()
	ops := map[string]func() error{
		"Ping":        func() error { return s.Ping(ctx) },
		"AppendAudit": func() error { return s.AppendAudit(ctx, []*storage.AuditRecord{auditRec("gw-1", 2)}) },
		"QueryAudit":  func() error { _, err := s.QueryAudit(ctx, storage.AuditQuery{}); return err },
		"VerifyAudit": func() error { _, err := s.VerifyAudit(ctx, "gw-1"); return err },
		"Reserve": func() error {
			_, err := s.Reserve(ctx, "budget:x", 1, 10, time.Now().Add(time.Hour))
			return err
		},
		"TakeToken": func() error { _, _, err := s.TakeToken(ctx, "rate:x", 1, 1, time.Now()); return err },
		"GetAgent": func() error {
			_, err := s.GetAgent(ctx, action.AgentID{Org: "a", Team: "b", Agent: "c"})
			return err
		},
		"PutSecret":       func() error { return s.PutSecret(ctx, "k", []byte("v")) },
		"Publish":         func() error { return s.Publish(ctx, "outage", []byte("x")) },
		"ActivePolicy":    func() error { _, err := s.ActivePolicyVersion(ctx); return err },
		"CreateApproval":  func() error { return s.CreateApproval(ctx, &storage.Approval{ID: "ap"}) },
		"TailAudit":       func() error { _, err := s.TailAudit(ctx); return err },
		"Subscribe":       func() error { _, err := s.Subscribe(ctx, "other"); return err },
		"CredentialCheck": func() error { _, err := s.CredentialRevoked(ctx, "tok"); return err },
	}
	for name, op := range ops {
		err := op()
		if !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("%s with the database down: %v, want an error matching ErrUnavailable", name, err)
		}
		if !strings.Contains(err.Error(), "postgres "+proxy.Addr()) {
			t.Errorf("%s error %q does not name the server %s", name, err, proxy.Addr())
		}
	}
	if err := s.Ping(ctx); !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Ping error %q should say the connection was refused", err)
	}

	proxy.Start()
	eventually(t, "Ping", 10*time.Second, func() error { return s.Ping(ctx) })
	next := []*storage.AuditRecord{auditRec("gw-1", 3)}
	eventually(t, "AppendAudit", 10*time.Second, func() error { return s.AppendAudit(ctx, next) })
	if next[0].Seq != 2 {
		t.Fatalf("after the outage the chain continued at seq %d, want 2", next[0].Seq)
	}
	rep, err := s.VerifyAudit(ctx, "gw-1")
	if err != nil || !rep.OK || rep.Records != 2 {
		t.Fatalf("VerifyAudit after the outage = %+v, %v; want OK with 2 records", rep, err)
	}
	select {
	case r := <-tail:
		if r.Seq != 2 {
			t.Fatalf("tail after the outage delivered seq %d, want 2", r.Seq)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the tail opened before the outage delivered nothing after it")
	}
	// The subscription made before the outage hears messages again once
	// the listener has reconnected.
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for got := false; !got; {
		if err := s.Publish(ctx, "outage", []byte("back")); err != nil {
			t.Fatalf("Publish after the outage: %v", err)
		}
		select {
		case m := <-sub:
			got = string(m) == "back"
		case <-tick.C:
		case <-deadline:
			t.Fatal("the subscription made before the outage hears nothing after it")
		}
	}
}

// TestTerminatedBackends kills every server process of a store with
// pg_terminate_backend (what a server restart or failover does to the
// connections); the store recovers without being reopened.
func TestTerminatedBackends(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testURL(t))
	if err != nil {
		t.Fatal(err)
	}
	schema := newSchema(t)
	app := "aa-" + schema
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	ctx := t.Context()
	s, err := Open(ctx, u.String(), Options{Schema: schema, Sealer: testKey})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sub, err := s.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := s.AppendAudit(ctx, []*storage.AuditRecord{auditRec("gw", i)}); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawConn(t, s)
	var killed int
	if err := raw.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed < 2 {
		t.Fatalf("terminated %d backends, want the pool's and the listener's", killed)
	}
	next := []*storage.AuditRecord{auditRec("gw", 9)}
	eventually(t, "AppendAudit", 10*time.Second, func() error { return s.AppendAudit(ctx, next) })
	if next[0].Seq != 5 {
		t.Fatalf("chain continued at %d, want 5", next[0].Seq)
	}
	deadline := time.After(15 * time.Second)
	for got := false; !got; {
		if err := s.Publish(ctx, "t", []byte("again")); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-sub:
			got = string(m) == "again"
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("subscription dead after its backend was terminated")
		}
	}
}

// TestAcquire: an operation that gets no pooled connection before its
// deadline fails with ErrUnavailable (and the deadline), the pool serves
// again once a connection comes free, and a closed store says so.
func TestAcquire(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{MaxConns: 1})
	held, err := s.pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err = s.Ping(ctx)
	if !errors.Is(err, storage.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ping with the only connection busy = %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	held.Release()
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping after the connection came free: %v", err)
	}
	s.Close()
	if err := s.Ping(t.Context()); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}
}

func TestOpenUnreachable(t *testing.T) {
	_, err := Open(t.Context(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", Options{})
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Open(closed port) = %v, want ErrUnavailable", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "postgres 127.0.0.1:1") || !strings.Contains(msg, "connection refused") {
		t.Errorf("error %q should name the server and say the connection was refused", msg)
	}
}

// TestMigrateConcurrently starts many replicas at once on an empty schema:
// the advisory lock lets exactly one apply each migration.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	u := testURL(t)
	schema := newSchema(t)
	var wg sync.WaitGroup
	stores := make([]*Store, 12)
	errs := make([]error, len(stores))
	for i := range stores {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), u, Options{Schema: schema}) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: Open: %v", i, err)
		}
		defer stores[i].Close()
	}
	raw := rawConn(t, stores[0])
	var n, max int
	if err := raw.QueryRow(t.Context(), `SELECT count(*), max(version) FROM schema_migrations`).Scan(&n, &max); err != nil {
		t.Fatal(err)
	}
	if max != SchemaVersion() || n != SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows up to %d, want each of 1..%d once", n, max, SchemaVersion())
	}
	// A database migrated by a newer gateway is refused, not downgraded.
	if _, err := raw.Exec(t.Context(), `INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')`); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), u, Options{Schema: schema})
	if err == nil || !strings.Contains(err.Error(), "newer than this gateway") {
		t.Fatalf("Open on a newer schema = %v, want a refusal", err)
	}
}

// TestAuditAppendOnly: the trigger refuses changes, and a change that
// bypasses it is caught by VerifyAudit, including records cut from the end.
func TestAuditAppendOnly(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := t.Context()
	for i := range 6 {
		if err := s.AppendAudit(ctx, []*storage.AuditRecord{auditRec("gw", i)}); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawConn(t, s)
	for _, sql := range []string{
		`UPDATE audit_records SET reason = 'edited' WHERE seq = 2`,
		`DELETE FROM audit_records WHERE seq = 6`,
		`TRUNCATE audit_records`,
	} {
		if _, err := raw.Exec(ctx, sql); err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Fatalf("%s: %v, want refused as append-only", sql, err)
		}
	}
	// Delete the last two records behind the trigger's back.
	err := pgx.BeginFunc(ctx, raw, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM audit_records WHERE chain = 'gw' AND seq > 4`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.VerifyAudit(ctx, "gw")
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.FirstBadSeq != 5 || !strings.HasPrefix(rep.Problem, storage.ProblemTruncated) {
		t.Fatalf("VerifyAudit after cutting the chain = %+v, want truncated at 5", rep)
	}
	// The store's own head cache is now stale; appending must not fork
	// the chain silently: the head check in the database holds.
	next := []*storage.AuditRecord{auditRec("gw", 7)}
	if err := s.AppendAudit(ctx, next); err != nil {
		t.Fatal(err)
	}
	if next[0].Seq != 7 {
		t.Fatalf("append after truncation got seq %d, want 7 (continuing the stored head)", next[0].Seq)
	}
}

// TestReplicaChains is the deployment shape: each replica writes its own
// chain, concurrently, and every chain verifies.
func TestReplicaChains(t *testing.T) {
	t.Parallel()
	a := openTest(t, "", Options{})
	b := openTest(t, a.schema, Options{})
	ctx := context.Background()
	var wg sync.WaitGroup
	for i, s := range []*Store{a, b, a, b} {
		chain := []string{"replica-a", "replica-b"}[i%2]
		wg.Go(func() {
			for j := range 25 {
				batch := []*storage.AuditRecord{auditRec(chain, j), auditRec(chain, j+1)}
				if err := s.AppendAudit(ctx, batch); err != nil {
					t.Errorf("AppendAudit: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	chains, err := b.AuditChains(ctx)
	if err != nil || len(chains) != 2 {
		t.Fatalf("AuditChains = %v, %v", chains, err)
	}
	for _, c := range chains {
		rep, err := a.VerifyAudit(ctx, c)
		if err != nil || !rep.OK || rep.Records != 100 {
			t.Fatalf("VerifyAudit(%s) = %+v, %v; want OK with 100 records", c, rep, err)
		}
	}
}
