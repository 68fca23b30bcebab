package storage

import (
	"context"
	"errors"
	"time"
)

// ComposePoll is how often a composed WaitApproval re-reads an approval in
// case a notification was lost.
const ComposePoll = time.Second

// Compose returns a Store that uses base for everything except Counters
// (taken from counters when it is not nil) and Notifier (from notifier when
// it is not nil). With a separate notifier, DecideApproval also publishes the
// approval id on TopicApprovals after base commits it, and WaitApproval waits
// for that (see WaitForDecision), so a decision on any replica wakes waiters
// on every replica.
//
// Ping and Close reach base and every other distinct part that has them
// (Ping(context.Context) error, Close() error).
func Compose(base Store, counters Counters, notifier Notifier) Store {
	c := &composed{Store: base, counters: base, notifier: base}
	c.inline, _ = base.(inlineAppender)
	if counters != nil {
		c.counters = counters
	}
	if notifier != nil {
		c.notifier = notifier
		c.fanout = true
	}
	return c
}

type composed struct {
	Store
	counters Counters
	notifier Notifier
	fanout   bool
	inline   inlineAppender // base, when it can append inline
}

// inlineAppender is base's optional TryAppendAudit (groupcommit.InlineLog).
type inlineAppender interface {
	TryAppendAudit(recs []*AuditRecord) (bool, error)
}

// TryAppendAudit passes base's through: false when base has none.
func (c *composed) TryAppendAudit(recs []*AuditRecord) (bool, error) {
	if c.inline == nil {
		return false, nil
	}
	return c.inline.TryAppendAudit(recs)
}

func (c *composed) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (Reservation, error) {
	return c.counters.Reserve(ctx, key, amount, limit, expires)
}

func (c *composed) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	return c.counters.Adjust(ctx, key, delta, expires)
}

func (c *composed) Counter(ctx context.Context, key string) (int64, error) {
	return c.counters.Counter(ctx, key)
}

func (c *composed) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	return c.counters.TakeToken(ctx, key, rate, burst, now)
}

func (c *composed) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	return c.counters.PutHold(ctx, key, data, expires)
}

func (c *composed) TakeHold(ctx context.Context, key string) ([]byte, error) {
	return c.counters.TakeHold(ctx, key)
}

func (c *composed) PeekHold(ctx context.Context, key string) ([]byte, error) {
	return c.counters.PeekHold(ctx, key)
}

func (c *composed) Publish(ctx context.Context, topic string, payload []byte) error {
	return c.notifier.Publish(ctx, topic, payload)
}

func (c *composed) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	return c.notifier.Subscribe(ctx, topic)
}

func (c *composed) DecideApproval(ctx context.Context, id string, s ApprovalStatus, by, comment string, at time.Time) (*Approval, error) {
	a, err := c.Store.DecideApproval(ctx, id, s, by, comment, at)
	if err == nil && c.fanout {
		// The decision is committed; a lost wake-up only delays waiters
		// until their next poll, so a publish error is not the caller's.
		_ = c.notifier.Publish(context.WithoutCancel(ctx), TopicApprovals, []byte(id))
	}
	return a, err
}

func (c *composed) WaitApproval(ctx context.Context, id string) (*Approval, error) {
	if !c.fanout {
		return c.Store.WaitApproval(ctx, id)
	}
	return WaitForDecision(ctx, c.Store, c.notifier, id, ComposePoll)
}

// parts returns base, counters and notifier without duplicates.
func (c *composed) parts() []any {
	out := []any{c.Store}
	for _, p := range []any{c.counters, c.notifier} {
		dup := false
		for _, q := range out {
			if p == q {
				dup = true
			}
		}
		if !dup {
			out = append(out, p)
		}
	}
	return out
}

func (c *composed) Ping(ctx context.Context) error {
	var errs []error
	for _, p := range c.parts() {
		if p, ok := p.(interface{ Ping(context.Context) error }); ok {
			errs = append(errs, p.Ping(ctx))
		}
	}
	return errors.Join(errs...)
}

func (c *composed) Close() error {
	var errs []error
	for _, p := range c.parts() {
		if p, ok := p.(interface{ Close() error }); ok {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}
