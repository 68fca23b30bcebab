package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// RunCounters runs the budget counter and token bucket cases. Hooks used:
// Reopen (contention across two instances).
func RunCounters[C storage.Counters](t *testing.T, newCounters func(t *testing.T) C, opts ...Option) {
	c := newConfig(opts)
	t.Run("Reserve", func(t *testing.T) { testReserve(t, newCounters(t)) })
	t.Run("Adjust", func(t *testing.T) { testAdjust(t, newCounters(t)) })
	t.Run("Expiry", func(t *testing.T) { testCounterExpiry(t, newCounters(t)) })
	t.Run("Contention", func(t *testing.T) {
		cs := newCounters(t)
		testReserveContention(t, []storage.Counters{cs})
	})
	t.Run("TokenBucket", func(t *testing.T) { testTokenBucket(t, newCounters(t)) })
	t.Run("Holds", func(t *testing.T) { testHolds(t, newCounters(t)) })
	t.Run("HoldTakenOnce", func(t *testing.T) {
		cs := newCounters(t)
		testHoldTakenOnce(t, []storage.Counters{cs})
	})
	t.Run("SharedBackend", func(t *testing.T) {
		a := newCounters(t)
		b := second(t, c, a)
		testReserveContention(t, []storage.Counters{a, b})
		testTokenBucketShared(t, a, b)
		testHoldTakenOnce(t, []storage.Counters{a, b})
	})
}

func testReserve(t *testing.T, c storage.Counters) {
	ctx := testContext(t)
	exp := time.Now().Add(time.Hour)
	n, err := c.Counter(ctx, "budget:missing")
	check(t, "Counter(missing)", err)
	if n != 0 {
		t.Fatalf("Counter(missing) = %d, want 0", n)
	}
	steps := []struct {
		amount, limit int64
		want          storage.Reservation
	}{
		{40, 100, storage.Reservation{Allowed: true, Used: 40}},
		{60, 100, storage.Reservation{Allowed: true, Used: 100}},
		{1, 100, storage.Reservation{Allowed: false, Used: 100}},
		{0, 100, storage.Reservation{Allowed: true, Used: 100}},
		{50, 200, storage.Reservation{Allowed: true, Used: 150}},
		{51, 200, storage.Reservation{Allowed: false, Used: 150}},
	}
	for i, s := range steps {
		got, err := c.Reserve(ctx, "budget:a", s.amount, s.limit, exp)
		check(t, "Reserve", err)
		if got != s.want {
			t.Fatalf("step %d: Reserve(%d, limit %d) = %+v, want %+v", i, s.amount, s.limit, got, s.want)
		}
	}
	got, err := c.Reserve(ctx, "budget:b", 101, 100, exp)
	check(t, "Reserve", err)
	if got.Allowed || got.Used != 0 {
		t.Fatalf("Reserve over the limit on a new key = %+v, want denied with 0 used", got)
	}
	n, err = c.Counter(ctx, "budget:a")
	check(t, "Counter", err)
	if n != 150 {
		t.Fatalf("Counter = %d, want 150", n)
	}
	n, err = c.Counter(ctx, "budget:b")
	check(t, "Counter", err)
	if n != 0 {
		t.Fatalf("a denied reservation left the counter at %d, want 0", n)
	}
	_, err = c.Reserve(ctx, "budget:a", -1, 100, exp)
	checkIs(t, "Reserve(negative amount)", err, storage.ErrInvalid)
	_, err = c.Reserve(ctx, "", 1, 100, exp)
	checkIs(t, "Reserve(empty key)", err, storage.ErrInvalid)
}

func testAdjust(t *testing.T, c storage.Counters) {
	ctx := testContext(t)
	exp := time.Now().Add(time.Hour)
	for _, s := range []struct{ delta, want int64 }{{500, 500}, {-120, 380}, {-1000, -620}, {620, 0}, {1 << 40, 1 << 40}} {
		got, err := c.Adjust(ctx, "budget:adj", s.delta, exp)
		check(t, "Adjust", err)
		if got != s.want {
			t.Fatalf("Adjust(%d) = %d, want %d", s.delta, got, s.want)
		}
	}
	r, err := c.Reserve(ctx, "budget:adj2", 10, 10, exp)
	check(t, "Reserve", err)
	if !r.Allowed {
		t.Fatal("Reserve denied")
	}
	got, err := c.Adjust(ctx, "budget:adj2", -4, exp) // the call cost less than reserved
	check(t, "Adjust", err)
	r, err = c.Reserve(ctx, "budget:adj2", 4, 10, exp)
	check(t, "Reserve", err)
	if got != 6 || !r.Allowed || r.Used != 10 {
		t.Fatalf("after Adjust(-4) = %d, Reserve(4) = %+v; want 6 and allowed with 10 used", got, r)
	}
}

