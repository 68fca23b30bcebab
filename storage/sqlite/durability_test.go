package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
func TestAppendSurvivesProcessKill(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		t.Run(string(d), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "aa.db")
			cmd := exec.Command(os.Args[0], "-test.run=^TestAppendSurvivesProcessKill$")
			cmd.Env = append(os.Environ(), crashEnv+"="+path+"|"+string(d))
			var out bytes.Buffer
			cmd.Stdout = &out
			cmd.Stderr = &out
			err := cmd.Run()
			ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL (%v): %s", err, out.String())
			}
			acked := bytes.Count(out.Bytes(), []byte("acked\n"))
			s := openTest(t, Options{Path: path, Durability: d})
			rep, err := s.VerifyAudit(t.Context(), "crash")
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK || rep.Records < 2*int64(acked) || acked == 0 {
				t.Fatalf("after SIGKILL: %+v with %d batches of 2 acknowledged", rep, acked)
			}
			t.Logf("%d records acknowledged, %d recovered", 2*acked, rep.Records)
		})
	}
}

func crashChild() {
	var path, d string
	for i, c := range os.Getenv(crashEnv) {
		if c == '|' {
			path, d = os.Getenv(crashEnv)[:i], os.Getenv(crashEnv)[i+1:]
		}
	}
	s, err := Open(context.Background(), Options{Path: path, Durability: storage.Durability(d)})
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
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
