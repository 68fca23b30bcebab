package gateway

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/scan"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// alertLog collects raised alerts (the engine is tested in alerts/ and end
// to end in gateway/server).
type alertLog struct {
	mu sync.Mutex
	as []storage.Alert
}

func (l *alertLog) Raise(a storage.Alert) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.as = append(l.as, a)
}

func TestAlertDecisionClassifies(t *testing.T) {
	c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit"})
	if err != nil {
		t.Fatal(err)
	}
	log := &alertLog{}
	c.SetAlerts(log, nil)
	a := &action.Action{Kind: action.KindToolCall, Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}}
	for _, tc := range []struct {
		name string
		out  Outcome
		kind string
		sev  storage.AlertSeverity
	}{
		{"allow", Outcome{Decision: action.Allow, RuleID: "r"}, "", ""},
		{"deny by rule", Outcome{Decision: action.Deny, RuleID: "coding/no-force-push"}, "policy_violation", storage.SeverityWarning},
		{"deny by default", Outcome{Decision: action.Deny, RuleID: "coding/default"}, "policy_violation", storage.SeverityInfo},
		{"credential blocked", Outcome{Decision: action.Deny, RuleID: "data.credential_action"}, "credential_leak", storage.SeverityCritical},
		{"credential redacted", Outcome{Decision: action.Redact, RuleID: "r", Redactions: []scan.Finding{{Kind: "aws_access_key_id"}}}, "credential_leak", storage.SeverityWarning},
		{"redact rule without credential", Outcome{Decision: action.Redact, RuleID: "redact-crm"}, "", ""},
		{"rate limit", Outcome{Decision: action.Deny, RuleID: "r/limit_per_hour", Limited: true}, "", ""},
		{"budget", Outcome{Decision: action.Deny, RuleID: "p/budget", Limited: true}, "", ""},
		{"suspended agent", Outcome{Decision: action.Deny, RuleID: "agent-status"}, "", ""},
		{"audit down", Outcome{Decision: action.Deny, RuleID: "audit"}, "", ""},
		{"pending", Outcome{Decision: action.Pending, RuleID: "r"}, "", ""},
	} {
		log.as = nil
		tc.out.DecisionID = "d-" + strings.ReplaceAll(tc.name, " ", "-")
		c.alertDecision(a, &tc.out)
		if tc.kind == "" {
			if len(log.as) != 0 {
				t.Errorf("%s: raised %+v, want nothing", tc.name, log.as)
			}
			continue
		}
		if len(log.as) != 1 || log.as[0].Kind != tc.kind || log.as[0].Severity != tc.sev || log.as[0].Source != "decision:"+tc.out.DecisionID ||
			log.as[0].Agent != a.Agent || log.as[0].ID == "" || log.as[0].Time.IsZero() {
			t.Errorf("%s: raised %+v, want one %s/%s", tc.name, log.as, tc.kind, tc.sev)
		}
	}
	c.SetAlerts(nil, nil)
	c.alertDecision(a, &Outcome{Decision: action.Deny, RuleID: "x"})
	if len(log.as) != 0 {
		t.Fatal("alert raised after SetAlerts(nil, nil)")
	}
}

func TestBudgetAlertsAreOncePerWindow(t *testing.T) {
	c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit"})
	if err != nil {
		t.Fatal(err)
	}
	log := &alertLog{}
	c.SetAlerts(log, nil)
	sc := budget.Scope{Per: policy.BudgetPerAgent, Org: "acme", Team: "eng", Agent: "bot"}
	ev := budget.Event{Threshold: 80, Scope: sc, Window: "daily", Key: "budget:v1:agent:acme/eng/bot:daily:2026-11-26", Limit: 1_000_000, Spent: 800_000}
	c.alertThreshold(ev)
	c.alertThreshold(ev) // a second replica crossing the same threshold
	ev.Threshold = 95
	c.alertThreshold(ev)
	if len(log.as) != 3 || log.as[0].ID != log.as[1].ID || log.as[0].ID == log.as[2].ID || log.as[2].Severity != storage.SeverityCritical {
		t.Fatalf("threshold alerts = %+v: the same crossing must give the same id, another threshold another", log.as)
	}
	log.as = nil
	ex := &budget.Exceeded{Scope: sc, Window: "daily", Key: ev.Key, Limit: 1_000_000, Spent: 900_000, Requested: 200_000, Action: policy.BudgetSuspend}
	a := &action.Action{Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}}
	c.alertExhausted(a, ex, &Outcome{DecisionID: "d1"}, false)
	c.alertExhausted(a, ex, &Outcome{DecisionID: "d2"}, true)
	if len(log.as) != 3 || log.as[0].ID != log.as[1].ID || log.as[2].Kind != "agent_suspended" {
		t.Fatalf("exhaustion alerts = %+v: one id per exhausted window, plus the suspension", log.as)
	}
}

