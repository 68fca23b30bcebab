package budget

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// fakeCounters is a mutex-guarded Counters with failure injection and a
// call log. Expiry is recorded, not enforced.
type fakeCounters struct {
	mu      sync.Mutex
	vals    map[string]int64
	expires map[string]time.Time
	calls   []string
	// failKey, when non-empty, makes every call on a key containing it
	// fail with storage.ErrUnavailable; failOp restricts it to one method.
	failKey string
	failOp  string
	noLog   bool
}

var _ Counters = (*fakeCounters)(nil)

func newFake() *fakeCounters {
	return &fakeCounters{vals: map[string]int64{}, expires: map[string]time.Time{}}
}

func (f *fakeCounters) fail(op, key string) error {
	if f.failKey != "" && strings.Contains(key, f.failKey) && (f.failOp == "" || f.failOp == op) {
		return fmt.Errorf("fake %s %s: %w", op, key, storage.ErrUnavailable)
	}
	return nil
}

func (f *fakeCounters) log(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeCounters) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.noLog {
		f.log("reserve %s %d/%d", key, amount, limit)
	}
	if err := f.fail("reserve", key); err != nil {
		return storage.Reservation{}, err
	}
	v := f.vals[key]
	if v > limit-amount {
		return storage.Reservation{Allowed: false, Used: v}, nil
	}
	f.vals[key] = v + amount
	f.expires[key] = expires
	return storage.Reservation{Allowed: true, Used: v + amount}, nil
}

func (f *fakeCounters) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.noLog {
		f.log("adjust %s %d", key, delta)
	}
	if err := f.fail("adjust", key); err != nil {
		return 0, err
	}
	f.vals[key] += delta
	f.expires[key] = expires
	return f.vals[key], nil
}

func (f *fakeCounters) Counter(ctx context.Context, key string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.noLog {
		f.log("counter %s", key)
	}
	if err := f.fail("counter", key); err != nil {
		return 0, err
	}
	return f.vals[key], nil
}

func (f *fakeCounters) get(key string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vals[key]
}

func (f *fakeCounters) set(key string, v int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vals[key] = v
}

func (f *fakeCounters) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Skipf("time zone %s not available: %v", name, err)
	}
	return loc
}

func mustPricing(t testing.TB) *Pricing {
	t.Helper()
	p, err := DefaultPricing()
	if err != nil {
		t.Fatalf("DefaultPricing: %v", err)
	}
	return p
}

var bot = action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}

func budget(doc string, mode action.Mode, per policy.BudgetPer, daily, monthly float64, loc *time.Location, act policy.BudgetAction) policy.BudgetSetting {
	if loc == nil {
		loc = time.UTC
	}
	if act == "" {
		act = policy.BudgetDeny
	}
	return policy.BudgetSetting{Policy: doc, Mode: mode, Budget: policy.BudgetSpec{DailyUSD: daily, MonthlyUSD: monthly, Per: per, Timezone: loc, ActionOnExceed: act}}
}

// flatRate is a pricing table where every model costs 1 micro-USD per
// prompt token and 2 per completion token, so costs are easy to compute.
func flatRate(t testing.TB) *Pricing {
	t.Helper()
	p, err := ParsePricing("flat.yaml", []byte(`
providers:
  test:
    flat: {input_per_1k: 0.001, output_per_1k: 0.002}
`))
	if err != nil {
		t.Fatalf("ParsePricing: %v", err)
	}
	return p
}
