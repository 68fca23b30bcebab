package budget

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

var day = time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)

// threeTiers is what Settings returns for bot: org, team and agent budgets,
// most general first.
func threeTiers() []policy.BudgetSetting {
	return []policy.BudgetSetting{
		budget("org-acme", action.ModeEnforce, policy.BudgetPerOrg, 100, 2000, nil, ""),
		budget("team-eng", action.ModeEnforce, policy.BudgetPerTeam, 10, 0, nil, ""),
		budget("agent-bot", action.ModeEnforce, policy.BudgetPerAgent, 1, 0, nil, policy.BudgetSuspend),
	}
}

const (
	orgDaily   = "budget:v1:org:acme:daily:2026-11-25"
	orgMonthly = "budget:v1:org:acme:monthly:2026-11"
	teamDaily  = "budget:v1:team:acme/eng:daily:2026-11-25"
	agentDaily = "budget:v1:agent:acme/eng/bot:daily:2026-11-25"
)

func TestReserveAllTiers(t *testing.T) {
	ctx := t.Context()
	f := newFake()
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	r, err := m.Reserve(ctx, bot, threeTiers(), "test", "flat", 1000, 500)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if !r.Allowed || r.Exceeded != nil || len(r.Shadow) != 0 {
		t.Fatalf("Reserve = %+v, want allowed", r)
	}
	if r.Cost.Amount != 2000 || r.Cost.Unknown {
		t.Fatalf("estimate = %+v, want 2000 micro-USD (1000×1 + 500×2)", r.Cost)
	}
	var keys []string
	for _, h := range r.Holds {
		keys = append(keys, h.Key)
		if got := f.get(h.Key); got != 2000 {
			t.Errorf("%s = %d, want 2000", h.Key, got)
		}
		if want := h.End.Add(DefaultExpiryMargin); !h.Expires.Equal(want) || !f.expires[h.Key].Equal(want) {
			t.Errorf("%s expires %v, want window end + margin %v", h.Key, h.Expires, want)
		}
	}
	if want := []string{orgDaily, orgMonthly, teamDaily, agentDaily}; !slices.Equal(keys, want) {
		t.Errorf("holds = %q, want %q", keys, want)
	}
	h := r.Holds[2]
	if h.Scope.String() != "team/acme/eng" || h.Window != Daily || h.Limit != USD(10) || h.Policy != "team-eng" || h.Mode != action.ModeEnforce ||
		!h.Start.Equal(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)) || !h.End.Equal(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("team hold = %+v", h)
	}
}

func TestReserveRollsBackWhenATierRefuses(t *testing.T) {
	ctx := t.Context()
	f := newFake()
	clk := newClock(day)
	m := NewMeter(f, flatRate(t), Options{Now: clk.Now})
	f.set(agentDaily, 999_000) // $0.999 of the agent's $1
	f.set(teamDaily, 5_000_000)
	f.takeCalls()
	r, err := m.Reserve(ctx, bot, threeTiers(), "test", "flat", 1000, 500)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if r.Allowed || len(r.Holds) != 0 {
		t.Fatalf("Reserve = %+v, want refused with nothing held", r)
	}
	e := r.Exceeded
	if e == nil {
		t.Fatal("Exceeded is nil")
	}
	want := Exceeded{
		Policy: "agent-bot", Mode: action.ModeEnforce, Scope: Scope{Per: policy.BudgetPerAgent, Org: "acme", Team: "eng", Agent: "bot"},
		Window: Daily, Start: time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC),
		Key: agentDaily, Limit: 1_000_000, Spent: 999_000, Requested: 2000, Action: policy.BudgetSuspend, RetryAfter: 9 * time.Hour,
	}
	if *e != want {
		t.Errorf("Exceeded = %+v\nwant       %+v", *e, want)
	}
	if s := e.String(); s != "daily budget of agent/acme/eng/bot exhausted: spent $0.999000 of $1.000000, request needs $0.002000 (policy agent-bot; resets in 9h0m0s)" {
		t.Errorf("String = %q", s)
	}
	for key, v := range map[string]int64{orgDaily: 0, orgMonthly: 0, teamDaily: 5_000_000, agentDaily: 999_000} {
		if got := f.get(key); got != v {
			t.Errorf("after rollback %s = %d, want %d", key, got, v)
		}
	}
	wantCalls := []string{
		"reserve " + orgDaily + " 2000/100000000",
		"reserve " + orgMonthly + " 2000/2000000000",
		"reserve " + teamDaily + " 2000/10000000",
		"reserve " + agentDaily + " 2000/1000000",
		"adjust " + orgDaily + " -2000",
		"adjust " + orgMonthly + " -2000",
		"adjust " + teamDaily + " -2000",
	}
	if calls := f.takeCalls(); !slices.Equal(calls, wantCalls) {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(wantCalls, "\n"))
	}
	// A call that fits is allowed: exactly up to the limit.
	r, err = m.Reserve(ctx, bot, threeTiers(), "test", "flat", 1000, 0)
	if err != nil || !r.Allowed {
		t.Fatalf("Reserve up to the limit = %+v, %v; want allowed", r, err)
	}
	if got := f.get(agentDaily); got != 1_000_000 {
		t.Errorf("agent daily = %d, want exactly the limit", got)
	}
}

