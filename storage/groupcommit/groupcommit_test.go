package groupcommit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// slowLog wraps a log, optionally delaying, blocking or failing appends.
type slowLog struct {
	storage.AuditLog
	delay   time.Duration
	gate    chan struct{} // when set, each append waits for a value
	fail    atomic.Pointer[error]
	batches atomic.Int64
	largest atomic.Int64
}

func (l *slowLog) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if l.gate != nil {
		select {
		case <-l.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	time.Sleep(l.delay)
	l.batches.Add(1)
	for {
		cur := l.largest.Load()
		if int64(len(recs)) <= cur || l.largest.CompareAndSwap(cur, int64(len(recs))) {
			break
		}
	}
	if e := l.fail.Load(); e != nil {
		return *e
	}
	return l.AuditLog.AppendAudit(ctx, recs)
}

type countMetrics struct{ records, batches atomic.Int64 }

func (m *countMetrics) ObserveBatch(n int, _ time.Duration, _ error) {
	m.records.Add(int64(n))
	m.batches.Add(1)
}

func record(i int) *storage.AuditRecord {
	return &storage.AuditRecord{ID: fmt.Sprintf("dec-%d", i), Time: time.Unix(1_700_000_000, int64(i)), Event: storage.EventDecision, Reason: "test"}
}

func TestConcurrentAppendsShareBatches(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, delay: 2 * time.Millisecond}
	m := &countMetrics{}
	w := groupcommit.New(log, groupcommit.Options{Chain: "gw-1", MaxBatch: 16, Metrics: m})
	const callers, each = 64, 10
	var wg sync.WaitGroup
	seqs := make(chan int64, callers*each)
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				r := record(c*each + i)
				if err := w.Append(t.Context(), r); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				if r.Chain != "gw-1" || r.Seq == 0 || len(r.Hash) != storage.HashSize {
					t.Errorf("Append did not fill in chain/seq/hash: %+v", r)
				}
				seqs <- r.Seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	seen := map[int64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		seen[s] = true
	}
	if len(seen) != callers*each {
		t.Fatalf("%d distinct seqs, want %d", len(seen), callers*each)
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	rep, err := mem.VerifyAudit(t.Context(), "gw-1")
	if err != nil || !rep.OK || rep.Records != callers*each {
		t.Fatalf("VerifyAudit = %+v, %v", rep, err)
	}
	if b := log.batches.Load(); b >= callers*each/2 {
		t.Fatalf("%d appends took %d backend writes: batching is not happening", callers*each, b)
	}
	if log.largest.Load() > 16 {
		t.Fatalf("a batch of %d exceeded MaxBatch 16", log.largest.Load())
	}
	if m.records.Load() != callers*each || m.batches.Load() != log.batches.Load() {
		t.Fatalf("metrics saw %d records in %d batches", m.records.Load(), m.batches.Load())
	}
	if n := w.Written(); n != callers*each {
		t.Fatalf("Written() = %d, want %d", n, callers*each)
	}
	t.Logf("%d records in %d writes", callers*each, log.batches.Load())
}

func TestBackendErrorReachesEveryWaiter(t *testing.T) {
	log := &slowLog{AuditLog: memory.New(memory.Options{}), gate: make(chan struct{})}
	boom := fmt.Errorf("disk full: %w", storage.ErrUnavailable)
	log.fail.Store(&boom)
	w := groupcommit.New(log, groupcommit.Options{Chain: "c"})
	errs := make(chan error, 10)
	for i := range 10 {
		go func() { errs <- w.Append(t.Context(), record(i)) }()
	}
	time.Sleep(50 * time.Millisecond) // let them all queue behind the gate
	close(log.gate)
	for range 10 {
		if err := <-errs; !errors.Is(err, storage.ErrUnavailable) {
			t.Fatalf("Append during a backend failure returned %v, want ErrUnavailable", err)
		}
	}
	if n, last := w.Written(), w.LastSeq(); n != 0 || last != 0 {
		t.Fatalf("Written() = %d, LastSeq() = %d after failed batches, want 0 and 0", n, last)
	}
	log.fail.Store(nil)
	r := record(99)
	if err := w.Append(t.Context(), r); err != nil || r.Seq != 1 {
		t.Fatalf("after recovery Append = %v seq %d; want nil and seq 1 (failed batches leave no trace)", err, r.Seq)
	}
	if n, last := w.Written(), w.LastSeq(); n != 1 || last != 1 {
		t.Fatalf("Written() = %d, LastSeq() = %d, want 1 and 1", n, last)
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// LastSeq follows the writer's own chain only: a record appended to another
// chain through the same writer does not move it.
func TestLastSeqFollowsTheWritersChain(t *testing.T) {
	w := groupcommit.New(memory.New(memory.Options{}), groupcommit.Options{Chain: "c"})
	defer w.Close(t.Context())
	for i := range 3 {
		if err := w.Append(t.Context(), record(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		r := record(10 + i)
		r.Chain = "other"
		if err := w.Append(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	if last := w.LastSeq(); last != 3 {
		t.Fatalf("LastSeq() = %d after 3 records in c and 5 in another chain, want 3", last)
	}
}

func TestCancelledCallerStillWritten(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, gate: make(chan struct{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c"})

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := w.Append(ctx, record(0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context = %v", err)
	}

	ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	r := record(1)
	if err := w.Append(ctx, r); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append whose caller gave up = %v", err)
	}
	if r.Seq != 0 {
		t.Fatal("a caller that gave up had its record changed")
	}
	close(log.gate)
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	page, err := mem.QueryAudit(t.Context(), storage.AuditQuery{})
	if err != nil || len(page.Records) != 1 || page.Records[0].ID != "dec-1" {
		t.Fatalf("stored %v, %v; want only the queued record dec-1", page.Records, err)
	}
}

// TestAppendUntilKeepsTheRecord: a caller's deadline ends its wait for a
// slow write with ErrNotDurableYet (a context.DeadlineExceeded), but never
// keeps its record from being written, even when the deadline has passed
// before the call.
func TestAppendUntilKeepsTheRecord(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, gate: make(chan struct{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c"})

	for i, until := range []time.Time{time.Now().Add(30 * time.Millisecond), time.Now().Add(-time.Second)} {
		r := record(i)
		err := w.AppendUntil(t.Context(), r, until)
		if !errors.Is(err, groupcommit.ErrNotDurableYet) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("AppendUntil past its deadline = %v", err)
		}
		if r.Seq != 0 {
			t.Fatal("a caller that stopped waiting had its record changed")
		}
	}
	close(log.gate)
	r := record(2)
	if err := w.AppendUntil(t.Context(), r, time.Now().Add(time.Minute)); err != nil || r.Seq == 0 {
		t.Fatalf("AppendUntil in time = %v, seq %d", err, r.Seq)
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	page, err := mem.QueryAudit(t.Context(), storage.AuditQuery{})
	if err != nil || len(page.Records) != 3 {
		t.Fatalf("stored %v, %v; want all three records", page.Records, err)
	}
}

func TestCloseFlushesAndRejects(t *testing.T) {
	mem := memory.New(memory.Options{})
	log := &slowLog{AuditLog: mem, delay: 5 * time.Millisecond}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxDelay: time.Millisecond})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			if err := w.Append(t.Context(), record(i)); err == nil {
				ok.Add(1)
			} else if !errors.Is(err, storage.ErrClosed) {
				t.Errorf("Append: %v", err)
			}
		})
	}
	time.Sleep(2 * time.Millisecond)
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	rep, err := mem.VerifyAudit(t.Context(), "c")
	if err != nil || rep.Records != ok.Load() {
		t.Fatalf("%d appends succeeded but %d stored (%v)", ok.Load(), rep.Records, err)
	}
	if err := w.Append(t.Context(), record(100)); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	if err := w.Close(t.Context()); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func TestCloseDeadline(t *testing.T) {
	log := &slowLog{AuditLog: memory.New(memory.Options{}), gate: make(chan struct{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", WriteTimeout: time.Minute})
	go w.Append(context.Background(), record(0))
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := w.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a hung backend = %v, want DeadlineExceeded", err)
	}
	close(log.gate)
}

func TestMaxDelayGathers(t *testing.T) {
	log := &slowLog{AuditLog: memory.New(memory.Options{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", MaxDelay: 30 * time.Millisecond})
	defer w.Close(t.Context())
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * time.Millisecond)
			if err := w.Append(t.Context(), record(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if b := log.batches.Load(); b != 1 {
		t.Fatalf("5 appends within MaxDelay took %d writes, want 1", b)
	}
}
