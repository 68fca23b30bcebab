package storagetest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// RunInvalidations runs the invalidation log cases.
func RunInvalidations[L storage.InvalidationLog](t *testing.T, newLog func(t *testing.T) L, opts ...Option) {
	c := newConfig(opts)
	t.Run("OrderAndResume", func(t *testing.T) { testInvalidationOrder(t, newLog(t)) })
	t.Run("Idempotent", func(t *testing.T) { testInvalidationKeys(t, newLog(t)) })
	t.Run("Concurrent", func(t *testing.T) { testInvalidationConcurrent(t, newLog(t), newLog(t), false) })
	t.Run("Trim", func(t *testing.T) { testInvalidationTrim(t, newLog(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newLog(t)
		b := second(t, c, a)
		testInvalidationConcurrent(t, a, b, true)
	})
}

func testInvalidationOrder(t *testing.T, l storage.InvalidationLog) {
	ctx := testContext(t)
	got, err := l.InvalidationsSince(ctx, 0, 0)
	check(t, "InvalidationsSince(empty log)", err)
	if len(got) != 0 {
		t.Fatalf("empty log returned %d events", len(got))
	}
	id := action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}
	in := []*storage.InvalidationEvent{
		{Type: storage.InvalidatePolicy, PolicyVersion: "v2", Time: base},
		{Type: storage.InvalidateSuspended, Agent: id, Reason: "operator", Time: base.Add(time.Second)},
		{Type: storage.InvalidateApproval, ApprovalID: "ap-1", Time: base.Add(2 * time.Second)},
		{Type: storage.InvalidateResumed, Agent: id, Time: base.Add(3 * time.Second)},
	}
	for i, ev := range in {
		seq, err := l.AppendInvalidation(ctx, ev)
		check(t, "AppendInvalidation", err)
		if seq != int64(i+1) || ev.Seq != seq {
			t.Fatalf("event %d got seq %d (ev.Seq %d), want %d: sequence numbers start at 1 with no gaps", i, seq, ev.Seq, i+1)
		}
	}
	got, err = l.InvalidationsSince(ctx, 0, 0)
	check(t, "InvalidationsSince(0)", err)
	if len(got) != len(in) {
		t.Fatalf("got %d events, want %d", len(got), len(in))
	}
	for i, ev := range got {
		w := in[i]
		if ev.Seq != w.Seq || ev.Type != w.Type || ev.Agent != w.Agent || ev.PolicyVersion != w.PolicyVersion ||
			ev.ApprovalID != w.ApprovalID || ev.Reason != w.Reason || !ev.Time.Equal(w.Time) {
			t.Fatalf("event %d = %+v, want %+v", i, ev, w)
		}
	}
	got, err = l.InvalidationsSince(ctx, 2, 0)
	check(t, "InvalidationsSince(2)", err)
	if seqs(got) != "[3 4]" {
		t.Fatalf("resume after 2 returned %s, want [3 4]", seqs(got))
	}
	got, err = l.InvalidationsSince(ctx, 1, 2)
	check(t, "InvalidationsSince(1, limit 2)", err)
	if seqs(got) != "[2 3]" {
		t.Fatalf("limit 2 after 1 returned %s, want [2 3]", seqs(got))
	}
	got, err = l.InvalidationsSince(ctx, 4, 0)
	check(t, "InvalidationsSince(4)", err)
	if len(got) != 0 {
		t.Fatalf("after the last event: %s, want none", seqs(got))
	}
	_, err = l.AppendInvalidation(ctx, &storage.InvalidationEvent{})
	checkIs(t, "AppendInvalidation(no type)", err, storage.ErrInvalid)
}

func seqs(evs []*storage.InvalidationEvent) string {
	s := make([]int64, len(evs))
	for i, ev := range evs {
		s[i] = ev.Seq
	}
	return fmt.Sprint(s)
}

func testInvalidationKeys(t *testing.T, l storage.InvalidationLog) {
	ctx := testContext(t)
	_, err := l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidateApproval, ApprovalID: "a", Key: "approval:a", Time: base})
	check(t, "AppendInvalidation", err)
	_, err = l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidateApproval, ApprovalID: "a", Key: "approval:a", Time: base})
	checkIs(t, "AppendInvalidation(same key)", err, storage.ErrConflict)
	seq, err := l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidatePolicy, Time: base})
	check(t, "AppendInvalidation(no key)", err)
	if seq != 2 {
		t.Fatalf("after a rejected duplicate the next seq is %d, want 2 (no gap)", seq)
	}
	got, err := l.InvalidationsSince(ctx, 0, 0)
	check(t, "InvalidationsSince", err)
	if len(got) != 2 || got[0].Key != "approval:a" {
		t.Fatalf("log = %+v, want the keyed event once, then the other", got)
	}
}

// testInvalidationConcurrent appends from many goroutines over a and b (which
// may be the same backend or, with shared, two instances on one backend) and
// checks that the sequence numbers are exactly 1..n, each once.
func testInvalidationConcurrent(t *testing.T, a, b storage.InvalidationLog, shared bool) {
	ctx := testContext(t)
	if !shared {
		b = a
	}
	const workers, each = 8, 10
	var mu sync.Mutex
	var got []int64
	var wg sync.WaitGroup
	for w := range workers {
		l := a
		if w%2 == 1 {
			l = b
		}
		wg.Go(func() {
			for i := range each {
				seq, err := l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidatePolicy,
					PolicyVersion: fmt.Sprintf("w%d-%d", w, i), Time: time.Now()})
				if err != nil {
					t.Errorf("AppendInvalidation: %v", err)
					return
				}
				mu.Lock()
				got = append(got, seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("sequence numbers %v: want 1..%d each once", got, workers*each)
		}
	}
	evs, err := b.InvalidationsSince(ctx, 0, 0)
	check(t, "InvalidationsSince", err)
	if len(evs) != workers*each {
		t.Fatalf("read %d events back, want %d", len(evs), workers*each)
	}
}

func testInvalidationTrim(t *testing.T, l storage.InvalidationLog) {
	ctx := testContext(t)
	for i := range 3 {
		_, err := l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidatePolicy, Time: base.Add(time.Duration(i) * time.Hour)})
		check(t, "AppendInvalidation", err)
	}
	n, err := l.TrimInvalidations(ctx, base.Add(90*time.Minute))
	check(t, "TrimInvalidations", err)
	if n != 2 {
		t.Fatalf("trimmed %d, want 2", n)
	}
	// Trimming everything keeps the newest, so numbering continues.
	n, err = l.TrimInvalidations(ctx, base.Add(48*time.Hour))
	check(t, "TrimInvalidations(all)", err)
	if n != 0 {
		t.Fatalf("trimmed %d more, want 0 (the newest event stays)", n)
	}
	seq, err := l.AppendInvalidation(ctx, &storage.InvalidationEvent{Type: storage.InvalidatePolicy, Time: base.Add(49 * time.Hour)})
	check(t, "AppendInvalidation", err)
	if seq != 4 {
		t.Fatalf("after trimming, next seq %d, want 4", seq)
	}
	got, err := l.InvalidationsSince(ctx, 0, 0)
	check(t, "InvalidationsSince", err)
	if seqs(got) != "[3 4]" {
		t.Fatalf("after trim: %s, want [3 4] (a reader resuming from 0 sees the gap)", seqs(got))
	}
}