func TestReserveBackendErrorRollsBack(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	f := newFake()
	f.failKey, f.failOp = "team", "reserve"
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	_, err := m.Reserve(ctx, bot, threeTiers(), "test", "flat", 1000, 500)
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Reserve = %v, want a wrapped storage.ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), "reserve budget team/acme/eng daily") {
		t.Errorf("error %q does not say which budget", err)
	}
	if f.get(orgDaily) != 0 || f.get(orgMonthly) != 0 {
		t.Errorf("org tiers were not rolled back: %d, %d", f.get(orgDaily), f.get(orgMonthly))
	}

	// The rollback runs even when the request's context is cancelled
	// while the reservation is in flight.
	f2 := &cancelOnAgent{fakeCounters: newFake(), cancel: cancel}
	m2 := NewMeter(f2, flatRate(t), Options{Now: func() time.Time { return day }})
	_, err = m2.Reserve(ctx, bot, threeTiers(), "test", "flat", 1000, 500)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Reserve = %v, want the cancellation", err)
	}
	for _, k := range []string{orgDaily, orgMonthly, teamDaily} {
		if got := f2.get(k); got != 0 {
			t.Errorf("%s = %d, want rolled back after cancellation", k, got)
		}
	}
}

// cancelOnAgent cancels the request's context when the agent tier is
// reserved, and then fails like a backend honouring the context would.
type cancelOnAgent struct {
	*fakeCounters
	cancel context.CancelFunc
}

func (c *cancelOnAgent) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	if strings.Contains(key, ":agent:") {
		c.cancel()
	}
	if err := ctx.Err(); err != nil {
		return storage.Reservation{}, err
	}
	return c.fakeCounters.Reserve(ctx, key, amount, limit, expires)
}

func (c *cancelOnAgent) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return c.fakeCounters.Adjust(ctx, key, delta, expires)
}

func TestReserveRollbackFailureIsReported(t *testing.T) {
	f := newFake()
	f.set(agentDaily, 1_000_000)
	f.failKey, f.failOp = "team", "adjust"
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	r, err := m.Reserve(t.Context(), bot, threeTiers(), "test", "flat", 10, 0)
	if r.Allowed || r.Exceeded == nil {
		t.Fatalf("Reserve = %+v, want refused", r)
	}
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "roll back budget team/acme/eng daily (counter "+teamDaily+" over-counts by $0.000010") {
		t.Fatalf("err = %v, want the failed rollback reported", err)
	}
}

func TestReserveInvalid(t *testing.T) {
	m := NewMeter(newFake(), nil, Options{})
	if _, err := m.Reserve(t.Context(), bot, threeTiers(), "openai", "gpt-4o", -1, 0); !errors.Is(err, ErrInvalidUsage) {
		t.Errorf("negative tokens: %v", err)
	}
	noTeam := action.AgentID{Org: "acme", Agent: "bot"}
	_, err := m.Reserve(t.Context(), noTeam, threeTiers(), "openai", "gpt-4o", 1, 1)
	if !errors.Is(err, ErrInvalidScope) || !strings.Contains(err.Error(), "a team budget needs the team id, which is empty") {
		t.Errorf("missing team: %v", err)
	}
	// No budgets: allowed, nothing touched, but still priced.
	r, err := m.Reserve(t.Context(), noTeam, nil, "openai", "gpt-4o", 1000, 0)
	if err != nil || !r.Allowed || r.Cost.Amount != 2500 || len(r.Holds) != 0 {
		t.Errorf("no budgets: %+v, %v", r, err)
	}
}

