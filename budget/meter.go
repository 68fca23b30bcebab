package budget

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Counters is what a Meter needs from the counter backend. storage.Counters
// satisfies it; every driver (memory, sqlite, postgres, redis) makes Reserve
// atomic, so several gateway replicas sharing a backend never overspend.
type Counters interface {
	// Reserve atomically adds amount if used+amount <= limit.
	Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error)
	// Adjust adds delta (which may be negative) unconditionally.
	Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error)
	// Counter returns the current value (0 for a missing key).
	Counter(ctx context.Context, key string) (int64, error)
}

var _ Counters = storage.Counters(nil)

// DefaultExpiryMargin is how long a window's counter outlives the window:
// long enough for a late Reconcile of a call made just before midnight and
// for clock skew between replicas.
const DefaultExpiryMargin = 48 * time.Hour

// cleanupTimeout bounds rollbacks and reconciliations, which run even when
// the request's context has been cancelled.
const cleanupTimeout = 5 * time.Second

// Thresholds are the percentages of a limit at which OnThreshold fires.
var thresholds = [...]int{80, 95}

// Options configures a Meter. The zero value is usable.
type Options struct {
	// Now is the clock that picks windows (time.Now when nil).
	Now func() time.Time
	// OnThreshold, when set, is called once each time a reservation or a
	// reconciliation takes a window's spend across 80% or 95% of its limit.
	// It runs on the caller's goroutine and must not block: hand the event
	// to a channel or a logger.
	OnThreshold func(Event)
	// ExpiryMargin is how long counters outlive their window
	// (DefaultExpiryMargin when zero).
	ExpiryMargin time.Duration
}

// Meter reserves and reconciles LLM spend against budgets. It keeps no
// state of its own: all of it lives in the Counters, so replicas sharing a
// backend share budgets. It is safe for concurrent use.
type Meter struct {
	c       Counters
	pricing *Pricing
	opts    Options
}

// NewMeter returns a Meter charging prices from p (DefaultPricing when nil)
// against counters c.
func NewMeter(c Counters, p *Pricing, opts Options) *Meter {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ExpiryMargin <= 0 {
		opts.ExpiryMargin = DefaultExpiryMargin
	}
	if p == nil {
		var err error
		if p, err = DefaultPricing(); err != nil {
			// Unreachable while the embedded table parses (a test checks
			// it); charge every model at a prohibitive rate rather than 0.
			p = &Pricing{unknown: Rate{InputPerMillion: MaxMicroUSD, OutputPerMillion: MaxMicroUSD}}
		}
	}
	return &Meter{c: c, pricing: p, opts: opts}
}

// Pricing returns the table the meter charges from.
func (m *Meter) Pricing() *Pricing { return m.pricing }

// Reservation is the outcome of Meter.Reserve. Pass it to Reconcile (or
// Release) exactly once when the call's actual usage is known.
type Reservation struct {
	Agent action.AgentID
	// Allowed is false when an enforced budget refused; nothing is then
	// held on any tier.
	Allowed bool
	// Exceeded describes the enforced budget that refused (nil when Allowed).
	Exceeded *Exceeded
	// Shadow lists the observe-mode budgets that would have refused: they
	// were charged anyway and did not change the answer.
	Shadow []Exceeded
	// Cost is the estimate that was reserved on every tier.
	Cost Cost
	// Holds lists every counter the estimate was added to.
	Holds []Hold
}

// Hold is the estimate added to one counter.
type Hold struct {
	// Key is the counter, e.g. "budget:v1:agent:acme/eng/bot:daily:2026-11-25".
	Key    string
	Scope  Scope
	Window Window
	Start  time.Time
	End    time.Time
	// Expires is when the counter expires; Reconcile skips a hold whose
	// counter is gone.
	Expires time.Time
	// Limit is the most restrictive limit on this counter (enforced limits
	// first); Policy is the document that set it and Mode its mode.
	Limit  MicroUSD
	Policy string
	Mode   action.Mode
}

