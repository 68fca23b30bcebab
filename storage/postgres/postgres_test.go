package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

// testURL returns the database the integration tests use, or skips.
func testURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("AA_TEST_POSTGRES_URL")
	if u == "" {
		t.Skip("AA_TEST_POSTGRES_URL not set: run scripts/testdb.sh start and eval $(scripts/testdb.sh env)")
	}
	return u
}

// newSchema returns a fresh schema name, dropped when the test ends.
func newSchema(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "aa_test_" + hex.EncodeToString(b[:])
	u := testURL(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return schema
}

var testKey = func() storage.Sealer {
	k, err := secretbox.GenerateKey()
	if err != nil {
		panic(err)
	}
	b, err := secretbox.New(k)
	if err != nil {
		panic(err)
	}
	return b
}()

// openTest opens a Store on schema (a fresh one when empty).
func openTest(t testing.TB, schema string, opts Options) *Store {
	t.Helper()
	u := testURL(t)
	if schema == "" {
		schema = newSchema(t)
	}
	opts.Schema = schema
	if opts.Sealer == nil {
		opts.Sealer = testKey
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, u, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rawConn is a direct connection to s's schema, bypassing the driver.
func rawConn(t testing.TB, s *Store) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(testURL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = pgx.Identifier{s.schema}.Sanitize()
	c, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// tamper flips one bit of one payload byte of a stored record. The
// append-only trigger is bypassed the way an attacker with superuser rights
// would (session_replication_role = replica).
func tamper(t *testing.T, s *Store, chain string, seq int64) {
	t.Helper()
	c := rawConn(t, s)
	err := pgx.BeginFunc(t.Context(), c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		tag, err := tx.Exec(t.Context(), `UPDATE audit_records SET payload = set_byte(payload, 0, get_byte(payload, 0) # 1)
			WHERE chain = $1 AND seq = $2`, chain, seq)
		if err == nil && tag.RowsAffected() != 1 {
			t.Fatalf("tamper: %d rows changed, want 1", tag.RowsAffected())
		}
		return err
	})
	if err != nil {
		t.Fatalf("tamper: %v", err)
	}
}

func TestConformance(t *testing.T) {
	testURL(t)
	storagetest.Run(t, func(t *testing.T) storage.Store { return openTest(t, "", Options{}) },
		storagetest.Reopen(func(t *testing.T, p storage.Store) storage.Store {
			return openTest(t, p.(*Store).schema, Options{})
		}),
		storagetest.TamperAudit(func(t *testing.T, p storage.AuditLog, chain string, seq int64) {
			tamper(t, p.(*Store), chain, seq)
		}),
		storagetest.RawSecrets(func(t *testing.T, p storage.Secrets) [][]byte {
			c := rawConn(t, p.(*Store))
			rows, err := c.Query(t.Context(), `SELECT sealed, convert_to(secrets::text, 'UTF8') FROM secrets`)
			if err != nil {
				t.Fatal(err)
			}
			var out [][]byte
			var sealed, text []byte
			_, err = pgx.ForEachRow(rows, []any{&sealed, &text}, func() error {
				out = append(out, append([]byte(nil), sealed...), append([]byte(nil), text...))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}),
	)
}

// TestConformanceDurabilityOS runs the audit cases with
// synchronous_commit=off.
func TestConformanceDurabilityOS(t *testing.T) {
	t.Parallel()
	testURL(t)
	storagetest.RunAudit(t, func(t *testing.T) *Store { return openTest(t, "", Options{Durability: storage.DurabilityOS}) },
		storagetest.Reopen(func(t *testing.T, p *Store) *Store {
			return openTest(t, p.schema, Options{Durability: storage.DurabilityOS})
		}))
}

func TestURLSchemaParameter(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testURL(t))
	if err != nil {
		t.Fatal(err)
	}
	schema := newSchema(t)
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	s, err := Open(t.Context(), u.String(), Options{})
	if err != nil {
		t.Fatalf("Open with ?schema=: %v", err)
	}
	defer s.Close()
	if s.schema != schema {
		t.Fatalf("schema = %q, want %q", s.schema, schema)
	}
	var got string
	c := rawConn(t, s)
	if err := c.QueryRow(t.Context(), `SELECT table_schema FROM information_schema.tables WHERE table_name = 'audit_records' AND table_schema = $1`, schema).Scan(&got); err != nil {
		t.Fatalf("audit_records not created in schema %s: %v", schema, err)
	}
}

func TestURLOptions(t *testing.T) {
	t.Parallel()
	u := testURL(t)
	schema := newSchema(t)
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	s, err := Open(t.Context(), u+sep+"schema="+schema+"&durability=os&pool_max_conns=3", Options{Durability: storage.DurabilitySync})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if s.schema != schema || s.opts.Durability != storage.DurabilityOS || s.opts.MaxConns != 3 {
		t.Fatalf("URL options not applied: schema %q durability %q max conns %d", s.schema, s.opts.Durability, s.opts.MaxConns)
	}
	for _, bad := range []string{"durability=eventually", "pool_max_conns=0"} {
		if _, err := Open(t.Context(), u+sep+bad, Options{}); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Open(?%s) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{{Durability: "eventually"}, {MaxConns: -1}, {ConnectTimeout: -time.Second}} {
		if _, err := Open(t.Context(), "postgres://127.0.0.1:1/x", o); err == nil {
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	if _, err := Open(t.Context(), "postgres://%zz", Options{}); err == nil {
		t.Error("Open(bad url) succeeded")
	}
}

// TestVerifyWhileAppending verifies a chain while it grows: the head and
// the records come from one snapshot, so a live chain never reports a gap.
func TestVerifyWhileAppending(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := t.Context()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			if err := s.AppendAudit(ctx, []*storage.AuditRecord{auditRec("live", i)}); err != nil {
				t.Errorf("AppendAudit: %v", err)
				return
			}
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		rep, err := s.VerifyAudit(ctx, "live")
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil || !rep.OK {
			t.Fatalf("VerifyAudit of a growing chain = %+v, %v", rep, err)
		}
	}
}

func TestSecretsReseal(t *testing.T) {
	storagetest.RunSecretsReseal(t, func(t *testing.T, sealer storage.Sealer, on storage.Secrets) storage.Secrets {
		schema := ""
		if on != nil {
			schema = on.(*Store).opts.Schema
		}
		return openTest(t, schema, Options{Sealer: sealer})
	})
}
