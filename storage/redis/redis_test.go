package redis

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/storagetest"
)

func testURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("AA_TEST_REDIS_URL")
	if u == "" {
		t.Skip("AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval $(scripts/testdb.sh env)")
	}
	return u
}

// newPrefix returns a fresh key prefix whose keys are deleted when the test
// ends.
func newPrefix(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = cryptoRead(b[:])
	prefix := "aatest:" + hex.EncodeToString(b[:]) + ":"
	u := testURL(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		o, err := goredis.ParseURL(u)
		if err != nil {
			return
		}
		c := goredis.NewClient(o)
		defer c.Close()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return prefix
}

var cryptoRead = crand.Read

// openTest opens a Store with its own client under prefix (a fresh one
// when empty).
func openTest(t testing.TB, prefix string) *Store {
	t.Helper()
	if prefix == "" {
		prefix = newPrefix(t)
	}
	s, err := Open(context.Background(), testURL(t), Options{Prefix: prefix})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCounters(t *testing.T) {
	testURL(t)
	storagetest.RunCounters(t, func(t *testing.T) *Store { return openTest(t, "") },
		storagetest.Reopen(func(t *testing.T, s *Store) *Store { return openTest(t, s.opts.Prefix) }))
}

func TestNotifier(t *testing.T) {
	t.Parallel()
	testURL(t)
	storagetest.RunNotifier(t, func(t *testing.T) *Store { return openTest(t, "") },
		storagetest.Reopen(func(t *testing.T, s *Store) *Store { return openTest(t, s.opts.Prefix) }))
}

// TestReplicasReserve is two gateway replicas, each with its own client,
// hammering one budget from 64 goroutines each with reservations of varying
// size: the sum allowed never exceeds the limit and equals the counter.
func TestReplicasReserve(t *testing.T) {
	t.Parallel()
	a := openTest(t, "")
	b := openTest(t, a.opts.Prefix)
	const limit = 20000
	ctx := t.Context()
	exp := time.Now().Add(time.Hour)
	var granted atomic.Int64
	var wg sync.WaitGroup
	for i := range 128 {
		s := []*Store{a, b}[i%2]
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for range 60 {
				amount := 1 + r.Int64N(9)
				res, err := s.Reserve(ctx, "budget:org:acme:day", amount, limit, exp)
				if err != nil {
					t.Errorf("Reserve: %v", err)
					return
				}
				if res.Used > limit {
					t.Errorf("Reserve reported %d used, over the limit %d", res.Used, limit)
				}
				if res.Allowed {
					granted.Add(amount)
				}
			}
		})
	}
	wg.Wait()
	n, err := a.Counter(ctx, "budget:org:acme:day")
	if err != nil {
		t.Fatal(err)
	}
	if granted.Load() > limit || n != granted.Load() {
		t.Fatalf("granted %d, counter %d, limit %d: want granted == counter <= limit", granted.Load(), n, limit)
	}
	if granted.Load() < limit-9 {
		t.Fatalf("granted %d: the budget of %d should be nearly exhausted by 7680 attempts", granted.Load(), limit)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(t.Context(), "http://localhost", Options{}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Open(http URL) = %v, want ErrInvalid", err)
	}
	if _, err := Open(t.Context(), "redis://localhost", Options{SubscriberBuffer: -1}); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Open(negative buffer) = %v, want ErrInvalid", err)
	}
	// Nothing listens on port 1.
	_, err := Open(t.Context(), "redis://127.0.0.1:1/0?dial_timeout=1s", Options{})
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Open(closed port) = %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "redis 127.0.0.1:1") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q should name the server and the cause", err)
	}
}

func TestClosed(t *testing.T) {
	s := openTest(t, "")
	ch, err := s.Subscribe(t.Context(), "x")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("message after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscription not closed by Close")
	}
	if _, err := s.Reserve(t.Context(), "k", 1, 1, time.Now().Add(time.Minute)); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Reserve after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Subscribe(t.Context(), "x"); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
	}
}
