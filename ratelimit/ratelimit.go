// Package ratelimit limits how often agents act: per-tool hourly limits and per-agent request rates, as token buckets.
//
// The buckets live in the counter backend (storage.Counters: in process,
// or Redis when gateway replicas share state), so every replica draws from
// the same bucket. A tool's limit_per_hour of N is a bucket holding at most
// N tokens, refilled at N per hour (N/3600 per second): an idle agent may
// make N calls at once, then one every 3600/N seconds. See docs/budgets.md
// for why a token bucket and not a fixed hourly window.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Counters is what a Limiter needs from the counter backend; storage.Counters
// satisfies it.
type Counters interface {
	// TakeToken takes one token from a bucket refilled at rate tokens per
	// second up to burst (a new bucket starts full); when empty it returns
	// false and the wait until a token is available.
	TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error)
}

var _ Counters = storage.Counters(nil)

// ErrInvalidLimit means a limit was negative or not a finite number.
var ErrInvalidLimit = errors.New("invalid rate limit")

// DefaultDenyCacheSize is the number of empty buckets a Limiter remembers
// when Options.DenyCacheSize is zero.
const DefaultDenyCacheSize = 10_000

// Options configures a Limiter. The zero value is usable.
type Options struct {
	// DenyCacheSize bounds the in-process cache of buckets known to be
	// empty: until the retry-after time of a denial, further calls on the
	// same bucket (with the same rate and burst) are denied without asking
	// the backend. This is exact, not an approximation: nothing but time
	// refills a bucket. Zero means DefaultDenyCacheSize; negative disables
	// the cache.
	DenyCacheSize int
}

// Limiter answers rate-limit questions. It is safe for concurrent use.
type Limiter struct {
	c    Counters
	deny *denyCache
}

// New returns a Limiter taking tokens from c.
func New(c Counters, opts Options) *Limiter {
	l := &Limiter{c: c}
	switch {
	case opts.DenyCacheSize == 0:
		l.deny = newDenyCache(DefaultDenyCacheSize)
	case opts.DenyCacheSize > 0:
		l.deny = newDenyCache(opts.DenyCacheSize)
	}
	return l
}

// Result is the answer to one rate-limit question.
type Result struct {
	// Allowed is true when a token was taken (or there is no limit).
	Allowed bool
	// RetryAfter is how long until a token is available, when not allowed.
	RetryAfter time.Duration
	// Limit is the configured limit: calls per hour for AllowTool, the
	// burst for AllowAgent; 0 means unlimited.
	Limit int
	// Key names the bucket, e.g. "rate:v1:tool:acme/eng/bot:web_search";
	// empty when there is no limit.
	Key string
}

// AllowTool takes one call from agent's hourly allowance for tool. The
// bucket holds limitPerHour tokens and refills at limitPerHour/3600 per
// second, so at most limitPerHour calls can be made at once and, over a long
// period, limitPerHour per hour on average. limitPerHour 0 means no limit
// (policy.Result.ToolLimitPerHour's convention). Backend errors are returned
// as they are (wrapped); failing closed is the caller's decision.
func (l *Limiter) AllowTool(ctx context.Context, agent action.AgentID, tool string, limitPerHour int, now time.Time) (Result, error) {
	switch {
	case limitPerHour == 0:
		return Result{Allowed: true}, nil
	case limitPerHour < 0:
		return Result{}, fmt.Errorf("rate limit tool %s for %s: limit_per_hour %d: %w", tool, agent, limitPerHour, ErrInvalidLimit)
	}
	key := ToolKey(agent, tool)
	r, err := l.take(ctx, key, float64(limitPerHour)/3600, int64(limitPerHour), now)
	r.Limit = limitPerHour
	if err != nil {
		return r, fmt.Errorf("rate limit tool %s for %s: %w", tool, agent, err)
	}
	return r, nil
}

// AllowAgent takes one request from agent's request-rate bucket: perSecond
// tokens per second, up to burst at once (burst < 1 means
// max(1, ceil(perSecond))). perSecond 0 means no limit.
func (l *Limiter) AllowAgent(ctx context.Context, agent action.AgentID, perSecond float64, burst int64, now time.Time) (Result, error) {
	switch {
	case perSecond == 0:
		return Result{Allowed: true}, nil
	case !(perSecond > 0) || math.IsInf(perSecond, 0):
		return Result{}, fmt.Errorf("rate limit agent %s: %v requests per second: %w", agent, perSecond, ErrInvalidLimit)
	}
	if burst < 1 {
		burst = int64(max(1, math.Ceil(min(perSecond, math.MaxInt32))))
	}
	r, err := l.take(ctx, AgentKey(agent), perSecond, burst, now)
	r.Limit = int(min(burst, math.MaxInt32))
	if err != nil {
		return r, fmt.Errorf("rate limit agent %s: %w", agent, err)
	}
	return r, nil
}

