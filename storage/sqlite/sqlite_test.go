package sqlite

import (
	"bytes"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/secretbox"
	"github.com/agent-assembly/agent-assembly/storage/sqlite/sqlitetest"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

func testSealer(t *testing.T) storage.Sealer {
	t.Helper()
	k, err := secretbox.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := secretbox.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openTest(t *testing.T, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = discard()
	}
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// rawDB opens the file directly, bypassing the driver, as an attacker with
// file access would.
func rawDB(t *testing.T, s *Store) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+s.path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func tamper(t *testing.T, st storage.Store, chain string, seq int64) {
	t.Helper()
	s := st.(*Store)
	page, err := s.QueryAudit(t.Context(), storage.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range page.Records {
		if r.Chain == chain && r.Seq == seq {
			changed := bytes.Clone(r.Payload)
			changed[len(changed)/2] ^= 0x01 // one bit of one byte of the payload
			if err := sqlitetest.TamperRecord(t.Context(), s.path, chain, seq, r.Payload, changed); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("record %d of %q not found", seq, chain)
}

func rawSecrets(t *testing.T, st storage.Store) [][]byte {
	t.Helper()
	s := st.(*Store)
	var out [][]byte
	rows, err := rawDB(t, s).Query(`SELECT name, sealed FROM secrets`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var sealed []byte
		if err := rows.Scan(&name, &sealed); err != nil {
			t.Fatal(err)
		}
		out = append(out, sealed)
	}
	// And every byte of the files.
	for _, suffix := range []string{"", "-wal"} {
		if b, err := os.ReadFile(s.path + suffix); err == nil {
			out = append(out, b)
		}
	}
	return out
}

func conformance(t *testing.T, d storage.Durability) {
	sealer := testSealer(t)
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: d, Sealer: sealer})
	},
		storagetest.Reopen(func(t *testing.T, s storage.Store) storage.Store {
			return openTest(t, Options{Path: s.(*Store).opts.Path, Durability: d, Sealer: sealer})
		}),
		storagetest.TamperAudit(tamper),
		storagetest.RawSecrets(rawSecrets),
	)
}

func TestConformanceSync(t *testing.T) { conformance(t, storage.DurabilitySync) }
func TestConformanceOS(t *testing.T)   { conformance(t, storage.DurabilityOS) }

func TestMigrationsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "aa.db")
	for range 3 {
		s, err := Open(t.Context(), Options{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.SchemaVersion(t.Context())
		if err != nil || v != 8 {
			t.Fatalf("SchemaVersion = %d, %v; want 8", v, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	db, _ := sql.Open("sqlite", "file:"+path)
	defer db.Close()
	if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_ns) VALUES (99, '0099_future.sql', 0)`); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), Options{Path: path})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("newer than this binary")) {
		t.Fatalf("Open of a newer schema: %v", err)
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestSecretsReseal(t *testing.T) {
	storagetest.RunSecretsReseal(t, func(t *testing.T, sealer storage.Sealer, on storage.Secrets) storage.Secrets {
		path := filepath.Join(t.TempDir(), "aa.db")
		if on != nil {
			path = on.(*Store).opts.Path
		}
		return openTest(t, Options{Path: path, Sealer: sealer})
	})
}

// TestCountersAndHoldsSurviveRestart: counters and budget holds live in
// memory and are persisted behind, so a reopened file has the counters, the
// holds not yet taken (and only those), and none that expired.
func TestCountersAndHoldsSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aa.db")
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	s, err := Open(ctx, Options{Path: path, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reserve(ctx, "budget:a", 40, 100, exp); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"hold:kept", "hold:taken"} {
		if err := s.PutHold(ctx, k, []byte("data of "+k), exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutHold(ctx, "hold:short", []byte("x"), time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // persists
		t.Fatal(err)
	}

	s = openTest(t, Options{Path: path})
	if n, err := s.Counter(ctx, "budget:a"); err != nil || n != 40 {
		t.Fatalf("counter after restart = %d, %v; want 40", n, err)
	}
	if _, err := s.TakeHold(ctx, "hold:taken"); err != nil {
		t.Fatalf("hold after restart: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := s.hub.flushCounters(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeHold(ctx, "hold:short"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("expired hold: %v, want ErrNotFound", err)
	}

	r := openTest(t, Options{Path: path, Now: time.Now}) // a second Store on the file shares the memory
	if _, err := r.TakeHold(ctx, "hold:taken"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("hold taken before: %v, want ErrNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, Options{Path: path})
	if _, err := s.TakeHold(ctx, "hold:taken"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("hold taken before the restart is back: %v", err)
	}
	got, err := s.TakeHold(ctx, "hold:kept")
	if err != nil || string(got) != "data of hold:kept" {
		t.Fatalf("kept hold after two restarts = %q, %v", got, err)
	}
}
