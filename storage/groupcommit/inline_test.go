package groupcommit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// inlineLog is a memory log that takes every other record inline (or none,
// or fails them), counting which way each went.
type inlineLog struct {
	*memory.Store
	mu       sync.Mutex
	decline  func(n int64) bool // whether the n-th offer is declined
	fail     error
	offers   atomic.Int64
	inline   atomic.Int64
	appended atomic.Int64 // records through AppendAudit
	chains   []string     // chain of every record offered
}

func (l *inlineLog) TryAppendAudit(recs []*storage.AuditRecord) (bool, error) {
	n := l.offers.Add(1)
	l.mu.Lock()
	for _, r := range recs {
		l.chains = append(l.chains, r.Chain)
	}
	l.mu.Unlock()
	if l.decline != nil && l.decline(n) {
		return false, nil
	}
	if l.fail != nil {
		return true, l.fail
	}
	l.inline.Add(int64(len(recs)))
	return true, l.Store.AppendAudit(context.Background(), recs)
}

func (l *inlineLog) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	l.appended.Add(int64(len(recs)))
	return l.Store.AppendAudit(ctx, recs)
}

// TestInlineAppends: a log that can append at once gets each record on the
// caller's goroutine; records it declines go through the writer; both land
// in one verifiable chain, and the counters say which way each went.
func TestInlineAppends(t *testing.T) {
	log := &inlineLog{Store: memory.New(memory.Options{}), decline: func(n int64) bool { return n%2 == 0 }}
	m := &countMetrics{}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c", Metrics: m})
	const n = 400
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r := record(i)
			if err := w.Append(t.Context(), r); err != nil {
				t.Error(err)
			}
			if r.Chain != "c" || r.Seq == 0 || len(r.Hash) == 0 {
				t.Errorf("record %d not linked: %+v", i, r)
			}
		})
	}
	wg.Wait()
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	inline, queued := log.inline.Load(), log.appended.Load()
	if inline+queued != n || inline == 0 || queued == 0 {
		t.Fatalf("%d inline + %d through the writer; want both, %d in all", inline, queued, n)
	}
	if got := w.Inlined(); got != uint64(inline) {
		t.Errorf("Inlined() = %d, want %d", got, inline)
	}
	if got := w.Written(); got != n {
		t.Errorf("Written() = %d, want %d", got, n)
	}
	if got := w.LastSeq(); got != n {
		t.Errorf("LastSeq() = %d, want %d (inline and queued appends both count)", got, n)
	}
	if got := m.records.Load(); got != n {
		t.Errorf("metrics saw %d records, want %d", got, n)
	}
	for _, c := range log.chains {
		if c != "c" {
			t.Fatalf("a record was offered with chain %q, want the writer's default", c)
		}
	}
	rep, err := log.VerifyAudit(t.Context(), "c")
	if err != nil || !rep.OK || rep.Records != n {
		t.Fatalf("VerifyAudit = %+v, %v", rep, err)
	}
}

// TestInlineFailureIsNotRetried: an inline append that fails fails the
// caller at once (the check is then denied) and is not retried through the
// writer, which would write the record after its check was answered.
func TestInlineFailureIsNotRetried(t *testing.T) {
	boom := errors.New("journal full")
	log := &inlineLog{Store: memory.New(memory.Options{}), fail: boom}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c"})
	defer w.Close(context.Background())
	r := record(1)
	if err := w.Append(t.Context(), r); !errors.Is(err, boom) {
		t.Fatalf("Append = %v, want %v", err, boom)
	}
	if r.Chain != "" || r.Seq != 0 {
		t.Errorf("a failed append changed the record: %+v", r)
	}
	if log.appended.Load() != 0 || w.Written() != 0 {
		t.Errorf("the failed record was retried: %d appended, %d written", log.appended.Load(), w.Written())
	}
}

// TestInlineAfterClose: once closed, an inline log is not offered records.
func TestInlineAfterClose(t *testing.T) {
	log := &inlineLog{Store: memory.New(memory.Options{})}
	w := groupcommit.New(log, groupcommit.Options{Chain: "c"})
	if err := w.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := w.Append(t.Context(), record(1)); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	if log.offers.Load() != 0 {
		t.Fatal("a record was offered after Close")
	}
}
