package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/ratelimit"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// TestStoreErrorCounts checks which errors count as store faults: the
// store failing does, answers about the request (not found, conflict,
// invalid argument, bad budget or limit settings) and a caller that went
// away do not.
func TestStoreErrorCounts(t *testing.T) {
	cases := []struct {
		err   error
		count bool
	}{
		{nil, false},
		{fmt.Errorf("get agent: %w", storage.ErrNotFound), false},
		{fmt.Errorf("decide approval: %w", storage.ErrConflict), false},
		{fmt.Errorf("query: bad cursor: %w", storage.ErrInvalid), false},
		{fmt.Errorf("read: %w", context.Canceled), false},
		{fmt.Errorf("reserve budget: %w", budget.ErrInvalidScope), false},
		{fmt.Errorf("reserve budget: %w", budget.ErrInvalidUsage), false},
		{fmt.Errorf("rate limit: %w", ratelimit.ErrInvalidLimit), false},
		{fmt.Errorf("read agent: %w", storage.ErrUnavailable), true},
		{fmt.Errorf("read agent: %w", context.DeadlineExceeded), true},
		{errors.New("sql: database is closed"), true},
	}
	for _, c := range cases {
		m := NewMetrics(nil)
		m.storeError(storeOpRegistry, c.err)
		var pb dto.Metric
		if err := m.StoreErrors.WithLabelValues(storeOpRegistry).Write(&pb); err != nil {
			t.Fatal(err)
		}
		got := pb.GetCounter().GetValue()
		if want := map[bool]float64{true: 1, false: 0}[c.count]; got != want {
			t.Errorf("storeError(%v): counted %v, want %v", c.err, got, want)
		}
	}
}

// TestPendingApprovalsGauge counts, in a real (in-memory) store, the
// approvals still waiting: not the decided ones, not the expired ones that
// nobody marked expired yet.
func TestPendingApprovalsGauge(t *testing.T) {
	st := memory.New(memory.Options{})
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	c, err := NewCore(Options{Audit: nopAuditor{}, Chain: "unit", Approvals: st, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c.PendingApprovals())
	ctx := context.Background()
	bot := action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}
	for i, exp := range []time.Time{now.Add(time.Minute), now.Add(time.Hour), now.Add(-time.Second), now.Add(time.Minute)} {
		ap := &storage.Approval{ID: fmt.Sprintf("ap-%d", i), DecisionID: fmt.Sprintf("d-%d", i), Agent: bot, Kind: action.KindToolCall,
			Payload: []byte(`{}`), Status: storage.ApprovalPending, CreatedAt: now.Add(-time.Minute), ExpiresAt: exp}
		if err := st.CreateApproval(ctx, ap); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.DecideApproval(ctx, "ap-3", storage.ApprovalApproved, "alice", "", now); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "aa_approvals_pending" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, want one aa_approvals_pending sample", mfs)
	}
	if got := mfs[0].GetMetric()[0].GetGauge().GetValue(); got != 2 {
		t.Fatalf("aa_approvals_pending = %v, want 2 (one decided, one expired)", got)
	}
}

// TestObserveBatchSeries: a group commit is counted under its result, by
// the series NewMetrics looked up and by a Metrics built without it.
func TestObserveBatchSeries(t *testing.T) {
	count := func(m *Metrics, result string) uint64 {
		var d dto.Metric
		if err := m.AuditWrite.WithLabelValues(result).(prometheus.Metric).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetHistogram().GetSampleCount()
	}
	built := NewMetrics(prometheus.NewRegistry())
	bare := &Metrics{AuditBatch: built.AuditBatch, AuditWrite: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "w"}, []string{"result"})}
	for _, m := range []*Metrics{built, bare} {
		m.ObserveBatch(3, time.Millisecond, nil)
		m.ObserveBatch(1, time.Millisecond, nil)
		m.ObserveBatch(2, time.Millisecond, errors.New("disk full"))
		if ok, bad := count(m, "ok"), count(m, "error"); ok != 2 || bad != 1 {
			t.Fatalf("ok %d, error %d; want 2 and 1", ok, bad)
		}
	}
}
