package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// RunApprovals runs the approval cases. Hooks used: Reopen (a waiter on one
// instance woken by a decision on another).
func RunApprovals[A storage.Approvals](t *testing.T, newApprovals func(t *testing.T) A, opts ...Option) {
	c := newConfig(opts)
	t.Run("CreateDecide", func(t *testing.T) { testApprovalsCreateDecide(t, newApprovals(t)) })
	t.Run("List", func(t *testing.T) { testApprovalsList(t, newApprovals(t)) })
	t.Run("ConcurrentDecide", func(t *testing.T) { testApprovalsConcurrentDecide(t, newApprovals(t)) })
	t.Run("Wait", func(t *testing.T) {
		a := newApprovals(t)
		testApprovalsWait(t, a, a)
	})
	t.Run("SharedBackend", func(t *testing.T) {
		a := newApprovals(t)
		b := second(t, c, a)
		testApprovalsWait(t, a, b)
		testApprovalsWait(t, b, a)
	})
}

func approval(id string, org, team string, created time.Time) *storage.Approval {
	return &storage.Approval{
		ID:         id,
		DecisionID: "dec-" + id,
		Agent:      action.AgentID{Org: org, Team: team, Agent: "coder"},
		Kind:       action.KindToolCall,
		Payload:    []byte(`{"tool":"deploy","args":{"env":"prod"}}`),
		RuleID:     "deploy-needs-human",
		Reason:     "production deploys need approval",
		CreatedAt:  created,
		ExpiresAt:  created.Add(10 * time.Minute),
	}
}

func equalApproval(a, b *storage.Approval) string {
	switch {
	case a.ID != b.ID || a.DecisionID != b.DecisionID || a.Agent != b.Agent || a.Kind != b.Kind:
		return fmt.Sprintf("identity %s/%s/%s/%s != %s/%s/%s/%s", a.ID, a.DecisionID, a.Agent, a.Kind, b.ID, b.DecisionID, b.Agent, b.Kind)
	case !bytes.Equal(a.Payload, b.Payload) || a.RuleID != b.RuleID || a.Reason != b.Reason:
		return "payload/rule/reason differ"
	case a.Status != b.Status:
		return fmt.Sprintf("Status %s != %s", a.Status, b.Status)
	case !a.CreatedAt.Equal(b.CreatedAt) || !a.ExpiresAt.Equal(b.ExpiresAt) || !a.DecidedAt.Equal(b.DecidedAt):
		return fmt.Sprintf("times %s/%s/%s != %s/%s/%s", a.CreatedAt, a.ExpiresAt, a.DecidedAt, b.CreatedAt, b.ExpiresAt, b.DecidedAt)
	case a.DecidedBy != b.DecidedBy || a.Comment != b.Comment:
		return fmt.Sprintf("decided by %q (%q) != %q (%q)", a.DecidedBy, a.Comment, b.DecidedBy, b.Comment)
	}
	return ""
}

func testApprovalsCreateDecide(t *testing.T, s storage.Approvals) {
	ctx := testContext(t)
	_, err := s.GetApproval(ctx, "ap-1")
	checkIs(t, "GetApproval(unknown)", err, storage.ErrNotFound)

	ap := approval("ap-1", "acme", "eng", base)
	check(t, "CreateApproval", s.CreateApproval(ctx, ap))
	checkIs(t, "CreateApproval(duplicate)", s.CreateApproval(ctx, approval("ap-1", "acme", "eng", base)), storage.ErrConflict)
	checkIs(t, "CreateApproval(no id)", s.CreateApproval(ctx, approval("", "acme", "eng", base)), storage.ErrInvalid)
	decided := approval("ap-x", "acme", "eng", base)
	decided.Status = storage.ApprovalApproved
	checkIs(t, "CreateApproval(already decided)", s.CreateApproval(ctx, decided), storage.ErrInvalid)

	got, err := s.GetApproval(ctx, "ap-1")
	check(t, "GetApproval", err)
	want := *ap
	want.Status = storage.ApprovalPending
	if d := equalApproval(got, &want); d != "" {
		t.Fatalf("approval did not round-trip (an empty Status is stored as pending): %s", d)
	}

	_, err = s.DecideApproval(ctx, "ap-1", storage.ApprovalPending, "bob", "", base)
	checkIs(t, "DecideApproval(pending)", err, storage.ErrInvalid)
	_, err = s.DecideApproval(ctx, "nope", storage.ApprovalApproved, "bob", "", base)
	checkIs(t, "DecideApproval(unknown)", err, storage.ErrNotFound)

	at := base.Add(90 * time.Second)
	dec, err := s.DecideApproval(ctx, "ap-1", storage.ApprovalApproved, "bob", "looks fine", at)
	check(t, "DecideApproval", err)
	want.Status, want.DecidedBy, want.Comment, want.DecidedAt = storage.ApprovalApproved, "bob", "looks fine", at
	if d := equalApproval(dec, &want); d != "" {
		t.Fatalf("DecideApproval returned %s", d)
	}
	got, err = s.GetApproval(ctx, "ap-1")
	check(t, "GetApproval", err)
	if d := equalApproval(got, &want); d != "" {
		t.Fatalf("decided approval: %s", d)
	}
	_, err = s.DecideApproval(ctx, "ap-1", storage.ApprovalRejected, "mallory", "", at)
	checkIs(t, "DecideApproval(already decided)", err, storage.ErrConflict)
	got, err = s.GetApproval(ctx, "ap-1")
	check(t, "GetApproval", err)
	if got.Status != storage.ApprovalApproved || got.DecidedBy != "bob" {
		t.Fatalf("a second decision changed the approval: %s by %s", got.Status, got.DecidedBy)
	}

	check(t, "CreateApproval", s.CreateApproval(ctx, approval("ap-2", "acme", "eng", base)))
	dec, err = s.DecideApproval(ctx, "ap-2", storage.ApprovalExpired, "system", "timed out", at)
	check(t, "DecideApproval(expired)", err)
	if dec.Status != storage.ApprovalExpired {
		t.Fatalf("status %s, want expired", dec.Status)
	}
}

