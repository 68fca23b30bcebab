package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// TestOSModeFlushesInBackground checks that in DurabilityOS an audit append
// is followed by an fdatasync of the journal within the flush bound, and that
// the flusher is quiet when nothing is written.
func TestOSModeFlushesInBackground(t *testing.T) {
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	syncs := &s.hub.audit.syncs
	settle := func() int64 {
		for {
			n := syncs.Load()
			time.Sleep(250 * time.Millisecond) // longer than an fsync under load
			if syncs.Load() == n {
				return n
			}
		}
	}
	before := settle()
	start := time.Now()
	if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{{Chain: "c", Time: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	for syncs.Load() == before {
		if time.Since(start) > 10*time.Second {
			t.Fatal("no background fdatasync of the audit journal after an append")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("append to journal fdatasync: %v", time.Since(start))
	// Idle: no further fsyncs.
	n := settle()
	time.Sleep(50 * time.Millisecond)
	if syncs.Load() != n {
		t.Fatal("the flusher fsyncs while nothing was committed")
	}

	// Other writes commit to SQLite; the WAL flusher fsyncs them.
	wal := s.walSyncs.Load()
	err := s.write(t.Context(), func(tx *sql.Tx) error {
		_, err := tx.Exec(`CREATE TABLE IF NOT EXISTS flush_probe (x)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); s.walSyncs.Load() == wal; time.Sleep(time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("no background fsync of the WAL after a commit")
		}
	}
}

const crashEnv = "AA_SQLITE_CRASH_CHILD"

// TestAppendSurvivesProcessKill appends in a child process that is killed
// with SIGKILL right after AppendAudit returns, without Close, and checks
// that every acknowledged record is there and the chain verifies.
//
// In "os-unflushed" the child's flusher and indexer are stopped, so its
// records are nowhere but in the journal's shared-memory copy: recovery must
// find them there. "os-unflushed-copy-lost" is its control: the copy is
// deleted before the reopen, and nothing is recovered.
//
// In the "-recycled" cases the child first journals and indexes records
// until the file it writes is a recycled one (about 80 MB), so that it dies
// writing a file that holds its earlier life's frames after the new ones.
func TestAppendSurvivesProcessKill(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	cases := []struct {
		name       string
		durability storage.Durability
		unflushed  bool // the child neither flushes nor indexes
		loseCopy   bool // the shared-memory copy is deleted before the reopen
		recycled   bool // the child dies writing a recycled journal file
	}{
		{"sync", storage.DurabilitySync, false, false, false},
		{"os", storage.DurabilityOS, false, false, false},
		{"os-unflushed", storage.DurabilityOS, true, false, false},
		{"os-unflushed-copy-lost", storage.DurabilityOS, true, true, false},
		{"sync-recycled", storage.DurabilitySync, false, false, true},
		{"os-recycled", storage.DurabilityOS, false, false, true},
		{"os-unflushed-recycled", storage.DurabilityOS, true, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.unflushed {
				if err := checkTmpfs(DefaultSharedMemoryDir); err != nil {
					t.Skipf("no shared-memory journal copies here: %v", err)
				}
			}
			path := filepath.Join(t.TempDir(), "aa.db")
			cmd := exec.Command(os.Args[0], "-test.run=^TestAppendSurvivesProcessKill$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%s|%v|%v", crashEnv, path, c.durability, c.unflushed, c.recycled))
			var out bytes.Buffer
			cmd.Stdout = &out
			cmd.Stderr = &out
			err := cmd.Run()
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL (%v): %s", err, out.String())
			}
			acked := bytes.Count(out.Bytes(), []byte("acked\n"))
			if acked == 0 {
				t.Fatalf("the child acknowledged nothing: %s", out.String())
			}
			var prefilled int64
			if c.recycled {
				m := regexp.MustCompile(`(?m)^prefilled (\d+)$`).FindSubmatch(out.Bytes())
				if m == nil {
					t.Fatalf("the child wrote no recycled journal file: %s", out.String())
				}
				prefilled, _ = strconv.ParseInt(string(m[1]), 10, 64)
			}
			if c.loseCopy {
				prefix, err := shmPrefix(path + "-audit")
				if err != nil {
					t.Fatal(err)
				}
				copies, _ := filepath.Glob(filepath.Join(DefaultSharedMemoryDir, prefix+"*"))
				if len(copies) == 0 {
					t.Fatal("the child left no shared-memory copy")
				}
				for _, p := range copies {
					os.Remove(p)
				}
			}
			s := openTest(t, Options{Path: path, Durability: c.durability})
			rep, err := s.VerifyAudit(t.Context(), "crash")
			if c.loseCopy {
				// The control: without the copy, the records are gone.
				if !errors.Is(err, storage.ErrNotFound) {
					t.Fatalf("with the shared-memory copy deleted: %+v, %v; want no records", rep, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK || rep.Records < 2*int64(acked)+prefilled {
				t.Fatalf("after SIGKILL: %+v with %d batches of 2 acknowledged\n%s", rep, acked, bytes.ReplaceAll(out.Bytes(), []byte("acked\n"), nil))
			}
			t.Logf("%d records acknowledged, %d recovered", 2*acked, rep.Records)
		})
	}
}

func crashChild() {
	f := strings.Split(os.Getenv(crashEnv), "|")
	path, d := f[0], storage.Durability(f[1])
	if f[2] == "true" {
		testHooks.noFlush, testHooks.noIndex = true, true
	}
	s, err := Open(context.Background(), Options{Path: path, Durability: d})
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	if f[3] == "true" {
		// Fill and index journal files until the current one is recycled
		// (files grow to 16 MiB; a full one is recycled once its records
		// are indexed).
		a := s.hub.audit
		payload := []byte(`{"p":"` + strings.Repeat("r", 8000) + `"}`)
		n := 0
		for recycled := false; !recycled; {
			if n >= 50_000 {
				fmt.Println("no recycled journal file after", n, "records")
				os.Exit(2)
			}
			batch := make([]*storage.AuditRecord, 50)
			for j := range batch {
				batch[j] = &storage.AuditRecord{Chain: "crash", Time: time.Now(), Payload: payload}
			}
			if err := s.AppendAudit(context.Background(), batch); err != nil {
				fmt.Println(err)
				os.Exit(2)
			}
			n += len(batch)
			if err := a.index(context.Background()); err != nil {
				fmt.Println(err)
				os.Exit(2)
			}
			a.mu.Lock()
			recycled = a.cur.recycled
			a.mu.Unlock()
		}
		fmt.Printf("prefilled %d\n", n)
	}
	for i := range 200 {
		batch := []*storage.AuditRecord{{Chain: "crash", Time: time.Now(), Reason: strconv.Itoa(i)}, {Chain: "crash", Time: time.Now()}}
		if err := s.AppendAudit(context.Background(), batch); err != nil {
			fmt.Println(err)
			os.Exit(2)
		}
		fmt.Print("acked\n")
	}
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
}

// TestLateFlushCountedAndLogged: a background flush that ends later than
// the flush window after the oldest write it covered is counted, and logged
// at most once a minute; the oldest write is the first after the previous
// flush.
func TestLateFlushCountedAndLogged(t *testing.T) {
	var out bytes.Buffer
	window := 2 * DefaultFlushInterval
	a := &auditLog{log: slog.New(slog.NewTextHandler(&out, nil)), syncKick: make(chan struct{}, 1), window: window}

	a.kickSync()
	first := a.firstUnsynced
	time.Sleep(time.Millisecond)
	a.kickSync() // a later write: the flush still covers the first
	if a.firstUnsynced != first {
		t.Fatalf("a second unflushed write moved the oldest from %v to %v", first, a.firstUnsynced)
	}

	base := time.Hour
	a.noteFlushed(base, base+window) // on time: ends at the bound
	if n := a.lateFlushes.Load(); n != 0 {
		t.Fatalf("%d late flushes after one that ended at the bound", n)
	}
	a.noteFlushed(base, base+window+time.Millisecond)
	a.noteFlushed(base+time.Second, base+time.Second+window+20*time.Millisecond)
	if n := a.lateFlushes.Load(); n != 2 {
		t.Fatalf("%d late flushes counted, want 2", n)
	}
	const line = "ended later than the durability window"
	if lines := strings.Count(out.String(), line); lines != 1 {
		t.Fatalf("%d log lines within a minute, want 1:\n%s", lines, out.String())
	}
	if !strings.Contains(out.String(), "after_write=51ms") || !strings.Contains(out.String(), "window=50ms") {
		t.Fatalf("the log does not say how late, against which window:\n%s", out.String())
	}
	a.noteFlushed(base+2*time.Minute, base+2*time.Minute+window+30*time.Millisecond)
	if lines := strings.Count(out.String(), line); lines != 2 {
		t.Fatalf("%d log lines after a minute, want 2:\n%s", lines, out.String())
	}
}

// TestFlushWindow: the journal promises a record on disk within twice the
// store's flush interval, the default one or the one it was given, and Open
// refuses an interval it cannot honour.
func TestFlushWindow(t *testing.T) {
	for _, tc := range []struct {
		interval, window time.Duration
	}{{0, 2 * DefaultFlushInterval}, {5 * time.Millisecond, 10 * time.Millisecond}, {MaxFlushInterval, 2 * MaxFlushInterval}} {
		s, err := Open(context.Background(), Options{Path: filepath.Join(t.TempDir(), "aa.db"),
			Durability: storage.DurabilityOS, FlushInterval: tc.interval, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.hub.audit.window; got != tc.window {
			t.Errorf("flush interval %v: window %v, want %v", tc.interval, got, tc.window)
		}
		s.Close()
	}
	for _, bad := range []time.Duration{-time.Millisecond, MaxFlushInterval + time.Millisecond} {
		_, err := Open(context.Background(), Options{Path: filepath.Join(t.TempDir(), "aa.db"), FlushInterval: bad})
		if err == nil || !strings.Contains(err.Error(), "flush interval "+bad.String()) {
			t.Errorf("flush interval %v: %v, want an error naming it", bad, err)
		}
	}
}
