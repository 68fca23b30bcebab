package groupcommit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// checkChain verifies chain holds exactly the records named by ids, each
// once, in one gapless hash chain.
func checkChain(t *testing.T, mem *memory.Store, chain string, ids map[string]int64) {
	t.Helper()
	rep, err := mem.VerifyAudit(t.Context(), chain)
	if err != nil || !rep.OK || rep.Records != int64(len(ids)) {
		t.Fatalf("VerifyAudit = %+v, %v; want OK with %d records", rep, err, len(ids))
	}
	seen := map[string]bool{}
	var seq int64
	q := storage.AuditQuery{Limit: 1000}
	for {
		page, err := mem.QueryAudit(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Records {
			if seen[r.ID] {
				t.Fatalf("record %s written twice", r.ID)
			}
			seen[r.ID] = true
			if want, ok := ids[r.ID]; !ok {
				t.Fatalf("record %s was written but its Append did not succeed", r.ID)
			} else if want != 0 && want != r.Seq {
				t.Fatalf("record %s stored at seq %d but Append reported %d", r.ID, r.Seq, want)
			}
			seq = max(seq, r.Seq)
		}
		if page.NextCursor == "" {
			break
		}
		q.Cursor = page.NextCursor
	}
	if len(seen) != len(ids) || seq != int64(len(ids)) {
		t.Fatalf("stored %d records up to seq %d, want %d", len(seen), seq, len(ids))
	}
}

// TestManyCallersExactlyOnce drives many callers, half of whose contexts
// never end, and checks every record is written exactly once, at the seq
// its Append reported, in one gapless chain.
func TestManyCallersExactlyOnce(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, delay: 200 * time.Microsecond}
	m := &countMetrics{}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxBatch: 8, QueueSize: 16, Metrics: m})
	const callers, each = 48, 40
	var (
		mu  sync.Mutex
		ids = map[string]int64{}
		wg  sync.WaitGroup
	)
	for c := range callers {
		wg.Go(func() {
			ctx := context.Background()
			if c%2 == 1 {
				ctx = t.Context()
			}
			for i := range each {
				r := record(c*each + i)
				if err := w.Append(ctx, r); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				if r.Seq == 0 || r.Chain != "c" {
					t.Errorf("Append did not fill in the record: %+v", r)
				}
				mu.Lock()
				ids[r.ID] = r.Seq
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkChain(t, mem, "c", ids)
	if last := w.LastSeq(); last != callers*each {
		t.Fatalf("LastSeq() = %d after %d records, want %d", last, callers*each, callers*each)
	}
	if m.records.Load() != callers*each {
		t.Fatalf("metrics saw %d records, want %d", m.records.Load(), callers*each)
	}
	if log.largest.Load() > 8 {
		t.Fatalf("a batch of %d exceeded MaxBatch 8", log.largest.Load())
	}
	if b := log.batches.Load(); b >= callers*each/2 {
		t.Fatalf("%d appends took %d writes: batching is not happening", callers*each, b)
	}
	t.Logf("%d records in %d writes", callers*each, log.batches.Load())
}

// TestCancelledCallerMidWrite cancels the caller whose record is being
// written while others queue behind it: the write and the queued records
// still complete, and only that caller sees its context's error.
func TestCancelledCallerMidWrite(t *testing.T) {
	for _, name := range []string{"followers-can-lead", "followers-cancellable"} {
		t.Run(name, func(t *testing.T) {
			mem := memory.New(memory.Options{})
			log := &slowLog{AuditLog: mem, gate: make(chan struct{})}
			w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxBatch: 4})

			ctx, cancel := context.WithCancel(t.Context())
			leaderErr := make(chan error, 1)
			go func() { leaderErr <- w.Append(ctx, record(0)) }()
			time.Sleep(20 * time.Millisecond) // the leader is in the write

			fctx := context.Background()
			if name == "followers-cancellable" {
				fctx = t.Context()
			}
			const followers = 10
			ids := map[string]int64{"dec-0": 0}
			res := make(chan *storage.AuditRecord, followers)
			errs := make(chan error, followers)
			for i := 1; i <= followers; i++ {
				r := record(i)
				ids[r.ID] = 0
				go func() {
					err := w.Append(fctx, r)
					errs <- err
					res <- r
				}()
			}
			time.Sleep(20 * time.Millisecond) // the followers queue
			cancel()
			if err := <-leaderErr; !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled leader's Append = %v, want Canceled", err)
			}
			close(log.gate)
			for range followers {
				if err := <-errs; err != nil {
					t.Fatalf("follower Append = %v", err)
				}
				r := <-res
				ids[r.ID] = r.Seq
			}
			if err := w.Close(t.Context()); err != nil {
				t.Fatal(err)
			}
			checkChain(t, mem, "c", ids)
		})
	}
}

// TestCloseUnderLoad closes the writer while callers append as fast as they
// can: every Append either succeeds with its record stored or fails with
// ErrClosed and stores nothing, and no write happens after Close returns.
func TestCloseUnderLoad(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, delay: 100 * time.Microsecond}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxBatch: 8, QueueSize: 8})
	var (
		mu     sync.Mutex
		ids    = map[string]int64{}
		wg     sync.WaitGroup
		next   atomic.Int64
		closed atomic.Int64
	)
	for c := range 32 {
		wg.Go(func() {
			ctx := context.Background()
			if c%2 == 1 {
				ctx = t.Context()
			}
			for {
				r := record(int(next.Add(1)))
				err := w.Append(ctx, r)
				if errors.Is(err, storage.ErrClosed) {
					closed.Add(1)
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				ids[r.ID] = r.Seq
				mu.Unlock()
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	after := log.batches.Load()
	wg.Wait()
	if log.batches.Load() != after {
		t.Fatal("a write happened after Close returned")
	}
	if closed.Load() != 32 {
		t.Fatalf("%d callers saw ErrClosed, want 32", closed.Load())
	}
	checkChain(t, mem, "c", ids)
	t.Logf("%d records before Close", len(ids))
}

// TestQueueFullBlocks fills the queue behind a hung write: the next Append
// waits, and gives up with its context's error without being written.
func TestQueueFullBlocks(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, gate: make(chan struct{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxBatch: 1, QueueSize: 2})
	errs := make(chan error, 3)
	for i := range 3 { // one in the write, two queued
		go func() { errs <- w.Append(context.Background(), record(i)) }()
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if err := w.Append(ctx, record(3)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to a full queue = %v, want DeadlineExceeded", err)
	}
	close(log.gate)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkChain(t, mem, "c", map[string]int64{"dec-0": 0, "dec-1": 0, "dec-2": 0})
}