func TestReserveUnknownModelChargedAtMaxRate(t *testing.T) {
	f := newFake()
	m := NewMeter(f, nil, Options{Now: func() time.Time { return day }})
	r, err := m.Reserve(t.Context(), bot, threeTiers(), "acme", "mystery-1", 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// $150 + $600 per million tokens: $0.75 for 1000 + 1000 tokens.
	if !r.Cost.Unknown || r.Cost.Amount != USD(0.75) || !r.Allowed {
		t.Fatalf("Reserve(unknown) = %+v", r)
	}
	// Twice more is over the agent's $1.
	r, _ = m.Reserve(t.Context(), bot, threeTiers(), "acme", "mystery-1", 1000, 1000)
	if r.Allowed || !r.Cost.Unknown {
		t.Fatalf("second Reserve(unknown) = %+v, want refused", r)
	}
}

func TestReserveMergesBudgetsSharingACounter(t *testing.T) {
	f := newFake()
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	budgets := []policy.BudgetSetting{
		budget("global-per-team", action.ModeEnforce, policy.BudgetPerTeam, 50, 0, nil, ""),
		budget("team-eng", action.ModeEnforce, policy.BudgetPerTeam, 10, 0, nil, policy.BudgetSuspend),
		budget("team-eng-berlin", action.ModeEnforce, policy.BudgetPerTeam, 20, 0, mustLoc(t, "Europe/Berlin"), ""),
		budget("disabled", action.ModeDisabled, policy.BudgetPerTeam, 0.000001, 0, nil, ""),
	}
	r, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", 100, 0)
	if err != nil || !r.Allowed {
		t.Fatalf("Reserve = %+v, %v", r, err)
	}
	if len(r.Holds) != 2 {
		t.Fatalf("holds = %+v, want the UTC team counter once and the Berlin one", r.Holds)
	}
	if h := r.Holds[0]; h.Key != teamDaily || h.Limit != USD(10) || h.Policy != "team-eng" {
		t.Errorf("merged hold = %+v, want the tighter limit of team-eng", h)
	}
	if h := r.Holds[1]; h.Key != teamDaily+":Europe/Berlin" {
		t.Errorf("zoned hold key = %q", h.Key)
	}
	if got := f.get(teamDaily); got != 100 {
		t.Errorf("shared counter charged %d, want once (100)", got)
	}
}

func TestObserveModeNeverRefuses(t *testing.T) {
	f := newFake()
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	budgets := []policy.BudgetSetting{
		budget("team-eng", action.ModeEnforce, policy.BudgetPerTeam, 10, 0, nil, ""),
		budget("agent-trial", action.ModeObserve, policy.BudgetPerAgent, 0.001, 0, nil, policy.BudgetSuspend),
		// An observe limit tighter than an enforced one on the same counter.
		budget("team-trial", action.ModeObserve, policy.BudgetPerTeam, 0.0015, 0, nil, ""),
	}
	for i := range 5 {
		r, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", 400, 0)
		if err != nil || !r.Allowed {
			t.Fatalf("reserve %d = %+v, %v; observe mode must not refuse", i, r, err)
		}
		spent := MicroUSD(400 * (i + 1))
		var shadows []string
		for _, s := range r.Shadow {
			shadows = append(shadows, s.Policy)
			if s.Mode != action.ModeObserve || s.Spent != spent || s.Requested != 400 {
				t.Errorf("reserve %d shadow = %+v", i, s)
			}
		}
		var want []string
		if spent > 1500 {
			want = append(want, "team-trial")
		}
		if spent > 1000 {
			want = append(want, "agent-trial")
		}
		if !slices.Equal(shadows, want) {
			t.Errorf("reserve %d (spent %d): shadow refusals %q, want %q", i, spent, shadows, want)
		}
	}
	if got := f.get(agentDaily); got != 2000 {
		t.Errorf("observed agent counter = %d, want every call metered (2000)", got)
	}
	// The enforced tier is charged first; the observed one is charged with Adjust.
	f.takeCalls()
	m.Reserve(t.Context(), bot, budgets, "test", "flat", 1, 0)
	if calls := f.takeCalls(); !slices.Equal(calls, []string{"reserve " + teamDaily + " 1/10000000", "adjust " + agentDaily + " 1"}) {
		t.Errorf("calls = %q", calls)
	}
	// A free call on an observed tier reads the counter instead of writing.
	r, _ := m.Reserve(t.Context(), bot, budgets[1:2], "test", "flat", 0, 0)
	if calls := f.takeCalls(); !slices.Equal(calls, []string{"counter " + agentDaily}) || len(r.Shadow) != 1 {
		t.Errorf("free call: calls %q, shadow %+v", calls, r.Shadow)
	}
}

func TestWindowsInTimeZone(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	f := newFake()
	clk := newClock(time.Date(2026, 11, 30, 23, 59, 59, 0, ny))
	m := NewMeter(f, flatRate(t), Options{Now: clk.Now})
	budgets := []policy.BudgetSetting{budget("team-ny", action.ModeEnforce, policy.BudgetPerTeam, 0.01, 0.015, ny, "")}

	reserve := func(tokens int64) Reservation {
		t.Helper()
		r, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", tokens, 0)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// 23:59:59 on 30 November in New York is 04:59:59 UTC on 1 December.
	r := reserve(6000)
	dayKey := "budget:v1:team:acme/eng:daily:2026-11-30:America/New_York"
	monthKey := "budget:v1:team:acme/eng:monthly:2026-11:America/New_York"
	if !r.Allowed || r.Holds[0].Key != dayKey || r.Holds[1].Key != monthKey {
		t.Fatalf("before midnight: %+v", r.Holds)
	}
	if r := reserve(5000); r.Allowed || r.Exceeded.Key != dayKey || r.Exceeded.RetryAfter != time.Second {
		t.Fatalf("over the daily limit before midnight: %+v", r.Exceeded)
	}
	// One second later a new day and a new month begin in New York.
	clk.Set(clk.Now().Add(time.Second))
	r = reserve(5000)
	if !r.Allowed || r.Holds[0].Key != "budget:v1:team:acme/eng:daily:2026-12-01:America/New_York" ||
		r.Holds[1].Key != "budget:v1:team:acme/eng:monthly:2026-12:America/New_York" {
		t.Fatalf("after midnight: %+v, %+v", r, r.Holds)
	}
	if start := r.Holds[1].Start; !start.Equal(time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)) {
		t.Errorf("December starts at %v, want 05:00 UTC", start)
	}
	if end := r.Holds[1].End; !end.Equal(time.Date(2027, 1, 1, 5, 0, 0, 0, time.UTC)) {
		t.Errorf("December ends at %v, want 2027-01-01 05:00 UTC", end)
	}
	// The monthly budget spans days: two days of 6000 + 6000 + 5000 > 15000.
	clk.Set(time.Date(2026, 11, 15, 12, 0, 0, 0, ny))
	reserve(6000)
	clk.Set(time.Date(2026, 11, 16, 12, 0, 0, 0, ny))
	if r := reserve(5000); r.Allowed || r.Exceeded.Window != Monthly || r.Exceeded.Spent != 12_000 {
		t.Fatalf("monthly budget across days: %+v", r.Exceeded)
	}
}

func TestWindowBounds(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	tokyo := mustLoc(t, "Asia/Tokyo")
	for _, c := range []struct {
		w          Window
		at         time.Time
		loc        *time.Location
		start, end time.Time
	}{
		// 2026-03-08: New York springs forward; the day has 23 hours.
		{Daily, time.Date(2026, 3, 8, 12, 0, 0, 0, ny), ny, time.Date(2026, 3, 8, 5, 0, 0, 0, time.UTC), time.Date(2026, 3, 9, 4, 0, 0, 0, time.UTC)},
		// 2026-11-01: falls back; 25 hours.
		{Daily, time.Date(2026, 11, 1, 12, 0, 0, 0, ny), ny, time.Date(2026, 11, 1, 4, 0, 0, 0, time.UTC), time.Date(2026, 11, 2, 5, 0, 0, 0, time.UTC)},
		// 15:30 UTC on 31 January is already 1 February in Tokyo.
		{Monthly, time.Date(2026, 1, 31, 15, 30, 0, 0, time.UTC), tokyo, time.Date(2026, 1, 31, 15, 0, 0, 0, time.UTC), time.Date(2026, 2, 28, 15, 0, 0, 0, time.UTC)},
		{Daily, time.Date(2026, 1, 31, 14, 59, 59, 0, time.UTC), tokyo, time.Date(2026, 1, 30, 15, 0, 0, 0, time.UTC), time.Date(2026, 1, 31, 15, 0, 0, 0, time.UTC)},
		{Monthly, time.Date(2028, 2, 29, 23, 0, 0, 0, time.UTC), nil, time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC), time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC)},
		{Monthly, time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC), time.UTC, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		start, end := c.w.Bounds(c.at, c.loc)
		if !start.Equal(c.start) || !end.Equal(c.end) {
			t.Errorf("%s.Bounds(%v, %v) = %v – %v, want %v – %v", c.w, c.at, c.loc, start.UTC(), end.UTC(), c.start, c.end)
		}
	}
}