func (l *Limiter) take(ctx context.Context, key string, rate float64, burst int64, now time.Time) (Result, error) {
	r := Result{Key: key}
	if l.deny != nil {
		if wait, ok := l.deny.lookup(key, rate, burst, now); ok {
			r.RetryAfter = wait
			return r, nil
		}
	}
	ok, wait, err := l.c.TakeToken(ctx, key, rate, burst, now)
	if err != nil {
		return r, err
	}
	r.Allowed = ok
	if !ok {
		r.RetryAfter = wait
		if l.deny != nil && wait > 0 {
			l.deny.add(key, rate, burst, now, now.Add(wait))
		}
	}
	return r, nil
}

// ToolKey returns the bucket key of agent's calls to tool:
// "rate:v1:tool:<org>/<team>/<agent>:<tool>". Id parts containing '%', '/'
// or ':' are percent-encoded so that different agents never share a key;
// the tool name is the rest of the key and kept as it is.
func ToolKey(agent action.AgentID, tool string) string {
	b := make([]byte, 0, 16+len(agent.Org)+len(agent.Team)+len(agent.Agent)+len(tool))
	b = append(b, "rate:v1:tool:"...)
	b = appendAgent(b, agent)
	b = append(b, ':')
	b = append(b, tool...)
	return string(b)
}

// AgentKey returns the bucket key of agent's request rate:
// "rate:v1:agent:<org>/<team>/<agent>".
func AgentKey(agent action.AgentID) string {
	b := make([]byte, 0, 16+len(agent.Org)+len(agent.Team)+len(agent.Agent))
	b = append(b, "rate:v1:agent:"...)
	return string(appendAgent(b, agent))
}

func appendAgent(b []byte, a action.AgentID) []byte {
	b = appendEscaped(b, a.Org)
	b = append(b, '/')
	b = appendEscaped(b, a.Team)
	b = append(b, '/')
	return appendEscaped(b, a.Agent)
}

func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', '/', ':':
			const hex = "0123456789ABCDEF"
			b = append(b, '%', hex[c>>4], hex[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

// denyCache remembers buckets that are empty until a known time.
type denyCache struct {
	max int
	mu  sync.Mutex
	m   map[string]denial
	// nextSweep is the earliest time an entry of a full cache runs out.
	nextSweep time.Time
}

type denial struct {
	until time.Time
	rate  float64
	burst int64
}

func newDenyCache(size int) *denyCache {
	return &denyCache{max: size, m: make(map[string]denial)}
}

// lookup returns the remaining wait when key's bucket (with this rate and
// burst) is known to be empty at now.
func (d *denyCache) lookup(key string, rate float64, burst int64, now time.Time) (time.Duration, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.m[key]
	if !ok {
		return 0, false
	}
	if e.rate != rate || e.burst != burst || !now.Before(e.until) {
		delete(d.m, key)
		return 0, false
	}
	return e.until.Sub(now), true
}

func (d *denyCache) add(key string, rate float64, burst int64, now, until time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.m[key]; !ok && len(d.m) >= d.max {
		if now.Before(d.nextSweep) {
			return // nothing has run out since the last sweep
		}
		// Drop the entries that have run out and remember when the next
		// one will. If none has, skip caching this one: the backend still
		// answers correctly.
		var next time.Time
		for k, e := range d.m {
			if !now.Before(e.until) {
				delete(d.m, k)
			} else if next.IsZero() || e.until.Before(next) {
				next = e.until
			}
		}
		d.nextSweep = next
		if len(d.m) >= d.max {
			return
		}
	}
	d.m[key] = denial{until: until, rate: rate, burst: burst}
}

// String renders a result for logs, e.g. "denied rate:v1:... (limit 10, retry after 6m0s)".
func (r Result) String() string {
	if r.Allowed {
		return "allowed " + r.Key
	}
	return "denied " + r.Key + " (limit " + strconv.Itoa(r.Limit) + ", retry after " + r.RetryAfter.String() + ")"
}