// Exceeded describes a budget that refused (or, in observe mode, would
// have refused) a reservation.
type Exceeded struct {
	// Policy is the document that set the budget; Mode is its enforcement
	// mode (action.ModeObserve for shadow refusals).
	Policy string
	Mode   action.Mode
	Scope  Scope
	Window Window
	Start  time.Time
	End    time.Time
	Key    string
	Limit  MicroUSD
	// Spent is the window's spend before this request (for enforced
	// refusals) or after it (for observe-mode ones, which are charged).
	Spent MicroUSD
	// Requested is the estimated cost that did not fit.
	Requested MicroUSD
	// Action is what the policy asks for: policy.BudgetDeny (answer DENY,
	// HTTP 429) or policy.BudgetSuspend (deny and suspend the agent).
	Action policy.BudgetAction
	// RetryAfter is the time until the window resets.
	RetryAfter time.Duration
}

// String summarises the refusal for decision reasons and logs.
func (e *Exceeded) String() string {
	return fmt.Sprintf("%s budget of %s exhausted: spent %s of %s, request needs %s (policy %s; resets in %s)",
		e.Window, e.Scope, e.Spent, e.Limit, e.Requested, e.Policy, e.RetryAfter.Round(time.Second))
}

// Event reports that a window's spend crossed a threshold of its limit.
type Event struct {
	// Threshold is the percentage crossed: 80 or 95.
	Threshold int
	Policy    string
	Mode      action.Mode
	Scope     Scope
	Window    Window
	Start     time.Time
	Key       string
	Limit     MicroUSD
	Spent     MicroUSD
}

// limitRef is one limit on a counter and where it came from.
type limitRef struct {
	set    bool
	limit  MicroUSD
	policy string
	action policy.BudgetAction
}

func (l *limitRef) tighten(limit MicroUSD, doc string, act policy.BudgetAction) {
	if !l.set || limit < l.limit {
		*l = limitRef{set: true, limit: limit, policy: doc, action: act}
	}
}

// tier is one counter a request is charged to, with the most restrictive
// enforced and observed limits of the budgets that share it.
type tier struct {
	hold    Hold
	enforce limitRef
	observe limitRef
}

// tiers expands budgets into the counters to charge at now, merging budgets
// that share a counter (same unit, window and zone): the lowest enforced
// limit applies, observe-mode limits only shadow. Enforced tiers come first
// so that observe-mode tiers are never charged for a refused request.
func (m *Meter) tiers(dst []tier, agent action.AgentID, budgets []policy.BudgetSetting, now time.Time) ([]tier, error) {
	for i := range budgets {
		b := &budgets[i]
		if b.Mode == action.ModeDisabled {
			continue
		}
		sp := &b.Budget
		scope, err := ScopeOf(agent, sp.Per)
		if err != nil {
			return dst, fmt.Errorf("budget of policy %s: %w", b.Policy, err)
		}
		act := sp.ActionOnExceed
		if act == "" {
			act = policy.BudgetDeny
		}
		for _, w := range [...]struct {
			w   Window
			usd float64
		}{{Daily, sp.DailyUSD}, {Monthly, sp.MonthlyUSD}} {
			if !(w.usd > 0) {
				continue // 0 means no limit
			}
			start, end := w.w.Bounds(now, sp.Timezone)
			key := CounterKey(scope, w.w, start)
			j := 0
			for j < len(dst) && dst[j].hold.Key != key {
				j++
			}
			if j == len(dst) {
				dst = append(dst, tier{hold: Hold{Key: key, Scope: scope, Window: w.w, Start: start, End: end, Expires: end.Add(m.opts.ExpiryMargin)}})
			}
			t := &dst[j]
			if b.Mode == action.ModeObserve {
				t.observe.tighten(USD(w.usd), b.Policy, act)
			} else {
				t.enforce.tighten(USD(w.usd), b.Policy, act)
			}
		}
	}
	// Stable partition in place: enforced tiers first.
	k := 0
	for i := range dst {
		if dst[i].enforce.set {
			t := dst[i]
			copy(dst[k+1:i+1], dst[k:i])
			dst[k] = t
			k++
		}
	}
	for i := range dst {
		t := &dst[i]
		ref := &t.enforce
		t.hold.Mode = action.ModeEnforce
		if !ref.set {
			ref = &t.observe
			t.hold.Mode = action.ModeObserve
		}
		t.hold.Limit, t.hold.Policy = ref.limit, ref.policy
	}
	return dst, nil
}