func TestReconcile(t *testing.T) {
	f := newFake()
	clk := newClock(day)
	m := NewMeter(f, flatRate(t), Options{Now: clk.Now})
	r, err := m.Reserve(t.Context(), bot, threeTiers(), "test", "flat", 1000, 4000) // 1000 + 8000
	if err != nil || !r.Allowed {
		t.Fatal(r, err)
	}
	// Down: the completion was 500 tokens, not 4000.
	c, err := m.Reconcile(t.Context(), r, 1000, 500)
	if err != nil || c.Amount != 2000 || c.CompletionTokens != 500 {
		t.Fatalf("Reconcile down = %+v, %v", c, err)
	}
	for _, h := range r.Holds {
		if got := f.get(h.Key); got != 2000 {
			t.Errorf("%s = %d after reconciling down, want 2000", h.Key, got)
		}
	}
	// Up: the provider counted more prompt tokens than estimated; the
	// charge goes over the estimate (and may go over the limit).
	r, _ = m.Reserve(t.Context(), bot, threeTiers(), "test", "flat", 100, 0)
	if _, err := m.Reconcile(t.Context(), r, 1_000_000, 0); err != nil {
		t.Fatal(err)
	}
	if got := f.get(agentDaily); got != 1_002_000 {
		t.Errorf("agent daily = %d after reconciling up, want 1002000", got)
	}
	// Over the limit now: even a free call is refused.
	if r, _ := m.Reserve(t.Context(), bot, threeTiers(), "test", "flat", 0, 0); r.Allowed {
		t.Error("a call was allowed on an overspent budget")
	}
	// Reconcile uses the reserved rate even if the table changes.
	r, _ = m.Reserve(t.Context(), action.AgentID{Org: "acme", Team: "eng", Agent: "other"}, threeTiers(), "test", "flat", 10, 0)
	m2 := NewMeter(f, nil, Options{Now: clk.Now})
	if c, _ := m2.Reconcile(t.Context(), r, 20, 0); c.Amount != 20 {
		t.Errorf("Reconcile with another table charged %d, want the reserved rate (20)", c.Amount)
	}
	// Expired windows are skipped; refused reservations hold nothing.
	r, _ = m.Reserve(t.Context(), action.AgentID{Org: "acme", Team: "eng", Agent: "third"}, threeTiers(), "test", "flat", 10, 0)
	clk.Set(day.Add(24*time.Hour + DefaultExpiryMargin))
	f.takeCalls()
	if _, err := m.Reconcile(t.Context(), r, 1000, 0); err != nil {
		t.Fatal(err)
	}
	// Only the monthly org counter is still live.
	if calls := f.takeCalls(); !slices.Equal(calls, []string{"adjust " + orgMonthly + " 990"}) {
		t.Errorf("calls after the daily windows expired = %q", calls)
	}
	if _, err := m.Reconcile(t.Context(), Reservation{}, 5, 5); err != nil {
		t.Errorf("Reconcile(refused) = %v", err)
	}
	if _, err := m.Reconcile(t.Context(), r, -1, 0); !errors.Is(err, ErrInvalidUsage) {
		t.Errorf("Reconcile(negative) = %v", err)
	}
}

