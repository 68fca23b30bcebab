package budget

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// These tests run the meter against the real in-process counters of the
// memory driver (the same code the sqlite driver keeps its counters in).

func TestConcurrentReservesNeverExceedLimit(t *testing.T) {
	for _, backend := range []struct {
		name string
		c    Counters
	}{
		{"memory", memory.NewCounters(func() time.Time { return day })},
		{"fake", newQuietFake()},
	} {
		t.Run(backend.name, func(t *testing.T) {
			m := NewMeter(backend.c, flatRate(t), Options{Now: func() time.Time { return day }})
			// Every agent of the team shares the team's $0.05; each agent
			// also has its own $0.01. 64 goroutines, 8 agents, 3 µ$ steps.
			budgets := []policy.BudgetSetting{
				budget("team", action.ModeEnforce, policy.BudgetPerTeam, 0.05, 0, nil, ""),
				budget("agent", action.ModeEnforce, policy.BudgetPerAgent, 0.01, 0, nil, ""),
			}
			const workers, tries, cost = 64, 400, 3
			var allowed atomic.Int64
			var perAgent [8]atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				agent := action.AgentID{Org: "acme", Team: "eng", Agent: fmt.Sprint("a", w%8)}
				wg.Go(func() {
					for range tries {
						r, err := m.Reserve(t.Context(), agent, budgets, "test", "flat", cost, 0)
						if err != nil {
							t.Errorf("Reserve: %v", err)
							return
						}
						if r.Allowed {
							allowed.Add(1)
							perAgent[w%8].Add(1)
						}
					}
				})
			}
			wg.Wait()
			team, err := backend.c.Counter(t.Context(), teamDaily)
			if err != nil {
				t.Fatal(err)
			}
			if got := allowed.Load() * cost; got != team || team > 50_000 {
				t.Fatalf("allowed %d µ$, team counter %d µ$, limit 50000", got, team)
			}
			if team < 50_000-cost {
				t.Errorf("team counter %d: the budget was not used up (lost updates or leaked rollbacks)", team)
			}
			for i := range perAgent {
				key := fmt.Sprintf("budget:v1:agent:acme/eng/a%d:daily:2026-11-25", i)
				v, _ := backend.c.Counter(t.Context(), key)
				if v != perAgent[i].Load()*cost || v > 10_000 {
					t.Errorf("%s = %d, allowed %d µ$, limit 10000", key, v, perAgent[i].Load()*cost)
				}
			}
		})
	}
}

func newQuietFake() *fakeCounters {
	f := newFake()
	f.noLog = true
	return f
}

func TestMemoryStoreReserveReconcileStatus(t *testing.T) {
	ny := mustLoc(t, "America/New_York")
	clk := newClock(time.Date(2026, 1, 31, 23, 30, 0, 0, ny))
	store := memory.New(memory.Options{Now: clk.Now})
	defer store.Close()
	var events []Event
	m := NewMeter(store, flatRate(t), Options{Now: clk.Now, OnThreshold: func(e Event) { events = append(events, e) }})
	budgets := []policy.BudgetSetting{
		budget("org", action.ModeEnforce, policy.BudgetPerOrg, 0, 0.02, ny, ""),
		budget("agent", action.ModeEnforce, policy.BudgetPerAgent, 0.01, 0, ny, policy.BudgetSuspend),
	}
	r, err := m.Reserve(t.Context(), bot, budgets, "test", "flat", 1000, 4000) // 9000
	if err != nil || !r.Allowed {
		t.Fatalf("Reserve = %+v, %v", r, err)
	}
	if len(events) != 1 || events[0].Threshold != 80 { // 9000 of 10000 crosses 80% of the agent's day
		t.Fatalf("events = %+v", events)
	}
	if _, err := m.Reconcile(t.Context(), r, 1000, 1000); err != nil { // 3000
		t.Fatal(err)
	}
	st, err := m.Status(t.Context(), "agent/acme/eng/bot", budgets)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st[0].Spent != 3000 || st[1].Spent != 3000 || st[1].Remaining != 7000 {
		t.Fatalf("Status = %+v", st)
	}
	// Past midnight in New York: a new day and a new month.
	clk.Set(clk.Now().Add(time.Hour))
	st, _ = m.Status(t.Context(), "agent/acme/eng/bot", budgets)
	if st[0].Spent != 0 || st[1].Spent != 0 || st[1].Start.Month() != time.February {
		t.Fatalf("Status after midnight = %+v", st)
	}
	// The memory driver expires the old window's counters after the margin.
	clk.Set(clk.Now().Add(DefaultExpiryMargin))
	if v, _ := store.Counter(t.Context(), "budget:v1:agent:acme/eng/bot:daily:2026-01-31:America/New_York"); v != 0 {
		t.Errorf("expired counter = %d", v)
	}
}