func TestGetCostsGroupsAndValidates(t *testing.T) {
	st := memory.New(memory.Options{})
	ctx := context.Background()
	for _, e := range []storage.CostEntry{
		{Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}, Model: "gpt-4o", Day: "2026-11-25", MicroUSD: 100, PromptTokens: 10, CompletionTokens: 1, Requests: 1},
		{Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}, Model: "claude-3", Day: "2026-11-26", MicroUSD: 200, PromptTokens: 20, CompletionTokens: 2, Requests: 2},
		{Agent: action.AgentID{Org: "acme", Team: "ops", Agent: "run"}, Model: "gpt-4o", Day: "2026-11-26", MicroUSD: 400, PromptTokens: 40, CompletionTokens: 4, Requests: 4},
		{Agent: action.AgentID{Org: "beta", Team: "x", Agent: "y"}, Model: "gpt-4o", Day: "2026-10-01", MicroUSD: 800, Requests: 8},
	} {
		if err := st.RecordCost(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	svc := NewCostService(st)
	svc.now = func() time.Time { return time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC) }
	resp, err := svc.GetCosts(ctx, &v1.GetCostsRequest{GroupBy: []string{"team"}, OrgId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetGroups()) != 2 || resp.GetGroups()[0].GetTeamId() != "eng" || resp.GetGroups()[0].GetCostMicroUsd() != 300 ||
		resp.GetGroups()[0].GetOrgId() != "acme" || resp.GetGroups()[0].GetAgentId() != "" || resp.GetGroups()[1].GetRequests() != 4 ||
		resp.GetTotal().GetCostMicroUsd() != 700 || resp.GetFromDay() != "2026-10-28" || resp.GetToDay() != "2026-11-26" {
		t.Fatalf("GetCosts(team, acme, default range) = %v", resp)
	}
	resp, err = svc.GetCosts(ctx, &v1.GetCostsRequest{GroupBy: []string{"model,day"}, FromDay: "2026-10-01", ToDay: "2026-11-26"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, g := range resp.GetGroups() {
		keys = append(keys, g.GetDay()+"/"+g.GetModel())
	}
	if strings.Join(keys, " ") != "2026-10-01/gpt-4o 2026-11-25/gpt-4o 2026-11-26/claude-3 2026-11-26/gpt-4o" || resp.GetTotal().GetCostUsd() != 0.0015 {
		t.Fatalf("GetCosts(model,day) groups %v total %v", keys, resp.GetTotal())
	}
	for _, bad := range []*v1.GetCostsRequest{
		{GroupBy: []string{"planet"}},
		{FromDay: "yesterday"},
		{FromDay: "2026-11-27", ToDay: "2026-11-26"},
		{FromDay: "2020-01-01", ToDay: "2026-11-26"},
	} {
		if _, err := svc.GetCosts(ctx, bad); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("GetCosts(%v) = %v, want InvalidArgument", bad, err)
		}
	}
}

// BenchmarkAlertDecisionAllow is the alert hook's cost on the common path:
// an allowed action with alerts enabled.
func BenchmarkAlertDecisionAllow(b *testing.B) {
	c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit"})
	if err != nil {
		b.Fatal(err)
	}
	c.SetAlerts(&alertLog{}, nil)
	a := &action.Action{Kind: action.KindToolCall}
	out := &Outcome{Decision: action.Allow, RuleID: "r"}
	b.ReportAllocs()
	for b.Loop() {
		c.alertDecision(a, out)
	}
}