func TestReconcileErrors(t *testing.T) {
	f := newFake()
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	r, _ := m.Reserve(t.Context(), bot, threeTiers(), "test", "flat", 1000, 0)
	f.failKey = "team"
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // a cancelled request still reconciles
	_, err := m.Reconcile(ctx, r, 0, 0)
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "reconcile budget team/acme/eng daily by -$0.001000") {
		t.Fatalf("Reconcile = %v", err)
	}
	for _, k := range []string{orgDaily, orgMonthly, agentDaily} {
		if got := f.get(k); got != 0 {
			t.Errorf("%s = %d, want the other tiers reconciled (0)", k, got)
		}
	}
	if err := m.Release(t.Context(), r); err == nil {
		t.Error("Release with the backend down succeeded")
	}
}

func TestThresholdsFireOnce(t *testing.T) {
	f := newFake()
	clk := newClock(day)
	var events []Event
	m := NewMeter(f, flatRate(t), Options{Now: clk.Now, OnThreshold: func(e Event) { events = append(events, e) }})
	budgets := []policy.BudgetSetting{budget("agent-bot", action.ModeEnforce, policy.BudgetPerAgent, 0.001, 0, nil, "")} // 1000 micro-USD
	step := func(tokens int64) {
		t.Helper()
		if _, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", tokens, 0); err != nil {
			t.Fatal(err)
		}
	}
	type ev struct {
		pct   int
		spent MicroUSD
	}
	got := func() []ev {
		var out []ev
		for _, e := range events {
			out = append(out, ev{e.Threshold, e.Spent})
		}
		events = nil
		return out
	}
	for range 7 {
		step(100) // 100 … 700
	}
	if e := got(); len(e) != 0 {
		t.Fatalf("events below 80%%: %v", e)
	}
	step(100) // 800: crosses 80
	step(100) // 900
	step(60)  // 960: crosses 95
	step(30)  // 990
	step(100) // refused
	if e := got(); !slices.Equal(e, []ev{{80, 800}, {95, 960}}) {
		t.Fatalf("events = %v, want 80%% at 800 and 95%% at 960", e)
	}
	// Both at once, in a new window; and the event says where.
	clk.Set(day.Add(24 * time.Hour))
	step(990)
	if len(events) != 2 || events[0].Key != "budget:v1:agent:acme/eng/bot:daily:2026-11-26" || events[1].Threshold != 95 || events[0].Limit != 1000 || events[0].Policy != "agent-bot" {
		t.Fatalf("events = %+v", events)
	}
	events = nil
	// Spend that drops below a threshold and rises again crosses again,
	// whether it rises by a reservation or a reconciliation.
	clk.Set(day.Add(48 * time.Hour))
	r, _ := m.Reserve(t.Context(), bot, budgets, "test", "flat", 900, 0) // 0 → 900
	if e := got(); !slices.Equal(e, []ev{{80, 900}}) {
		t.Fatalf("events = %v, want 80%% at 900", e)
	}
	if _, err := m.Reconcile(t.Context(), r, 100, 0); err != nil { // 900 → 100
		t.Fatal(err)
	}
	if e := got(); len(e) != 0 {
		t.Fatalf("reconciling down fired %v", e)
	}
	r, _ = m.Reserve(t.Context(), bot, budgets, "test", "flat", 100, 0) // 200
	if _, err := m.Reconcile(t.Context(), r, 850, 0); err != nil {      // 200 → 950
		t.Fatal(err)
	}
	if e := got(); !slices.Equal(e, []ev{{80, 950}, {95, 950}}) {
		t.Fatalf("reconciling up: events %v, want 80%% and 95%% at 950", e)
	}
	// A refused request emits nothing, even for tiers it rolled back.
	tiers := []policy.BudgetSetting{
		budget("team", action.ModeEnforce, policy.BudgetPerTeam, 0.001, 0, nil, ""),
		budget("agent", action.ModeEnforce, policy.BudgetPerAgent, 0.0001, 0, nil, ""),
	}
	clk.Set(day.Add(72 * time.Hour))
	if r, _ := m.Reserve(t.Context(), bot, tiers, "test", "flat", 900, 0); r.Allowed {
		t.Fatal("allowed")
	}
	if e := got(); len(e) != 0 {
		t.Fatalf("a refused request fired %v", e)
	}
}

