package storage_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

type closeCounter struct {
	*memory.Counters
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }

// TestComposeConformance runs the suite against memory stores whose counters
// and notifications come from separate parts.
func TestComposeConformance(t *testing.T) {
	type parts struct {
		counters *memory.Counters
		notifier *memory.Notifier
	}
	shared := map[storage.Store]parts{}
	storagetest.Run(t, func(t *testing.T) storage.Store {
		p := parts{memory.NewCounters(nil), memory.NewNotifier()}
		s := storage.Compose(memory.New(memory.Options{}), p.counters, p.notifier)
		shared[s] = p
		t.Cleanup(func() { s.Close() })
		return s
	}, storagetest.Reopen(func(t *testing.T, s storage.Store) storage.Store {
		// A second composed view over the same base and parts, as a
		// second replica sees shared backends.
		p := shared[s]
		return storage.Compose(s, p.counters, p.notifier)
	}))
}

func TestComposeClosesEveryPartOnce(t *testing.T) {
	c := &closeCounter{Counters: memory.NewCounters(nil)}
	s := storage.Compose(memory.New(memory.Options{}), c, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if c.closed.Load() != 1 {
		t.Fatalf("counters closed %d times, want 1", c.closed.Load())
	}
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping after Close succeeded")
	}
}

func TestComposeWakesAcrossReplicas(t *testing.T) {
	n := memory.NewNotifier()
	base := memory.New(memory.Options{})
	a := storage.Compose(base, nil, n)
	b := storage.Compose(base, nil, n)
	ctx := t.Context()
	if err := a.CreateApproval(ctx, &storage.Approval{ID: "x", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	done := make(chan *storage.Approval)
	go func() {
		ap, _ := b.WaitApproval(ctx, "x")
		done <- ap
	}()
	time.Sleep(20 * time.Millisecond)
	if _, err := a.DecideApproval(ctx, "x", storage.ApprovalApproved, "op", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	select {
	case ap := <-done:
		if ap == nil || ap.Status != storage.ApprovalApproved {
			t.Fatalf("waiter got %+v", ap)
		}
	case <-time.After(500 * time.Millisecond):
		t.Fatal("decision on one replica did not wake the other promptly")
	}
}