// Reserve estimates the cost of an LLM call (promptTokens plus
// maxCompletionTokens at the model's rate) and reserves it on every counter
// the budgets name for agent: one per accounting unit (Per), window (daily,
// monthly) and time zone. It is all or nothing: if an enforced budget
// refuses, the tiers already charged are rolled back and the Reservation
// reports Allowed false with the budget in Exceeded. Observe-mode budgets
// are charged but never refuse; the ones that would have are listed in
// Shadow. Disabled budgets are skipped.
//
// An error means the counters could not answer (or the agent id lacks a
// part a budget needs); whatever was charged has been rolled back and the
// caller should fail closed.
func (m *Meter) Reserve(ctx context.Context, agent action.AgentID, budgets []policy.BudgetSetting, provider, model string, promptTokens, maxCompletionTokens int64) (Reservation, error) {
	r := Reservation{Agent: agent}
	if promptTokens < 0 || maxCompletionTokens < 0 {
		return r, fmt.Errorf("reserve budget: %d prompt and %d completion tokens: %w", promptTokens, maxCompletionTokens, ErrInvalidUsage)
	}
	r.Cost = m.pricing.Estimate(provider, model, promptTokens, maxCompletionTokens)
	now := m.opts.Now()
	var buf [8]tier
	tiers, err := m.tiers(buf[:0], agent, budgets, now)
	if err != nil {
		return r, fmt.Errorf("reserve budget: %w", err)
	}
	if len(tiers) == 0 {
		r.Allowed = true
		return r, nil
	}
	amount := r.Cost.Amount
	var events []Event // rare: allocate only when a threshold is crossed
	holds := make([]Hold, 0, len(tiers))
	for i := range tiers {
		t := &tiers[i]
		h := t.hold
		var after MicroUSD
		switch {
		case t.enforce.set:
			res, err := m.c.Reserve(ctx, h.Key, int64(amount), int64(t.enforce.limit), h.Expires)
			if err != nil {
				return r, m.abort(ctx, holds, amount, fmt.Errorf("reserve budget %s %s: %w", h.Scope, h.Window, err))
			}
			if !res.Allowed {
				r.Exceeded = exceeded(t, &t.enforce, action.ModeEnforce, MicroUSD(res.Used), amount, now)
				return r, m.abort(ctx, holds, amount, nil)
			}
			after = MicroUSD(res.Used)
		case amount == 0:
			v, err := m.c.Counter(ctx, h.Key)
			if err != nil {
				return r, m.abort(ctx, holds, amount, fmt.Errorf("read budget %s %s: %w", h.Scope, h.Window, err))
			}
			after = MicroUSD(v)
		default:
			v, err := m.c.Adjust(ctx, h.Key, int64(amount), h.Expires)
			if err != nil {
				return r, m.abort(ctx, holds, amount, fmt.Errorf("charge observed budget %s %s: %w", h.Scope, h.Window, err))
			}
			after = MicroUSD(v)
		}
		holds = append(holds, h)
		// A shadow refusal: an observe-mode limit (alone, or tighter than
		// the enforced one) that this request takes the window over.
		if o := &t.observe; o.set && (!t.enforce.set || o.limit < t.enforce.limit) && after > o.limit {
			r.Shadow = append(r.Shadow, *exceeded(t, o, action.ModeObserve, after, amount, now))
		}
		if m.opts.OnThreshold != nil {
			for _, pct := range thresholds {
				if crossed(h.Limit, pct, after-amount, after) {
					events = append(events, Event{Threshold: pct, Policy: h.Policy, Mode: h.Mode, Scope: h.Scope, Window: h.Window, Start: h.Start, Key: h.Key, Limit: h.Limit, Spent: after})
				}
			}
		}
	}
	r.Allowed, r.Holds = true, holds
	for _, e := range events {
		m.opts.OnThreshold(e)
	}
	return r, nil
}

