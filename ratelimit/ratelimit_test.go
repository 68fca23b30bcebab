package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

var (
	bot = action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}
	t0  = time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)
)

// fakeCounters answers TakeToken from a script and records the calls.
type fakeCounters struct {
	mu    sync.Mutex
	calls []string
	ok    bool
	wait  time.Duration
	err   error
}

func (f *fakeCounters) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("%s rate=%.6f burst=%d", key, rate, burst))
	return f.ok, f.wait, f.err
}

func (f *fakeCounters) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func TestKeys(t *testing.T) {
	if k := ToolKey(bot, "web_search"); k != "rate:v1:tool:acme/eng/bot:web_search" {
		t.Errorf("ToolKey = %q", k)
	}
	if k := ToolKey(bot, "github:create_issue"); k != "rate:v1:tool:acme/eng/bot:github:create_issue" {
		t.Errorf("ToolKey with ':' in the tool = %q", k)
	}
	if k := AgentKey(bot); k != "rate:v1:agent:acme/eng/bot" {
		t.Errorf("AgentKey = %q", k)
	}
	// Separators inside ids are escaped, so these agents get different buckets.
	a := ToolKey(action.AgentID{Org: "a", Team: "b:c", Agent: "d"}, "t")
	b := ToolKey(action.AgentID{Org: "a", Team: "b", Agent: "c:d"}, "t")
	if a == b || a != "rate:v1:tool:a/b%3Ac/d:t" {
		t.Errorf("escaped keys: %q, %q", a, b)
	}
}

func TestAllowToolArgumentsAndErrors(t *testing.T) {
	f := &fakeCounters{ok: true}
	l := New(f, Options{})
	r, err := l.AllowTool(t.Context(), bot, "web_search", 36, t0)
	if err != nil || r != (Result{Allowed: true, Limit: 36, Key: "rate:v1:tool:acme/eng/bot:web_search"}) {
		t.Fatalf("AllowTool = %+v, %v", r, err)
	}
	if c := f.take(); len(c) != 1 || c[0] != "rate:v1:tool:acme/eng/bot:web_search rate=0.010000 burst=36" {
		t.Errorf("calls = %q, want rate 36/3600 and burst 36", c)
	}
	// No limit: the backend is not asked.
	if r, err := l.AllowTool(t.Context(), bot, "web_search", 0, t0); err != nil || !r.Allowed || r.Key != "" {
		t.Errorf("AllowTool(0) = %+v, %v", r, err)
	}
	if c := f.take(); len(c) != 0 {
		t.Errorf("AllowTool(0) called the backend: %q", c)
	}
	if _, err := l.AllowTool(t.Context(), bot, "web_search", -1, t0); !errors.Is(err, ErrInvalidLimit) {
		t.Errorf("AllowTool(-1) = %v", err)
	}
	f.err = fmt.Errorf("redis: connection refused: %w", storage.ErrUnavailable)
	r, err = l.AllowTool(t.Context(), bot, "web_search", 36, t0)
	if !errors.Is(err, storage.ErrUnavailable) || r.Allowed || !strings.Contains(err.Error(), "rate limit tool web_search for acme/eng/bot") {
		t.Errorf("backend down: %+v, %v", r, err)
	}
}

func TestAllowAgentArguments(t *testing.T) {
	f := &fakeCounters{ok: true}
	l := New(f, Options{})
	for _, c := range []struct {
		perSecond float64
		burst     int64
		call      string
		limit     int
	}{
		{5, 20, "rate:v1:agent:acme/eng/bot rate=5.000000 burst=20", 20},
		{2.5, 0, "rate:v1:agent:acme/eng/bot rate=2.500000 burst=3", 3},
		{0.1, -1, "rate:v1:agent:acme/eng/bot rate=0.100000 burst=1", 1},
	} {
		r, err := l.AllowAgent(t.Context(), bot, c.perSecond, c.burst, t0)
		if err != nil || !r.Allowed || r.Limit != c.limit {
			t.Errorf("AllowAgent(%v, %d) = %+v, %v", c.perSecond, c.burst, r, err)
		}
		if calls := f.take(); len(calls) != 1 || calls[0] != c.call {
			t.Errorf("AllowAgent(%v, %d) calls %q, want %q", c.perSecond, c.burst, calls, c.call)
		}
	}
	if r, err := l.AllowAgent(t.Context(), bot, 0, 0, t0); err != nil || !r.Allowed {
		t.Errorf("AllowAgent(0) = %+v, %v", r, err)
	}
	for _, bad := range []float64{-1, inf(), nan()} {
		if _, err := l.AllowAgent(t.Context(), bot, bad, 1, t0); !errors.Is(err, ErrInvalidLimit) {
			t.Errorf("AllowAgent(%v) = %v", bad, err)
		}
	}
	if c := f.take(); len(c) != 0 {
		t.Errorf("calls = %q", c)
	}
}