func TestCrossed(t *testing.T) {
	for _, c := range []struct {
		limit         MicroUSD
		pct           int
		before, after MicroUSD
		want          bool
	}{
		{1000, 80, 0, 800, true},
		{1000, 80, 799, 800, true},
		{1000, 80, 800, 900, false},
		{1000, 80, 0, 799, false},
		{1001, 80, 0, 800, false}, // 80% of 1001 is 800.8: 801 crosses
		{1001, 80, 0, 801, true},
		{MaxMicroUSD, 95, 0, MaxMicroUSD, true},
		{0, 80, 0, 10, false},
	} {
		if got := crossed(c.limit, c.pct, c.before, c.after); got != c.want {
			t.Errorf("crossed(%d, %d, %d, %d) = %v", c.limit, c.pct, c.before, c.after, got)
		}
	}
}

func TestStatus(t *testing.T) {
	f := newFake()
	m := NewMeter(f, flatRate(t), Options{Now: func() time.Time { return day }})
	budgets := append(threeTiers(), budget("team-observe", action.ModeObserve, policy.BudgetPerTeam, 0, 500, mustLoc(t, "Asia/Tokyo"), ""))
	if _, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", 250_000, 0); err != nil {
		t.Fatal(err)
	}
	st, err := m.Status(t.Context(), "agent/acme/eng/bot", budgets)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		scope   string
		window  Window
		limit   MicroUSD
		spent   MicroUSD
		remain  MicroUSD
		mode    action.Mode
		action  policy.BudgetAction
		startAt string
	}
	var rows []row
	for _, s := range st {
		rows = append(rows, row{s.Scope.String(), s.Window, s.Limit, s.Spent, s.Remaining, s.Mode, s.ActionOnExceed, s.Start.Format(time.RFC3339)})
	}
	want := []row{
		{"org/acme", Daily, USD(100), 250_000, USD(100) - 250_000, action.ModeEnforce, policy.BudgetDeny, "2026-11-25T00:00:00Z"},
		{"org/acme", Monthly, USD(2000), 250_000, USD(2000) - 250_000, action.ModeEnforce, policy.BudgetDeny, "2026-11-01T00:00:00Z"},
		{"team/acme/eng", Daily, USD(10), 250_000, USD(10) - 250_000, action.ModeEnforce, policy.BudgetDeny, "2026-11-25T00:00:00Z"},
		{"agent/acme/eng/bot", Daily, USD(1), 250_000, 750_000, action.ModeEnforce, policy.BudgetSuspend, "2026-11-25T00:00:00Z"},
		{"team/acme/eng", Monthly, USD(500), 250_000, USD(500) - 250_000, action.ModeObserve, policy.BudgetDeny, "2026-11-01T00:00:00+09:00"},
	}
	if !slices.Equal(rows, want) {
		t.Errorf("Status(agent):\n%v\nwant\n%v", rows, want)
	}
	st, err = m.Status(t.Context(), "team/acme/eng", budgets)
	if err != nil || len(st) != 4 {
		t.Fatalf("Status(team) = %+v, %v; want org and team windows", st, err)
	}
	st, err = m.Status(t.Context(), "org/acme", budgets)
	if err != nil || len(st) != 2 || st[0].Scope.String() != "org/acme" {
		t.Fatalf("Status(org) = %+v, %v", st, err)
	}
	// Over the limit: remaining is 0, not negative.
	f.set(agentDaily, 2_000_000)
	st, _ = m.Status(t.Context(), "agent/acme/eng/bot", budgets)
	if st[3].Remaining != 0 || st[3].Spent != 2_000_000 {
		t.Errorf("overspent status = %+v", st[3])
	}
	f.failKey = "org"
	if _, err := m.Status(t.Context(), "org/acme", budgets); !errors.Is(err, storage.ErrUnavailable) {
		t.Errorf("Status with the backend down = %v", err)
	}
	if _, err := m.Status(t.Context(), "team/acme", budgets); !errors.Is(err, ErrInvalidScope) {
		t.Errorf("Status(bad scope) = %v", err)
	}
}