func exceeded(t *tier, ref *limitRef, mode action.Mode, spent, requested MicroUSD, now time.Time) *Exceeded {
	h := &t.hold
	return &Exceeded{
		Policy: ref.policy, Mode: mode, Scope: h.Scope, Window: h.Window, Start: h.Start, End: h.End, Key: h.Key,
		Limit: ref.limit, Spent: spent, Requested: requested, Action: ref.action, RetryAfter: max(0, h.End.Sub(now)),
	}
}

// abort rolls back holds (each charged amount) and returns err joined with
// any rollback failure. Rollback runs even if ctx was cancelled.
func (m *Meter) abort(ctx context.Context, holds []Hold, amount MicroUSD, err error) error {
	if len(holds) == 0 || amount == 0 {
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	for _, h := range holds {
		if _, rerr := m.c.Adjust(cctx, h.Key, -int64(amount), h.Expires); rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back budget %s %s (counter %s over-counts by %s until it expires): %w", h.Scope, h.Window, h.Key, amount, rerr))
		}
	}
	return err
}

// crossed reports whether going from before to after took a counter from
// below pct% of limit to at least pct%.
func crossed(limit MicroUSD, pct int, before, after MicroUSD) bool {
	if limit <= 0 {
		return false
	}
	p := MicroUSD(pct)
	// ceil(limit*pct/100) without overflow.
	th := limit/100*p + (limit%100*p+99)/100
	return before < th && after >= th
}

// Reconcile charges the difference between the actual cost of the call
// (actualPrompt and actualCompletion tokens at the reserved rate) and the
// estimate to every counter r holds; the difference is usually negative
// (the completion was shorter than its maximum). Call it once per
// Reservation. Counters whose window has expired are skipped. It runs to
// completion even if ctx is cancelled, within a bounded time, and returns
// the actual cost together with any backend errors.
func (m *Meter) Reconcile(ctx context.Context, r Reservation, actualPrompt, actualCompletion int64) (Cost, error) {
	c := r.Cost
	c.PromptTokens, c.CompletionTokens = actualPrompt, actualCompletion
	if actualPrompt < 0 || actualCompletion < 0 {
		return c, fmt.Errorf("reconcile budget: %d prompt and %d completion tokens: %w", actualPrompt, actualCompletion, ErrInvalidUsage)
	}
	c.Amount = c.Rate.Cost(actualPrompt, actualCompletion)
	delta := c.Amount - r.Cost.Amount
	if !r.Allowed || delta == 0 {
		return c, nil
	}
	now := m.opts.Now()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs error
	for _, h := range r.Holds {
		if !now.Before(h.Expires) {
			continue
		}
		after, err := m.c.Adjust(cctx, h.Key, int64(delta), h.Expires)
		if err != nil {
			errs = errors.Join(errs, fmt.Errorf("reconcile budget %s %s by %s: %w", h.Scope, h.Window, delta, err))
			continue
		}
		if m.opts.OnThreshold != nil && delta > 0 {
			for _, pct := range thresholds {
				if crossed(h.Limit, pct, MicroUSD(after)-delta, MicroUSD(after)) {
					m.opts.OnThreshold(Event{Threshold: pct, Policy: h.Policy, Mode: h.Mode, Scope: h.Scope, Window: h.Window, Start: h.Start, Key: h.Key, Limit: h.Limit, Spent: MicroUSD(after)})
				}
			}
		}
	}
	return c, errs
}

// Release returns a reservation whose call never happened (refused by a
// later step, or failed before the provider charged anything). It is
// Reconcile with zero tokens.
func (m *Meter) Release(ctx context.Context, r Reservation) error {
	_, err := m.Reconcile(ctx, r, 0, 0)
	return err
}
