package budget

import (
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// benchBudgets is a typical cascade: org daily + monthly, team daily, agent
// daily; four counters per call.
func benchBudgets() []policy.BudgetSetting {
	return []policy.BudgetSetting{
		budget("org", action.ModeEnforce, policy.BudgetPerOrg, 1e9, 1e10, nil, ""),
		budget("team", action.ModeEnforce, policy.BudgetPerTeam, 1e9, 0, nil, ""),
		budget("agent", action.ModeEnforce, policy.BudgetPerAgent, 1e9, 0, nil, ""),
	}
}

func BenchmarkReserve(b *testing.B) {
	for _, bc := range []struct {
		name string
		c    Counters
	}{
		{"fake", newQuietFake()},
		{"memory", memory.NewCounters(nil)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := NewMeter(bc.c, mustPricing(b), Options{Now: func() time.Time { return day }})
			budgets := benchBudgets()
			b.ReportAllocs()
			for b.Loop() {
				r, err := m.Reserve(b.Context(), bot, budgets, "openai", "gpt-4o-2024-08-06", 1200, 800)
				if err != nil || !r.Allowed {
					b.Fatal(r, err)
				}
			}
		})
	}
}

func BenchmarkReserveParallel(b *testing.B) {
	m := NewMeter(memory.NewCounters(nil), mustPricing(b), Options{Now: func() time.Time { return day }})
	budgets := benchBudgets()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Reserve(b.Context(), bot, budgets, "openai", "gpt-4o", 1200, 800); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkReserveReconcile(b *testing.B) {
	m := NewMeter(newQuietFake(), mustPricing(b), Options{Now: func() time.Time { return day }})
	budgets := benchBudgets()
	b.ReportAllocs()
	for b.Loop() {
		r, err := m.Reserve(b.Context(), bot, budgets, "anthropic", "claude-sonnet-4-20250514", 1200, 4096)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.Reconcile(b.Context(), r, 1180, 350); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	p := mustPricing(b)
	for _, name := range []string{"gpt-4o", "claude-3-5-sonnet-20241022", "models/gemini-2.5-pro-preview-06-05", "unknown-model-7b"} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Lookup("", name)
			}
		})
	}
}
