package cache_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/cache"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

// The cache must not change what the store answers.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s := cache.Wrap(memory.New(memory.Options{}), cache.Options{})
		t.Cleanup(func() { s.Close() })
		return s
	}, storagetest.Reopen(func(t *testing.T, s storage.Store) storage.Store {
		return cache.Wrap(s.(*cache.Store).Store, cache.Options{})
	}))
}

// counting counts reads that reach the store.
type counting struct {
	storage.Store
	gets, revoked, active atomic.Int64
}

func (c *counting) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	c.gets.Add(1)
	return c.Store.GetAgent(ctx, id)
}

func (c *counting) CredentialRevoked(ctx context.Context, tok string) (bool, error) {
	c.revoked.Add(1)
	return c.Store.CredentialRevoked(ctx, tok)
}

func (c *counting) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	c.active.Add(1)
	return c.Store.ActivePolicyVersion(ctx)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

var id = action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}

func setup(t *testing.T) (*counting, *cache.Store, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	back := &counting{Store: memory.New(memory.Options{})}
	return back, cache.Wrap(back, cache.Options{TTL: 5 * time.Second, NegativeTTL: time.Second, Now: clk.now}), clk
}

func TestAgentTTLAndNegativeCaching(t *testing.T) {
	back, c, clk := setup(t)
	ctx := t.Context()
	for range 3 {
		if _, err := c.GetAgent(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("GetAgent(unknown) = %v", err)
		}
	}
	if back.gets.Load() != 1 {
		t.Fatalf("3 lookups of an unknown agent reached the store %d times, want 1", back.gets.Load())
	}
	// Registered on another replica: seen once the negative entry expires.
	if err := back.PutAgent(ctx, &storage.Agent{ID: id, Status: storage.AgentActive}); err != nil {
		t.Fatal(err)
	}
	clk.add(1500 * time.Millisecond)
	a, err := c.GetAgent(ctx, id)
	if err != nil || a.Status != storage.AgentActive {
		t.Fatalf("after NegativeTTL: %v, %v", a, err)
	}
	// Positive entries last TTL; callers own their copies.
	a.Status = "mutated"
	for range 5 {
		a, _ = c.GetAgent(ctx, id)
	}
	if back.gets.Load() != 2 || a.Status != storage.AgentActive {
		t.Fatalf("store reads %d (want 2), status %s", back.gets.Load(), a.Status)
	}
	// A suspension on another replica shows after TTL...
	if err := back.SetAgentStatus(ctx, id, storage.AgentSuspended, "elsewhere"); err != nil {
		t.Fatal(err)
	}
	if a, _ = c.GetAgent(ctx, id); a.Status != storage.AgentActive {
		t.Fatal("expected the cached status within TTL")
	}
	clk.add(6 * time.Second)
	if a, _ = c.GetAgent(ctx, id); a.Status != storage.AgentSuspended {
		t.Fatalf("after TTL status %s, want suspended", a.Status)
	}
	// ...and one made through the cache at once.
	if err := c.SetAgentStatus(ctx, id, storage.AgentKilled, "kill switch"); err != nil {
		t.Fatal(err)
	}
	if a, _ = c.GetAgent(ctx, id); a.Status != storage.AgentKilled {
		t.Fatalf("after SetAgentStatus through the cache: %s", a.Status)
	}
	// Explicit invalidation.
	_ = back.SetAgentStatus(ctx, id, storage.AgentActive, "")
	c.Agents.Invalidate(id)
	if a, _ = c.GetAgent(ctx, id); a.Status != storage.AgentActive {
		t.Fatalf("after Invalidate: %s", a.Status)
	}
}

// PeekAgent answers only what the cache holds, unknown agents included,
// and never reaches the store; writes through the cache and expiry end its
// answers as they end GetAgent's.
func TestPeekAgent(t *testing.T) {
	back, c, clk := setup(t)
	ctx := t.Context()
	if a, cached := c.PeekAgent(id); cached || a != nil {
		t.Fatalf("PeekAgent before any read = %v, %v; want nothing cached", a, cached)
	}
	if _, err := c.GetAgent(ctx, id); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("GetAgent(unknown) = %v", err)
	}
	if a, cached := c.PeekAgent(id); !cached || a != nil {
		t.Fatalf("PeekAgent of an agent cached as unknown = %v, %v; want nil, true", a, cached)
	}
	if err := c.PutAgent(ctx, &storage.Agent{ID: id, Status: storage.AgentActive, Mode: action.ModeObserve}); err != nil {
		t.Fatal(err)
	}
	if _, cached := c.PeekAgent(id); cached {
		t.Fatal("PeekAgent still answers after PutAgent through the cache")
	}
	if _, err := c.GetAgent(ctx, id); err != nil {
		t.Fatal(err)
	}
	a, cached := c.PeekAgent(id)
	if !cached || a == nil || a.Status != storage.AgentActive || a.Mode != action.ModeObserve {
		t.Fatalf("PeekAgent after GetAgent = %+v, %v", a, cached)
	}
	if err := c.SetAgentStatus(ctx, id, storage.AgentSuspended, "x"); err != nil {
		t.Fatal(err)
	}
	if _, cached := c.PeekAgent(id); cached {
		t.Fatal("PeekAgent still answers after SetAgentStatus through the cache")
	}
	_, _ = c.GetAgent(ctx, id)
	clk.add(6 * time.Second)
	if _, cached := c.PeekAgent(id); cached {
		t.Fatal("PeekAgent answers after the TTL")
	}
	if got := back.gets.Load(); got != 3 {
		t.Fatalf("store reads %d, want 3 (PeekAgent never reads)", got)
	}
}

