package storagetest

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// AlertStore is what the alert and cost cases need.
type AlertStore interface {
	storage.Alerts
	storage.CostLedger
}

// RunAlerts runs the alert feed, silence and cost ledger cases.
func RunAlerts[S AlertStore](t *testing.T, newStore func(t *testing.T) S, opts ...Option) {
	c := newConfig(opts)
	t.Run("InsertOnce", func(t *testing.T) { testAlertInsertOnce(t, newStore(t), newStore(t), false) })
	t.Run("QueryAndPage", func(t *testing.T) { testAlertQuery(t, newStore(t)) })
	t.Run("Silences", func(t *testing.T) { testSilences(t, newStore(t)) })
	t.Run("Costs", func(t *testing.T) { testCosts(t, newStore(t), newStore(t), false) })
	t.Run("Trim", func(t *testing.T) { testAlertTrim(t, newStore(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newStore(t)
		b := second(t, c, a)
		testAlertInsertOnce(t, a, b, true)
		testCosts(t, a, b, true)
	})
}

var alertAgent = action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}

func testAlertInsertOnce(t *testing.T, a, b AlertStore, shared bool) {
	ctx := testContext(t)
	if !shared {
		b = a
	}
	in := &storage.Alert{ID: uniq("alert"), Time: base.Add(123456 * time.Nanosecond), Kind: "credential_leak",
		Severity: storage.SeverityCritical, Agent: alertAgent, Summary: "blocked an AWS key",
		Details: []byte(`{"kinds":["aws_access_key"]}`), Source: "decision:d-1", SilenceID: "s-1"}
	var inserted atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			ok, err := s.InsertAlert(ctx, in)
			if err != nil {
				errs <- err
				return
			}
			if ok {
				inserted.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		check(t, "InsertAlert", err)
	}
	if n := inserted.Load(); n != 1 {
		t.Fatalf("16 concurrent inserts of one alert id reported %d as new, want exactly 1", n)
	}
	got, err := b.GetAlert(ctx, in.ID)
	check(t, "GetAlert", err)
	if got.ID != in.ID || !got.Time.Equal(in.Time) || got.Kind != in.Kind || got.Severity != in.Severity ||
		got.Agent != in.Agent || got.Summary != in.Summary || string(got.Details) != string(in.Details) ||
		got.Source != in.Source || got.SilenceID != in.SilenceID || !got.Silenced() {
		t.Fatalf("GetAlert = %+v, want %+v", got, in)
	}
	_, err = a.GetAlert(ctx, uniq("missing"))
	checkIs(t, "GetAlert(unknown)", err, storage.ErrNotFound)
	_, err = a.InsertAlert(ctx, &storage.Alert{ID: uniq("bad"), Time: base, Kind: "x", Severity: "loud"})
	checkIs(t, "InsertAlert(bad severity)", err, storage.ErrInvalid)
}

func testAlertQuery(t *testing.T, s AlertStore) {
	ctx := testContext(t)
	other := action.AgentID{Org: "acme", Team: "ops", Agent: "bot"}
	var all []*storage.Alert
	// 25 alerts, several sharing an instant so paging must break ties by id.
	for i := range 25 {
		a := &storage.Alert{ID: fmt.Sprintf("a-%02d", i), Time: base.Add(time.Duration(i/3) * time.Second),
			Kind: "policy_violation", Severity: storage.SeverityWarning, Agent: alertAgent, Summary: fmt.Sprint("deny ", i)}
		if i%5 == 0 {
			a.Kind, a.Severity, a.Agent = "budget_exhausted", storage.SeverityCritical, other
		}
		if i == 7 {
			a.Severity = storage.SeverityInfo
		}
		ok, err := s.InsertAlert(ctx, a)
		check(t, "InsertAlert", err)
		if !ok {
			t.Fatalf("InsertAlert(%s) reported an existing alert in an empty store", a.ID)
		}
		all = append(all, a)
	}
	want := func(q storage.AlertQuery) []string {
		var ids []string
		for i := len(all) - 1; i >= 0; i-- {
			if q.Matches(all[i]) {
				ids = append(ids, all[i].ID)
			}
		}
		return ids
	}
	for _, q := range []storage.AlertQuery{
		{},
		{Kind: "budget_exhausted"},
		{Severities: storage.AtLeast(storage.SeverityWarning)},
		{Severities: []storage.AlertSeverity{storage.SeverityInfo}},
		{Org: "acme", Team: "ops"},
		{Agent: "coder", Kind: "policy_violation"},
		{Since: base.Add(2 * time.Second), Until: base.Add(5 * time.Second)},
	} {
		for _, size := range []int{0, 4} {
			q.Limit = size
			var got []string
			q.Cursor = ""
			for pages := 0; ; pages++ {
				if pages > 30 {
					t.Fatalf("query %+v: paging does not end", q)
				}
				p, err := s.QueryAlerts(ctx, q)
				check(t, "QueryAlerts", err)
				if size > 0 && len(p.Alerts) > size {
					t.Fatalf("query %+v: page of %d alerts, limit %d", q, len(p.Alerts), size)
				}
				for _, a := range p.Alerts {
					got = append(got, a.ID)
				}
				if p.NextCursor == "" {
					break
				}
				q.Cursor = p.NextCursor
			}
			q.Cursor = ""
			if w := want(q); !slices.Equal(got, w) {
				t.Fatalf("query %+v (page size %d):\n got %v\nwant %v", q, size, got, w)
			}
		}
	}
	_, err := s.QueryAlerts(ctx, storage.AlertQuery{Cursor: "not-a-cursor"})
	checkIs(t, "QueryAlerts(bad cursor)", err, storage.ErrInvalid)
}

func testSilences(t *testing.T, s AlertStore) {
	ctx := testContext(t)
	s1 := &storage.Silence{ID: "sil-1", Kind: "policy_violation", AgentPrefix: "acme/eng/", StartsAt: base, EndsAt: base.Add(time.Hour),
		Comment: "deploy", CreatedBy: "alice", CreatedAt: base}
	s2 := &storage.Silence{ID: "sil-2", Severity: storage.SeverityInfo, StartsAt: base.Add(2 * time.Hour), EndsAt: base.Add(3 * time.Hour),
		CreatedBy: "bob", CreatedAt: base.Add(time.Minute)}
	check(t, "PutSilence", s.PutSilence(ctx, s1))
	check(t, "PutSilence", s.PutSilence(ctx, s2))
	checkIs(t, "PutSilence(duplicate)", s.PutSilence(ctx, s1), storage.ErrConflict)
	ids := func(ss []*storage.Silence) []string {
		var out []string
		for _, si := range ss {
			out = append(out, si.ID)
		}
		return out
	}
	got, err := s.ListSilences(ctx, time.Time{})
	check(t, "ListSilences(all)", err)
	if !slices.Equal(ids(got), []string{"sil-2", "sil-1"}) {
		t.Fatalf("ListSilences(all) = %v, want newest first [sil-2 sil-1]", ids(got))
	}
	if g := got[1]; g.Kind != s1.Kind || g.AgentPrefix != s1.AgentPrefix || !g.StartsAt.Equal(s1.StartsAt) ||
		!g.EndsAt.Equal(s1.EndsAt) || g.Comment != s1.Comment || g.CreatedBy != s1.CreatedBy || !g.CreatedAt.Equal(s1.CreatedAt) {
		t.Fatalf("stored silence = %+v, want %+v", g, s1)
	}
	got, err = s.ListSilences(ctx, base.Add(30*time.Minute))
	check(t, "ListSilences(active)", err)
	if !slices.Equal(ids(got), []string{"sil-1"}) {
		t.Fatalf("ListSilences(active at +30m) = %v, want [sil-1]", ids(got))
	}
	exp, err := s.ExpireSilence(ctx, "sil-1", base.Add(10*time.Minute))
	check(t, "ExpireSilence", err)
	if !exp.EndsAt.Equal(base.Add(10 * time.Minute)) {
		t.Fatalf("expired silence ends at %v, want %v", exp.EndsAt, base.Add(10*time.Minute))
	}
	// Expiring later than the end changes nothing.
	exp, err = s.ExpireSilence(ctx, "sil-1", base.Add(20*time.Minute))
	check(t, "ExpireSilence(again)", err)
	if !exp.EndsAt.Equal(base.Add(10 * time.Minute)) {
		t.Fatalf("second expiry moved the end to %v", exp.EndsAt)
	}
	got, err = s.ListSilences(ctx, base.Add(30*time.Minute))
	check(t, "ListSilences(active)", err)
	if len(got) != 0 {
		t.Fatalf("ListSilences(active) after expiry = %v, want none", ids(got))
	}
	_, err = s.ExpireSilence(ctx, "sil-unknown", base)
	checkIs(t, "ExpireSilence(unknown)", err, storage.ErrNotFound)
}

func testCosts(t *testing.T, a, b AlertStore, shared bool) {
	ctx := testContext(t)
	if !shared {
		b = a
	}
	org := uniq("org")
	bot := action.AgentID{Org: org, Team: "eng", Agent: "bot"}
	ops := action.AgentID{Org: org, Team: "ops", Agent: "runner"}
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for range each {
				if err := s.RecordCost(ctx, storage.CostEntry{Agent: bot, Model: "gpt-4o", Day: "2026-11-25",
					MicroUSD: 1500, PromptTokens: 100, CompletionTokens: 20, Requests: 1}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		check(t, "RecordCost", err)
	}
	for _, e := range []storage.CostEntry{
		{Agent: bot, Model: "claude-3", Day: "2026-11-25", MicroUSD: 7, PromptTokens: 1, CompletionTokens: 1, Requests: 1},
		{Agent: bot, Model: "gpt-4o", Day: "2026-11-26", MicroUSD: 3, PromptTokens: 2, CompletionTokens: 0, Requests: 1},
		{Agent: ops, Model: "gpt-4o", Day: "2026-11-24", MicroUSD: 11, PromptTokens: 5, CompletionTokens: 5, Requests: 2},
	} {
		check(t, "RecordCost", a.RecordCost(ctx, e))
	}
	got, err := b.QueryCosts(ctx, storage.CostQuery{Org: org})
	check(t, "QueryCosts", err)
	want := []storage.CostEntry{
		{Agent: ops, Model: "gpt-4o", Day: "2026-11-24", MicroUSD: 11, PromptTokens: 5, CompletionTokens: 5, Requests: 2},
		{Agent: bot, Model: "claude-3", Day: "2026-11-25", MicroUSD: 7, PromptTokens: 1, CompletionTokens: 1, Requests: 1},
		{Agent: bot, Model: "gpt-4o", Day: "2026-11-25", MicroUSD: workers * each * 1500, PromptTokens: workers * each * 100,
			CompletionTokens: workers * each * 20, Requests: workers * each},
		{Agent: bot, Model: "gpt-4o", Day: "2026-11-26", MicroUSD: 3, PromptTokens: 2, Requests: 1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("QueryCosts(org) after %d concurrent additions:\n got %+v\nwant %+v", workers*each, got, want)
	}
	got, err = a.QueryCosts(ctx, storage.CostQuery{Org: org, Team: "eng", Model: "gpt-4o", FromDay: "2026-11-26", ToDay: "2026-11-30"})
	check(t, "QueryCosts(filtered)", err)
	if !slices.Equal(got, want[3:]) {
		t.Fatalf("QueryCosts(filtered) = %+v, want %+v", got, want[3:])
	}
	_, err = a.QueryCosts(ctx, storage.CostQuery{Org: org, Limit: 2})
	checkIs(t, "QueryCosts(over limit)", err, storage.ErrInvalid)
	checkIs(t, "RecordCost(bad day)", a.RecordCost(ctx, storage.CostEntry{Agent: bot, Day: "25/11/2026"}), storage.ErrInvalid)
	checkIs(t, "RecordCost(negative)", a.RecordCost(ctx, storage.CostEntry{Agent: bot, Day: "2026-11-25", MicroUSD: -1}), storage.ErrInvalid)
}

func testAlertTrim(t *testing.T, s AlertStore) {
	ctx := testContext(t)
	for i := range 5 {
		_, err := s.InsertAlert(ctx, &storage.Alert{ID: fmt.Sprint("t-", i), Time: base.Add(time.Duration(i) * time.Hour),
			Kind: "policy_violation", Severity: storage.SeverityInfo})
		check(t, "InsertAlert", err)
	}
	check(t, "PutSilence", s.PutSilence(ctx, &storage.Silence{ID: "ended", Kind: "x", StartsAt: base, EndsAt: base.Add(time.Hour), CreatedAt: base}))
	check(t, "PutSilence", s.PutSilence(ctx, &storage.Silence{ID: "open", Kind: "x", StartsAt: base, EndsAt: base.Add(9 * time.Hour), CreatedAt: base}))
	n, err := s.TrimAlerts(ctx, base.Add(2*time.Hour))
	check(t, "TrimAlerts", err)
	if n != 2 {
		t.Fatalf("TrimAlerts deleted %d alerts, want 2 (those before +2h)", n)
	}
	p, err := s.QueryAlerts(ctx, storage.AlertQuery{})
	check(t, "QueryAlerts", err)
	if len(p.Alerts) != 3 || p.Alerts[2].ID != "t-2" {
		t.Fatalf("after trim %d alerts remain (oldest %v), want t-2..t-4", len(p.Alerts), p.Alerts)
	}
	ss, err := s.ListSilences(ctx, time.Time{})
	check(t, "ListSilences", err)
	if len(ss) != 1 || ss[0].ID != "open" {
		t.Fatalf("after trim silences = %v, want only the one still running", ss)
	}
}
