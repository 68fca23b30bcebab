package memory

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Counters is an in-process storage.Counters. Expired keys read as zero and
// are swept as writes happen. The sqlite driver keeps its counters here and
// persists them behind.
type Counters struct {
	now func() time.Time

	mu       sync.Mutex
	counters map[string]counter
	buckets  map[string]bucket
	holds    map[string]hold
	writes   int
}

type counter struct {
	value   int64
	expires time.Time
}

type hold struct {
	data    []byte
	expires time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	// full is when the bucket will be full again, after which it can be forgotten.
	full time.Time
}

var _ storage.Counters = (*Counters)(nil)

// NewCounters returns empty counters. now is the clock expiry is checked
// against (time.Now when nil).
func NewCounters(now func() time.Time) *Counters {
	if now == nil {
		now = time.Now
	}
	return &Counters{now: now, counters: make(map[string]counter), buckets: make(map[string]bucket), holds: make(map[string]hold)}
}

func (c *Counters) live(key string, now time.Time) (counter, bool) {
	e, ok := c.counters[key]
	if ok && !now.Before(e.expires) {
		delete(c.counters, key)
		return counter{}, false
	}
	return e, ok
}

// sweep drops expired entries every 4096 writes so the maps stay bounded by
// the live keys.
func (c *Counters) sweep(now time.Time) {
	c.writes++
	if c.writes%4096 != 0 {
		return
	}
	for k, e := range c.counters {
		if !now.Before(e.expires) {
			delete(c.counters, k)
		}
	}
	for k, b := range c.buckets {
		if now.After(b.full) {
			delete(c.buckets, k)
		}
	}
	for k, h := range c.holds {
		if !now.Before(h.expires) {
			delete(c.holds, k)
		}
	}
}

// Reserve atomically adds amount if the result stays within limit.
func (c *Counters) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	if key == "" || amount < 0 {
		return storage.Reservation{}, fmt.Errorf("reserve %d on counter %q: need a key and a non-negative amount: %w", amount, key, storage.ErrInvalid)
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.live(key, now)
	if e.value > limit-amount { // e.value+amount > limit without overflow
		return storage.Reservation{Allowed: false, Used: e.value}, nil
	}
	if amount != 0 {
		e.value += amount
		e.expires = expires
		c.counters[key] = e
		c.sweep(now)
	}
	return storage.Reservation{Allowed: true, Used: e.value}, nil
}

// Adjust adds delta unconditionally.
func (c *Counters) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	if key == "" {
		return 0, fmt.Errorf("adjust counter: empty key: %w", storage.ErrInvalid)
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.live(key, now)
	e.value += delta
	e.expires = expires
	c.counters[key] = e
	c.sweep(now)
	return e.value, nil
}

// Counter returns the current value, 0 for a missing or expired key.
func (c *Counters) Counter(ctx context.Context, key string) (int64, error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.live(key, now)
	return e.value, nil
}

// TakeToken takes one token from the bucket key, refilled at rate per second
// up to burst; a new bucket starts full.
func (c *Counters) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	if key == "" || !(rate > 0) || burst < 1 || math.IsInf(rate, 0) {
		return false, 0, fmt.Errorf("take token from %q: need a key, rate > 0 and burst >= 1: %w", key, storage.ErrInvalid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ok, wait, b := takeFrom(c.buckets[key], c.buckets[key].last.IsZero(), rate, burst, now)
	c.buckets[key] = b
	c.sweep(now)
	return ok, wait, nil
}

// takeFrom is the token bucket arithmetic every driver shares: it refills b
// for the time since its last update, takes a token if one is there, and
// returns the new state. A bucket seen for the first time (fresh) starts full;
// time going backwards (clocks of different replicas) refills nothing.
func takeFrom(b bucket, fresh bool, rate float64, burst int64, now time.Time) (bool, time.Duration, bucket) {
	if fresh {
		b = bucket{tokens: float64(burst), last: now}
	}
	if now.After(b.last) {
		b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*rate)
		b.last = now
	}
	const epsilon = 1e-9
	ok := b.tokens >= 1-epsilon
	var wait time.Duration
	if ok {
		b.tokens = max(0, b.tokens-1)
	} else {
		wait = time.Duration(math.Ceil((1 - b.tokens) / rate * float64(time.Second)))
	}
	b.full = b.last.Add(time.Duration((float64(burst) - b.tokens) / rate * float64(time.Second)))
	return ok, wait, b
}

// Entry returns the live value and expiry of key, for drivers that persist
// counters.
func (c *Counters) Entry(key string) (value int64, expires time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.live(key, c.now())
	return e.value, e.expires, ok
}

// Load sets key to value until expires, for drivers restoring persisted
// counters at start.
func (c *Counters) Load(key string, value int64, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now().Before(expires) {
		c.counters[key] = counter{value: value, expires: expires}
	}
}

// HoldEntry returns what key holds and its expiry, for drivers that persist
// holds.
func (c *Counters) HoldEntry(key string) (data []byte, expires time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.holds[key]
	if !ok || !c.now().Before(h.expires) {
		return nil, time.Time{}, false
	}
	return h.data, h.expires, true
}

// LoadHold sets key to hold data until expires, for drivers restoring
// persisted holds at start.
func (c *Counters) LoadHold(key string, data []byte, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now().Before(expires) {
		c.holds[key] = hold{data: bytes.Clone(data), expires: expires}
	}
}

// PutHold stores a copy of data under key until expires.
func (c *Counters) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	if key == "" {
		return fmt.Errorf("put hold: empty key: %w", storage.ErrInvalid)
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweep(now)
	c.holds[key] = hold{data: bytes.Clone(data), expires: expires}
	return nil
}

// TakeHold returns and removes what key holds.
func (c *Counters) TakeHold(ctx context.Context, key string) ([]byte, error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.holds[key]
	delete(c.holds, key)
	if !ok || !now.Before(h.expires) {
		return nil, fmt.Errorf("take hold %q: %w", key, storage.ErrNotFound)
	}
	return h.data, nil
}

// PeekHold returns what key holds, leaving it there.
func (c *Counters) PeekHold(ctx context.Context, key string) ([]byte, error) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.holds[key]
	if !ok || !now.Before(h.expires) {
		return nil, fmt.Errorf("peek hold %q: %w", key, storage.ErrNotFound)
	}
	return bytes.Clone(h.data), nil
}