func testCounterExpiry(t *testing.T, c storage.Counters) {
	ctx := testContext(t)
	exp := time.Now().Add(300 * time.Millisecond)
	_, err := c.Reserve(ctx, "rate:exp", 5, 5, exp)
	check(t, "Reserve", err)
	_, err = c.Adjust(ctx, "rate:exp-adj", 7, exp)
	check(t, "Adjust", err)
	r, err := c.Reserve(ctx, "rate:exp", 1, 5, exp)
	check(t, "Reserve", err)
	if r.Allowed {
		t.Fatal("Reserve allowed over the limit before expiry")
	}
	time.Sleep(time.Until(exp) + 300*time.Millisecond)
	for _, key := range []string{"rate:exp", "rate:exp-adj"} {
		n, err := c.Counter(ctx, key)
		check(t, "Counter", err)
		if n != 0 {
			t.Fatalf("Counter(%s) after expiry = %d, want 0", key, n)
		}
	}
	r, err = c.Reserve(ctx, "rate:exp", 5, 5, time.Now().Add(time.Hour))
	check(t, "Reserve", err)
	if !r.Allowed || r.Used != 5 {
		t.Fatalf("Reserve after expiry = %+v, want a fresh counter", r)
	}
}

// testReserveContention reserves from 64 goroutines spread over cs (one or
// more instances on one backend) and checks the limit is never exceeded.
func testReserveContention(t *testing.T, cs []storage.Counters) {
	ctx := testContext(t)
	const workers, tries, limit = 64, 30, 1000
	exp := time.Now().Add(time.Hour)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		c := cs[w%len(cs)]
		wg.Go(func() {
			for range tries {
				r, err := c.Reserve(ctx, "budget:contended", 1, limit, exp)
				if err != nil {
					t.Errorf("Reserve: %v", err)
					return
				}
				if r.Used > limit {
					t.Errorf("Reserve reported %d used, over the limit %d", r.Used, limit)
				}
				if r.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	n, err := cs[0].Counter(ctx, "budget:contended")
	check(t, "Counter", err)
	if allowed.Load() != limit || n != limit {
		t.Fatalf("%d goroutines x %d reservations of 1 with limit %d: %d allowed, counter %d; want exactly %d", workers, tries, limit, allowed.Load(), n, limit)
	}
}

func testTokenBucket(t *testing.T, c storage.Counters) {
	ctx := testContext(t)
	t0 := time.Now().Truncate(time.Millisecond)
	const rate, burst = 10.0, 3
	take := func(key string, at time.Time) (bool, time.Duration) {
		t.Helper()
		ok, wait, err := c.TakeToken(ctx, key, rate, burst, at)
		check(t, "TakeToken", err)
		return ok, wait
	}
	for i := range burst {
		if ok, _ := take("rate:tb", t0); !ok {
			t.Fatalf("take %d of a full bucket of %d was refused", i+1, burst)
		}
	}
	ok, wait := take("rate:tb", t0)
	if ok || math.Abs(float64(wait-100*time.Millisecond)) > float64(2*time.Millisecond) {
		t.Fatalf("empty bucket: TakeToken = %v, wait %v; want false and about 100ms", ok, wait)
	}
	ok, wait = take("rate:tb", t0.Add(40*time.Millisecond))
	if ok || math.Abs(float64(wait-60*time.Millisecond)) > float64(2*time.Millisecond) {
		t.Fatalf("after 40ms: TakeToken = %v, wait %v; want false and about 60ms", ok, wait)
	}
	if ok, _ = take("rate:tb", t0.Add(100*time.Millisecond)); !ok {
		t.Fatal("after 100ms at 10/s a token was refused")
	}
	if ok, _ = take("rate:tb", t0.Add(100*time.Millisecond)); ok {
		t.Fatal("the refilled token was handed out twice")
	}
	// A long pause refills only up to burst.
	later := t0.Add(time.Hour)
	got := 0
	for range burst + 2 {
		if ok, _ := take("rate:tb", later); ok {
			got++
		}
	}
	if got != burst {
		t.Fatalf("after a long pause %d tokens were taken, want burst %d", got, burst)
	}
	// Keys are independent.
	if ok, _ = take("rate:tb-other", t0); !ok {
		t.Fatal("a fresh bucket refused its first token")
	}
	_, _, err := c.TakeToken(ctx, "rate:bad", 0, 1, t0)
	checkIs(t, "TakeToken(rate 0)", err, storage.ErrInvalid)
	_, _, err = c.TakeToken(ctx, "rate:bad", 1, 0, t0)
	checkIs(t, "TakeToken(burst 0)", err, storage.ErrInvalid)
}

func testTokenBucketShared(t *testing.T, a, b storage.Counters) {
	ctx := testContext(t)
	now := time.Now()
	var granted atomic.Int64
	var wg sync.WaitGroup
	for w := range 16 {
		c := []storage.Counters{a, b}[w%2]
		wg.Go(func() {
			for range 5 {
				ok, _, err := c.TakeToken(ctx, "rate:shared-tb", 1, 20, now)
				if err != nil {
					t.Errorf("TakeToken: %v", err)
					return
				}
				if ok {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if granted.Load() != 20 {
		t.Fatalf("80 takes at one instant from a bucket of 20 on two instances granted %d, want 20", granted.Load())
	}
}

// testHolds stores, replaces, takes and expires holds.
func testHolds(t *testing.T, c storage.Counters) {
	ctx := testContext(t)
	exp := time.Now().Add(time.Hour)
	if _, err := c.TakeHold(ctx, "hold:missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("TakeHold(missing) = %v, want ErrNotFound", err)
	}
	if err := c.PutHold(ctx, "", []byte("x"), exp); !errors.Is(err, storage.ErrInvalid) {
		t.Fatalf("PutHold(empty key) = %v, want ErrInvalid", err)
	}
	data := []byte{0, 1, 2, 0xff, '{', '}'} // binary-safe
	check(t, "PutHold", c.PutHold(ctx, "hold:a", data, exp))
	data[0] = 9 // the store keeps its own copy
	check(t, "PutHold", c.PutHold(ctx, "hold:b", []byte("first"), exp))
	check(t, "PutHold", c.PutHold(ctx, "hold:b", []byte("second"), exp))
	for range 2 { // a peek leaves the hold in place
		got, err := c.PeekHold(ctx, "hold:a")
		check(t, "PeekHold", err)
		if !bytes.Equal(got, []byte{0, 1, 2, 0xff, '{', '}'}) {
			t.Fatalf("PeekHold(a) = %q", got)
		}
	}
	if _, err := c.PeekHold(ctx, "hold:missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PeekHold(missing) = %v, want ErrNotFound", err)
	}
	got, err := c.TakeHold(ctx, "hold:a")
	check(t, "TakeHold", err)
	if _, err := c.PeekHold(ctx, "hold:a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PeekHold after TakeHold = %v, want ErrNotFound", err)
	}
	if !bytes.Equal(got, []byte{0, 1, 2, 0xff, '{', '}'}) {
		t.Fatalf("TakeHold(a) = %q", got)
	}
	if _, err := c.TakeHold(ctx, "hold:a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second TakeHold(a) = %v, want ErrNotFound", err)
	}
	if got, err = c.TakeHold(ctx, "hold:b"); err != nil || string(got) != "second" {
		t.Fatalf("TakeHold(b) = %q, %v; want the replacing value", got, err)
	}
	short := time.Now().Add(300 * time.Millisecond)
	check(t, "PutHold", c.PutHold(ctx, "hold:exp", []byte("x"), short))
	check(t, "PutHold", c.PutHold(ctx, "hold:past", []byte("x"), time.Now().Add(-time.Second)))
	if _, err := c.TakeHold(ctx, "hold:past"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("TakeHold of a hold stored already expired = %v, want ErrNotFound", err)
	}
	if _, err := c.PeekHold(ctx, "hold:past"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PeekHold of an expired hold = %v, want ErrNotFound", err)
	}
	time.Sleep(time.Until(short) + 300*time.Millisecond)
	if _, err := c.PeekHold(ctx, "hold:exp"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PeekHold after expiry = %v, want ErrNotFound", err)
	}
	if _, err := c.TakeHold(ctx, "hold:exp"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("TakeHold after expiry = %v, want ErrNotFound", err)
	}
}

// testHoldTakenOnce races 16 takers per hold, spread over cs, for 20 holds:
// exactly one taker of each gets its data.
func testHoldTakenOnce(t *testing.T, cs []storage.Counters) {
	ctx := testContext(t)
	const holds, takers = 20, 16
	exp := time.Now().Add(time.Hour)
	prefix := fmt.Sprintf("hold:race:%d:", time.Now().UnixNano())
	for i := range holds {
		check(t, "PutHold", cs[i%len(cs)].PutHold(ctx, prefix+strconv.Itoa(i), []byte(strconv.Itoa(i)), exp))
	}
	var wins [holds]atomic.Int64
	var wg sync.WaitGroup
	for w := range takers {
		c := cs[w%len(cs)]
		wg.Go(func() {
			for i := range holds {
				got, err := c.TakeHold(ctx, prefix+strconv.Itoa(i))
				switch {
				case errors.Is(err, storage.ErrNotFound):
				case err != nil:
					t.Error(err)
				case string(got) != strconv.Itoa(i):
					t.Errorf("hold %d: got %q", i, got)
				default:
					wins[i].Add(1)
				}
			}
		})
	}
	wg.Wait()
	for i := range wins {
		if n := wins[i].Load(); n != 1 {
			t.Errorf("hold %d taken %d times by %d concurrent takers, want exactly once", i, n, takers)
		}
	}
}
