package gateway

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/monoclock"
)

// boundCtx is the context of a store call that a cancelled caller must not
// cut short but that must end: the values of the caller's context, none of
// its cancellation, and a deadline of its own. It behaves as
// context.WithTimeout(context.WithoutCancel(parent), d), but a call that
// ends before its deadline without waiting on it hands the context (its
// timer and done channel) to the next one: the stdlib pair cost five
// allocations and about 0.7 µs of every decision (the audit write's bound).
//
// The deadline's timer starts only when something waits for it (Done, or a
// derived context registering through AfterFunc); until then Err reads the
// clock. Most calls never wait: a cache hit or an inline audit append ends
// without looking at Done, and then no timer is started or stopped at all.
//
// Only a context that nothing waited on is reused after release: one whose
// Done was asked for may still be watched after the call returned
// (database/sql's row watcher selects on Done and then calls Err), so it is
// left to the garbage collector. Contexts derived from it are cancelled
// when it expires: they register through AfterFunc (so the context package
// starts no goroutine for them), which counts as waiting.
type boundCtx struct {
	values context.Context // context.WithoutCancel(parent): values only
	due    atomic.Int64    // the deadline, as monoclock.Now reads it
	timer  *time.Timer     // runs expire at the deadline once armed
	done   chan struct{}   // closed by expire; then never reused
	armed  atomic.Bool     // the timer runs (set under mu)
	mu     sync.Mutex
	err    error
	afters []*func() // AfterFunc registrations not yet stopped
}

var boundCtxs = sync.Pool{New: func() any {
	c := &boundCtx{done: make(chan struct{})}
	c.timer = time.AfterFunc(time.Hour, c.expire)
	c.timer.Stop()
	return c
}}

// bound returns a context with parent's values, no cancellation from it,
// and a deadline d from now. Call release when the call has returned.
func bound(parent context.Context, d time.Duration) *boundCtx {
	c := boundCtxs.Get().(*boundCtx)
	c.values = context.WithoutCancel(parent)
	c.due.Store(int64(monoclock.Now() + d))
	return c
}

// waitFor is how long a store call of a decision may take: d, or less when
// the caller must answer sooner (CheckOptions.Deadline). It may be zero or
// negative: the call then fails at once with context.DeadlineExceeded.
func waitFor(d time.Duration, deadline time.Time) time.Duration {
	if deadline.IsZero() {
		return d
	}
	return min(d, time.Until(deadline))
}

// release keeps the context for the next call if nothing waited on it (nor
// derived from it: AfterFunc arms) and it has not expired (Err arms when it
// expires c). Otherwise its timer is stopped, unless a derived context is
// still registered and must be cancelled at the deadline, and the context
// is never reused. The parent's values stay until the next use, so a late
// reader never finds them gone.
func (c *boundCtx) release() {
	if !c.armed.Load() {
		boundCtxs.Put(c)
		return
	}
	c.mu.Lock()
	if len(c.afters) == 0 {
		c.timer.Stop()
	}
	c.mu.Unlock()
}

// arm starts the deadline's timer, or expires c at once if the deadline
// has passed. c.mu is held.
func (c *boundCtx) arm() {
	if c.armed.Load() || c.err != nil {
		return
	}
	c.armed.Store(true)
	if d := time.Duration(c.due.Load()) - monoclock.Now(); d > 0 {
		c.timer.Reset(d)
		return
	}
	c.expireLocked()
}

func (c *boundCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
}

func (c *boundCtx) expireLocked() {
	if c.err != nil {
		return
	}
	c.err = context.DeadlineExceeded
	close(c.done)
	for _, f := range c.afters {
		go (*f)()
	}
	c.afters = nil
}

// AfterFunc arranges for f to run in its own goroutine once c expires, as
// context.AfterFunc does; stop cancels that. The context package uses it
// for contexts derived from c.
func (c *boundCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.arm()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	p := &f
	c.afters = append(c.afters, p)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.Index(c.afters, p)
		if i < 0 {
			return false
		}
		c.afters = slices.Delete(c.afters, i, i+1)
		return true
	}
}

// Deadline implements context.Context.
func (c *boundCtx) Deadline() (time.Time, bool) {
	return monoclock.Time(time.Duration(c.due.Load())), true
}

// Done implements context.Context; the first call starts the deadline's timer.
func (c *boundCtx) Done() <-chan struct{} {
	if !c.armed.Load() {
		c.mu.Lock()
		c.arm()
		c.mu.Unlock()
	}
	return c.done
}

// Err implements context.Context. Before anything waits on Done, it reads
// the clock: a deadline that has passed expires c.
func (c *boundCtx) Err() error {
	if !c.armed.Load() && monoclock.Now() < time.Duration(c.due.Load()) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !c.armed.Load() && monoclock.Now() >= time.Duration(c.due.Load()) {
		c.armed.Store(true)
		c.expireLocked()
	}
	return c.err
}

// Value implements context.Context with the parent's values.
func (c *boundCtx) Value(key any) any { return c.values.Value(key) }

var _ context.Context = (*boundCtx)(nil)