func inf() float64 { return 1 / zero }
func nan() float64 { return zero / zero }

var zero float64

func TestTokenBucketSemantics(t *testing.T) {
	l := New(memory.NewCounters(nil), Options{DenyCacheSize: -1})
	allow := func(at time.Time) Result {
		t.Helper()
		r, err := l.AllowTool(t.Context(), bot, "deploy", 10, at)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// A full hour's allowance at once...
	for i := range 10 {
		if r := allow(t0); !r.Allowed {
			t.Fatalf("call %d denied: %+v", i+1, r)
		}
	}
	// ...then one every 6 minutes.
	r := allow(t0)
	if r.Allowed || r.RetryAfter != 6*time.Minute || r.Limit != 10 {
		t.Fatalf("11th call = %+v, want denied for 6m", r)
	}
	if r := allow(t0.Add(6*time.Minute - time.Second)); r.Allowed {
		t.Fatal("allowed before the retry-after")
	}
	if r := allow(t0.Add(6 * time.Minute)); !r.Allowed {
		t.Fatalf("denied at the retry-after: %+v", r)
	}
	// Sustained: over the next hour, exactly 10 more calls fit.
	n := 0
	for s := time.Duration(0); s <= time.Hour; s += 10 * time.Second {
		if allow(t0.Add(6*time.Minute + s)).Allowed {
			n++
		}
	}
	if n != 10 {
		t.Errorf("%d calls in the following hour, want 10", n)
	}
	// Another tool and another agent have their own buckets.
	if r, _ := l.AllowTool(t.Context(), bot, "read", 10, t0.Add(7*time.Minute)); !r.Allowed {
		t.Error("another tool was limited")
	}
	if r, _ := l.AllowTool(t.Context(), action.AgentID{Org: "acme", Team: "eng", Agent: "other"}, "deploy", 10, t0.Add(7*time.Minute)); !r.Allowed {
		t.Error("another agent was limited")
	}
}

func TestAllowAgentSemantics(t *testing.T) {
	l := New(memory.NewCounters(nil), Options{})
	got := 0
	for ms := 0; ms < 2000; ms += 10 {
		r, err := l.AllowAgent(t.Context(), bot, 5, 10, t0.Add(time.Duration(ms)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			got++
		}
	}
	// A burst of 10, then 5 per second for just under 2 s.
	if got != 19 && got != 20 {
		t.Errorf("%d requests in 2 s at 5/s with burst 10, want 19 or 20", got)
	}
}

func TestConcurrentTakesNeverExceedBurst(t *testing.T) {
	l := New(memory.NewCounters(nil), Options{})
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 50 {
				r, err := l.AllowTool(t.Context(), bot, "search", 100, t0)
				if err != nil {
					t.Error(err)
					return
				}
				if r.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := allowed.Load(); n != 100 {
		t.Errorf("%d calls allowed at one instant, want exactly the burst (100)", n)
	}
}

func TestDenyCache(t *testing.T) {
	f := &fakeCounters{ok: false, wait: time.Minute}
	l := New(f, Options{DenyCacheSize: 2})
	r, _ := l.AllowTool(t.Context(), bot, "deploy", 60, t0)
	if r.Allowed || r.RetryAfter != time.Minute {
		t.Fatalf("first = %+v", r)
	}
	// Within the minute: answered from the cache with the remaining wait.
	r, _ = l.AllowTool(t.Context(), bot, "deploy", 60, t0.Add(20*time.Second))
	if r.Allowed || r.RetryAfter != 40*time.Second || r.Key != "rate:v1:tool:acme/eng/bot:deploy" || r.Limit != 60 {
		t.Fatalf("cached = %+v", r)
	}
	if c := f.take(); len(c) != 1 {
		t.Fatalf("backend called %d times, want once", len(c))
	}
	// A changed limit (policy reload) asks the backend.
	l.AllowTool(t.Context(), bot, "deploy", 120, t0.Add(20*time.Second))
	// So does a call at the retry-after time.
	f.ok = true
	if r, _ := l.AllowTool(t.Context(), bot, "deploy", 120, t0.Add(time.Minute+20*time.Second)); !r.Allowed {
		t.Fatalf("after the wait = %+v", r)
	}
	if c := f.take(); len(c) != 2 {
		t.Fatalf("backend calls = %q, want 2", c)
	}
	// The cache is bounded: a third empty bucket is not cached while two
	// live entries fill it, and is once they run out.
	f.ok = false
	for _, tool := range []string{"a", "b", "c"} {
		l.AllowTool(t.Context(), bot, tool, 60, t0)
	}
	f.take()
	for _, tool := range []string{"a", "b", "c"} {
		l.AllowTool(t.Context(), bot, tool, 60, t0.Add(time.Second))
	}
	if c := f.take(); len(c) != 1 || !strings.HasSuffix(strings.Fields(c[0])[0], ":c") {
		t.Errorf("with a full cache, calls = %q, want only the uncached tool c", c)
	}
	l.AllowTool(t.Context(), bot, "c", 60, t0.Add(2*time.Minute))
	l.AllowTool(t.Context(), bot, "c", 60, t0.Add(2*time.Minute+time.Second))
	if c := f.take(); len(c) != 1 {
		t.Errorf("after the entries ran out, c was not cached: %q", c)
	}
	if n := len(l.deny.m); n > 2 {
		t.Errorf("cache holds %d entries, over its bound", n)
	}
	// Disabled.
	f2 := &fakeCounters{ok: false, wait: time.Minute}
	l2 := New(f2, Options{DenyCacheSize: -1})
	l2.AllowTool(t.Context(), bot, "deploy", 60, t0)
	l2.AllowTool(t.Context(), bot, "deploy", 60, t0)
	if c := f2.take(); len(c) != 2 {
		t.Errorf("disabled cache: %d backend calls, want 2", len(c))
	}
}

func TestResultString(t *testing.T) {
	r := Result{Allowed: false, RetryAfter: 6 * time.Minute, Limit: 10, Key: "rate:v1:tool:acme/eng/bot:deploy"}
	if s := r.String(); s != "denied rate:v1:tool:acme/eng/bot:deploy (limit 10, retry after 6m0s)" {
		t.Errorf("String = %q", s)
	}
}

func BenchmarkAllowTool(b *testing.B) {
	b.Run("memory/allowed", func(b *testing.B) {
		l := New(memory.NewCounters(nil), Options{})
		b.ReportAllocs()
		now := t0
		for b.Loop() {
			now = now.Add(time.Second) // 3600/h refills one token per second
			if r, err := l.AllowTool(b.Context(), bot, "web_search", 3600, now); err != nil || !r.Allowed {
				b.Fatal(r, err)
			}
		}
	})
	for _, size := range []int{-1, 0} {
		name := "memory/denied/cache"
		if size < 0 {
			name = "memory/denied/nocache"
		}
		b.Run(name, func(b *testing.B) {
			l := New(memory.NewCounters(nil), Options{DenyCacheSize: size})
			l.AllowTool(b.Context(), bot, "web_search", 1, t0)
			b.ReportAllocs()
			for b.Loop() {
				if r, _ := l.AllowTool(b.Context(), bot, "web_search", 1, t0); r.Allowed {
					b.Fatal("allowed")
				}
			}
		})
	}
	b.Run("fake", func(b *testing.B) {
		l := New(&noopCounters{}, Options{})
		b.ReportAllocs()
		for b.Loop() {
			l.AllowTool(b.Context(), bot, "web_search", 100, t0)
		}
	})
}

func BenchmarkAllowAgentParallel(b *testing.B) {
	l := New(memory.NewCounters(nil), Options{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.AllowAgent(b.Context(), bot, 1e9, 1e9, t0)
		}
	})
}

// noopCounters always allows, to measure the limiter's own cost.
type noopCounters struct{}

func (noopCounters) TakeToken(context.Context, string, float64, int64, time.Time) (bool, time.Duration, error) {
	return true, 0, nil
}