func approvalIDs(as []*storage.Approval) []string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.ID
	}
	return s
}

func testApprovalsList(t *testing.T, s storage.Approvals) {
	ctx := testContext(t)
	// Created out of order: List sorts by CreatedAt, oldest first.
	for _, p := range []struct {
		id, org, team string
		min           int
	}{{"c", "acme", "eng", 3}, {"a", "acme", "ops", 1}, {"d", "globex", "eng", 4}, {"b", "acme", "eng", 2}, {"e", "acme", "eng", 5}} {
		check(t, "CreateApproval", s.CreateApproval(ctx, approval(p.id, p.org, p.team, base.Add(time.Duration(p.min)*time.Minute))))
	}
	_, err := s.DecideApproval(ctx, "b", storage.ApprovalRejected, "bob", "", base.Add(time.Hour))
	check(t, "DecideApproval", err)
	cases := []struct {
		f    storage.ApprovalFilter
		want []string
	}{
		{storage.ApprovalFilter{}, []string{"a", "b", "c", "d", "e"}},
		{storage.ApprovalFilter{Status: storage.ApprovalPending}, []string{"a", "c", "d", "e"}},
		{storage.ApprovalFilter{Status: storage.ApprovalRejected}, []string{"b"}},
		{storage.ApprovalFilter{Org: "acme"}, []string{"a", "b", "c", "e"}},
		{storage.ApprovalFilter{Org: "acme", Team: "eng", Status: storage.ApprovalPending}, []string{"c", "e"}},
		{storage.ApprovalFilter{Team: "eng"}, []string{"b", "c", "d", "e"}},
		{storage.ApprovalFilter{Limit: 2}, []string{"a", "b"}},
		{storage.ApprovalFilter{Status: storage.ApprovalPending, Limit: 3}, []string{"a", "c", "d"}},
		{storage.ApprovalFilter{Status: storage.ApprovalApproved}, nil},
	}
	for _, c := range cases {
		got, err := s.ListApprovals(ctx, c.f)
		check(t, "ListApprovals", err)
		if !slices.Equal(approvalIDs(got), c.want) {
			t.Fatalf("ListApprovals(%+v) = %v, want %v (oldest first)", c.f, approvalIDs(got), c.want)
		}
	}
}

func testApprovalsConcurrentDecide(t *testing.T, s storage.Approvals) {
	ctx := testContext(t)
	check(t, "CreateApproval", s.CreateApproval(ctx, approval("race", "acme", "eng", base)))
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			st := []storage.ApprovalStatus{storage.ApprovalApproved, storage.ApprovalRejected}[i%2]
			_, err := s.DecideApproval(ctx, "race", st, fmt.Sprintf("op-%d", i), "", base.Add(time.Minute))
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, storage.ErrConflict):
				t.Errorf("DecideApproval: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("16 concurrent decisions: %d succeeded, want exactly 1", wins.Load())
	}
}

// testApprovalsWait waits on w for approvals decided on d (the same instance,
// or another on the same backend).
func testApprovalsWait(t *testing.T, d, w storage.Approvals) {
	ctx := testContext(t)
	id := uniq("wait")
	check(t, "CreateApproval", d.CreateApproval(ctx, approval(id, "acme", "eng", base)))

	// A bounded wait on a pending approval ends with the context.
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	_, err := w.WaitApproval(short, id)
	cancel()
	checkIs(t, "WaitApproval(pending, context ends)", err, context.DeadlineExceeded)

	_, err = w.WaitApproval(ctx, "no-such-approval")
	checkIs(t, "WaitApproval(unknown)", err, storage.ErrNotFound)

	type result struct {
		a   *storage.Approval
		err error
	}
	done := make(chan result, 3)
	for range 3 {
		go func() {
			a, err := w.WaitApproval(ctx, id)
			done <- result{a, err}
		}()
	}
	quiet(t, done, 200*time.Millisecond, "WaitApproval before the decision")
	decidedAt := time.Now()
	_, err = d.DecideApproval(ctx, id, storage.ApprovalRejected, "carol", "no", base.Add(time.Minute))
	check(t, "DecideApproval", err)
	for range 3 {
		r := recv(t, done, 5*time.Second, "WaitApproval after the decision")
		if r.err != nil {
			t.Fatalf("WaitApproval: %v", r.err)
		}
		if r.a.Status != storage.ApprovalRejected || r.a.DecidedBy != "carol" {
			t.Fatalf("WaitApproval returned %s by %q, want rejected by carol", r.a.Status, r.a.DecidedBy)
		}
	}
	if waited := time.Since(decidedAt); waited > 2*time.Second {
		t.Errorf("waiters woke %v after the decision; a decision must wake them promptly", waited)
	}

	// Already decided: returns at once.
	a, err := w.WaitApproval(ctx, id)
	check(t, "WaitApproval(decided)", err)
	if a.Status != storage.ApprovalRejected {
		t.Fatalf("WaitApproval(decided) = %s", a.Status)
	}
}
