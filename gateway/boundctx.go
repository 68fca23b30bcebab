package gateway

import (
	"context"
	"slices"
	"sync"
	"time"
)

// boundCtx is the context of a store call that a cancelled caller must not
// cut short but that must end: the values of the caller's context, none of
// its cancellation, and a deadline of its own. It behaves as
// context.WithTimeout(context.WithoutCancel(parent), d), but a call that
// ends before its deadline hands the timer and done channel to the next
// one: the stdlib pair cost five allocations and about 0.7 µs of every
// decision (the audit write's bound).
//
// Users must not keep the context past release (as for any context passed
// to a call). Contexts derived from it are cancelled when it expires: they
// register through AfterFunc (so the context package starts no goroutine
// for them), and one still registered at release keeps the boundCtx from
// being reused.
type boundCtx struct {
	values   context.Context // context.WithoutCancel(parent): values only
	deadline time.Time
	timer    *time.Timer   // runs expire at the deadline
	done     chan struct{} // closed by expire; then never reused
	mu       sync.Mutex
	err      error
	afters   []*func() // AfterFunc registrations not yet stopped
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
	c.deadline = time.Now().Add(d)
	c.timer.Reset(d)
	return c
}

// release stops the deadline and keeps the context for the next call unless
// it has expired (or is expiring: its done channel is then closed) or a
// context derived from it was not cancelled. The parent's values stay
// until the next use, so a late reader never finds them gone.
func (c *boundCtx) release() {
	if !c.timer.Stop() {
		return // expire ran or runs: c is spent
	}
	c.mu.Lock()
	pending := len(c.afters) > 0
	c.mu.Unlock()
	if !pending {
		boundCtxs.Put(c)
	}
}

func (c *boundCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
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
func (c *boundCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context.
func (c *boundCtx) Done() <-chan struct{} { return c.done }

// Err implements context.Context.
func (c *boundCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value implements context.Context with the parent's values.
func (c *boundCtx) Value(key any) any { return c.values.Value(key) }

var _ context.Context = (*boundCtx)(nil)
