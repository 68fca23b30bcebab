package sqlite

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// inlineStore opens an os-mode store whose chain "c" is already held, so
// that its next appends can go inline.
func inlineStore(t *testing.T) *Store {
	t.Helper()
	needShm(t)
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("c", 0, time.Now())}); err != nil {
		t.Fatal(err)
	}
	return s
}

// tryInline runs TryAppendAudit on its own goroutine and returns its result
// on a channel.
func tryInline(s *Store, r *storage.AuditRecord) <-chan bool {
	res := make(chan bool, 1)
	go func() {
		done, err := s.TryAppendAudit([]*storage.AuditRecord{r})
		res <- done && err == nil
	}()
	return res
}

// declined checks that an inline append of r, started while the lock is
// held (because why), returns without appending and leaves r unchanged.
func declined(t *testing.T, s *Store, r *storage.AuditRecord, why string) {
	t.Helper()
	select {
	case done := <-tryInline(s, r):
		if done {
			t.Errorf("an inline append went through while %s", why)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("an inline append kept waiting while %s", why)
	}
	if r.Seq != 0 || r.Hash != nil {
		t.Fatalf("a declined append changed the record: %+v", r)
	}
}

// TestInlineAppendWaitsForAnotherInlineAppend: an inline append that finds
// another inline append holding the lock waits for it (a few microseconds)
// instead of declining, which would send its record through the slower
// group-commit writer. It does not wait for AppendAudit, which may be doing
// I/O, and it gives up after its bound.
func TestInlineAppendWaitsForAnotherInlineAppend(t *testing.T) {
	s := inlineStore(t)
	h := s.hub
	h.inlineWait = time.Minute // so that only the release below can end the wait

	// Held as an inline append holds it: the second append waits, then lands.
	h.appendMu.Lock()
	res := tryInline(s, testRecord("c", 1, time.Now()))
	time.Sleep(5 * time.Millisecond)
	select {
	case done := <-res:
		h.appendMu.Unlock()
		t.Fatalf("TryAppendAudit returned %v while another inline append held the lock: it must wait", done)
	default:
	}
	h.appendMu.Unlock()
	if !<-res {
		t.Fatal("the waiting inline append was not appended once the lock was free")
	}

	// Held by AppendAudit: the inline append declines at once.
	r := testRecord("c", 2, time.Now())
	h.appendMu.Lock()
	h.slowAppend.Store(true)
	declined(t, s, r, "AppendAudit held the lock")
	h.slowAppend.Store(false)
	h.appendMu.Unlock()

	// Held and never released within the bound: it gives up.
	h.inlineWait = time.Millisecond
	h.appendMu.Lock()
	declined(t, s, r, "the lock stayed held past the bound")
	h.appendMu.Unlock()

	rep, err := s.VerifyAudit(t.Context(), "c")
	if err != nil || !rep.OK || rep.Records != 2 {
		t.Fatalf("VerifyAudit = %+v, %v; want 2 records", rep, err)
	}
}

// TestConcurrentInlineAppendsStayOneChain: goroutines appending inline at
// once, waiting for each other's lock, still produce one unbroken chain
// with every record once.
func TestConcurrentInlineAppendsStayOneChain(t *testing.T) {
	s := inlineStore(t)
	s.hub.inlineWait = time.Second
	const workers, each = 4, 300
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := make(map[int64]bool)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				r := testRecord("c", 1+w*each+i, t0)
				var done bool
				var err error
				// The journal's own lock may be held for a moment by the
				// flusher; the append then declines and is tried again.
				for try := 0; !done && err == nil && try < 1000; try++ {
					if done, err = s.TryAppendAudit([]*storage.AuditRecord{r}); !done {
						time.Sleep(100 * time.Microsecond)
					}
				}
				if !done || err != nil {
					t.Errorf("append not inline: %v, %v", done, err)
					return
				}
				mu.Lock()
				if seen[r.Seq] {
					t.Errorf("seq %d given twice", r.Seq)
				}
				seen[r.Seq] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	rep, err := s.VerifyAudit(t.Context(), "c")
	if want := int64(1 + workers*each); err != nil || !rep.OK || rep.Records != want {
		t.Fatalf("VerifyAudit = %+v, %v; want %d records", rep, err, want)
	}
}