func TestRevocationCaching(t *testing.T) {
	back, c, clk := setup(t)
	ctx := t.Context()
	for range 3 {
		if r, _ := c.CredentialRevoked(ctx, "tok"); r {
			t.Fatal("revoked")
		}
	}
	if back.revoked.Load() != 1 {
		t.Fatalf("store reads %d, want 1", back.revoked.Load())
	}
	if err := c.RevokeCredential(ctx, "tok", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.CredentialRevoked(ctx, "tok"); !r {
		t.Fatal("a revocation through the cache was not seen at once")
	}
	// Revoked on another replica: seen within NegativeTTL.
	_, _ = c.CredentialRevoked(ctx, "tok2")
	_ = back.RevokeCredential(ctx, "tok2", time.Now().Add(time.Hour))
	clk.add(1100 * time.Millisecond)
	if r, _ := c.CredentialRevoked(ctx, "tok2"); !r {
		t.Fatal("another replica's revocation unseen after NegativeTTL")
	}
}

func TestPolicyCaching(t *testing.T) {
	back, c, _ := setup(t)
	ctx := t.Context()
	for _, v := range []string{"v1", "v2"} {
		if err := c.SavePolicyVersion(ctx, &storage.PolicyVersion{Version: v, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ActivatePolicyVersion(ctx, "v1", time.Now()); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if v, err := c.ActivePolicyVersion(ctx); err != nil || v.Version != "v1" {
			t.Fatalf("ActivePolicyVersion = %v, %v", v, err)
		}
	}
	if back.active.Load() != 1 {
		t.Fatalf("store reads %d, want 1", back.active.Load())
	}
	if err := c.ActivatePolicyVersion(ctx, "v2", time.Now()); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.ActivePolicyVersion(ctx); v.Version != "v2" {
		t.Fatalf("after activation through the cache: %s", v.Version)
	}
	if v, _ := c.GetPolicyVersion(ctx, "v1"); v.Active {
		t.Fatal("v1 still cached as active")
	}
}

func TestFollowInvalidatesAcrossReplicas(t *testing.T) {
	n := memory.NewNotifier()
	base := memory.New(memory.Options{})
	opts := cache.Options{TTL: time.Hour, NegativeTTL: time.Hour, Notifier: n}
	a, b := cache.Wrap(base, opts), cache.Wrap(base, opts)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := b.Follow(ctx, n); err != nil {
		t.Fatal(err)
	}
	_ = a.PutAgent(ctx, &storage.Agent{ID: id, Status: storage.AgentActive})
	_ = a.SavePolicyVersion(ctx, &storage.PolicyVersion{Version: "v1"})
	_ = a.SavePolicyVersion(ctx, &storage.PolicyVersion{Version: "v2"})
	_ = a.ActivatePolicyVersion(ctx, "v1", time.Now())
	if got, _ := b.GetAgent(ctx, id); got.Status != storage.AgentActive {
		t.Fatal("setup")
	}
	if v, _ := b.ActivePolicyVersion(ctx); v.Version != "v1" {
		t.Fatal("setup")
	}
	if r, _ := b.CredentialRevoked(ctx, "tok"); r {
		t.Fatal("setup")
	}
	_ = a.SetAgentStatus(ctx, id, storage.AgentSuspended, "")
	_ = a.ActivatePolicyVersion(ctx, "v2", time.Now())
	_ = a.RevokeCredential(ctx, "tok", time.Now().Add(time.Hour))
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, _ := b.GetAgent(ctx, id)
		v, _ := b.ActivePolicyVersion(ctx)
		r, _ := b.CredentialRevoked(ctx, "tok")
		if got.Status == storage.AgentSuspended && v.Version == "v2" && r {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica b still sees %s, %s, revoked=%v despite a TTL of an hour", got.Status, v.Version, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func BenchmarkGetAgentHit(b *testing.B) {
	s := cache.Wrap(memory.New(memory.Options{}), cache.Options{})
	ctx := context.Background()
	_ = s.PutAgent(ctx, &storage.Agent{ID: id, Status: storage.AgentActive, Labels: map[string]string{"env": "prod"}})
	_, _ = s.GetAgent(ctx, id)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.GetAgent(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// slowAgents blocks every GetAgent until release is closed (or the
// caller's context ends), counting the reads that reach it.
type slowAgents struct {
	storage.Store
	release chan struct{}
	gets    atomic.Int64
}

func (s *slowAgents) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	s.gets.Add(1)
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Store.GetAgent(ctx, id)
}

// TestJoinedMissEndsWithItsContext: a lookup that joins another caller's
// read of the same agent waits no longer than its own context allows, and
// the read goes on for the caller that started it.
func TestJoinedMissEndsWithItsContext(t *testing.T) {
	back := &slowAgents{Store: memory.New(memory.Options{}), release: make(chan struct{})}
	if err := back.PutAgent(t.Context(), &storage.Agent{ID: id, Status: storage.AgentActive}); err != nil {
		t.Fatal(err)
	}
	c := cache.Wrap(back, cache.Options{})
	first := make(chan error, 1)
	go func() {
		_, err := c.GetAgent(t.Context(), id)
		first <- err
	}()
	for back.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	joined := make(chan error, 1)
	go func() {
		_, err := c.GetAgent(ctx, id)
		joined <- err
	}()
	select {
	case err := <-joined:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("joined lookup: %v, want its context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a lookup joining a stuck read ignored its context's deadline")
	}
	close(back.release)
	if err := <-first; err != nil {
		t.Fatalf("the first lookup: %v", err)
	}
	if n := back.gets.Load(); n != 1 {
		t.Fatalf("%d reads reached the store, want 1 (the joined lookup shares it)", n)
	}
}
