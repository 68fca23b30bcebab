package storagetest

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// RunPolicies runs the policy version cases.
func RunPolicies[P storage.PolicyStore](t *testing.T, newStore func(t *testing.T) P, opts ...Option) {
	c := newConfig(opts)
	t.Run("Versions", func(t *testing.T) { testPolicyVersions(t, newStore(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newStore(t)
		b := second(t, c, a)
		testPoliciesShared(t, a, b)
	})
}

func policyVersion(v string, created time.Time) *storage.PolicyVersion {
	return &storage.PolicyVersion{
		Version: v,
		Documents: []storage.PolicyDocument{
			{Name: "global.yaml", Source: []byte("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: global}\n# " + v + "\n")},
			{Name: "teams/eng.yaml", Source: []byte("apiVersion: agent-assembly/v1\nkind: Policy\n")},
			{Name: "empty.yaml", Source: nil},
		},
		Author:    "alice",
		Message:   "change " + v,
		CreatedAt: created,
	}
}

func equalPolicy(a, b *storage.PolicyVersion) string {
	if a.Version != b.Version || a.Author != b.Author || a.Message != b.Message || !a.CreatedAt.Equal(b.CreatedAt) {
		return fmt.Sprintf("header %s/%s/%q/%s != %s/%s/%q/%s", a.Version, a.Author, a.Message, a.CreatedAt, b.Version, b.Author, b.Message, b.CreatedAt)
	}
	if len(a.Documents) != len(b.Documents) {
		return fmt.Sprintf("%d documents != %d", len(a.Documents), len(b.Documents))
	}
	for i := range a.Documents {
		if a.Documents[i].Name != b.Documents[i].Name || !bytes.Equal(a.Documents[i].Source, b.Documents[i].Source) {
			return fmt.Sprintf("document %d %q != %q (order must be kept)", i, a.Documents[i].Name, b.Documents[i].Name)
		}
	}
	return ""
}

func versions(vs []*storage.PolicyVersion) []string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = v.Version
		if v.Active {
			s[i] += "*"
		}
	}
	return s
}

func testPolicyVersions(t *testing.T, s storage.PolicyStore) {
	ctx := testContext(t)
	_, err := s.ActivePolicyVersion(ctx)
	checkIs(t, "ActivePolicyVersion(none)", err, storage.ErrNotFound)
	_, err = s.GetPolicyVersion(ctx, "v1")
	checkIs(t, "GetPolicyVersion(unknown)", err, storage.ErrNotFound)
	hist, err := s.PolicyHistory(ctx, 0)
	check(t, "PolicyHistory(empty)", err)
	if len(hist) != 0 {
		t.Fatalf("PolicyHistory of an empty store = %v", versions(hist))
	}

	v1 := policyVersion("v1", base)
	v1.Active = true // ignored: saving never activates
	v1.ActivatedAt = base
	check(t, "SavePolicyVersion", s.SavePolicyVersion(ctx, v1))
	checkIs(t, "SavePolicyVersion(duplicate)", s.SavePolicyVersion(ctx, policyVersion("v1", base.Add(time.Hour))), storage.ErrConflict)
	checkIs(t, "SavePolicyVersion(no version)", s.SavePolicyVersion(ctx, policyVersion("", base)), storage.ErrInvalid)
	got, err := s.GetPolicyVersion(ctx, "v1")
	check(t, "GetPolicyVersion", err)
	if d := equalPolicy(got, v1); d != "" {
		t.Fatalf("policy version did not round-trip: %s", d)
	}
	if got.Active || !got.ActivatedAt.IsZero() {
		t.Fatalf("a saved version is active (%v, %s) before ActivatePolicyVersion", got.Active, got.ActivatedAt)
	}
	_, err = s.ActivePolicyVersion(ctx)
	checkIs(t, "ActivePolicyVersion(saved, not activated)", err, storage.ErrNotFound)

	at1 := base.Add(time.Minute)
	check(t, "ActivatePolicyVersion", s.ActivatePolicyVersion(ctx, "v1", at1))
	act, err := s.ActivePolicyVersion(ctx)
	check(t, "ActivePolicyVersion", err)
	if act.Version != "v1" || !act.Active || !act.ActivatedAt.Equal(at1) {
		t.Fatalf("active = %s active=%v at %s; want v1 active at %s", act.Version, act.Active, act.ActivatedAt, at1)
	}
	if d := equalPolicy(act, v1); d != "" {
		t.Fatalf("active version did not round-trip: %s", d)
	}

	check(t, "SavePolicyVersion", s.SavePolicyVersion(ctx, policyVersion("v2", base.Add(2*time.Minute))))
	check(t, "SavePolicyVersion", s.SavePolicyVersion(ctx, policyVersion("v3", base.Add(3*time.Minute))))
	at3 := base.Add(4 * time.Minute)
	check(t, "ActivatePolicyVersion", s.ActivatePolicyVersion(ctx, "v3", at3))
	hist, err = s.PolicyHistory(ctx, 0)
	check(t, "PolicyHistory", err)
	if want := []string{"v3*", "v2", "v1"}; !slices.Equal(versions(hist), want) {
		t.Fatalf("PolicyHistory = %v, want %v (newest first, * = active)", versions(hist), want)
	}
	if !hist[2].ActivatedAt.Equal(at1) || !hist[1].ActivatedAt.IsZero() {
		t.Fatalf("PolicyHistory ActivatedAt: v1 %s (want %s), v2 %s (want zero)", hist[2].ActivatedAt, at1, hist[1].ActivatedAt)
	}
	hist, err = s.PolicyHistory(ctx, 2)
	check(t, "PolicyHistory(2)", err)
	if want := []string{"v3*", "v2"}; !slices.Equal(versions(hist), want) {
		t.Fatalf("PolicyHistory(2) = %v, want %v", versions(hist), want)
	}

	// Rollback: activating an older version.
	at4 := base.Add(5 * time.Minute)
	check(t, "ActivatePolicyVersion(rollback)", s.ActivatePolicyVersion(ctx, "v1", at4))
	act, err = s.ActivePolicyVersion(ctx)
	check(t, "ActivePolicyVersion", err)
	if act.Version != "v1" || !act.ActivatedAt.Equal(at4) {
		t.Fatalf("after rollback active = %s at %s, want v1 at %s", act.Version, act.ActivatedAt, at4)
	}
	got, err = s.GetPolicyVersion(ctx, "v3")
	check(t, "GetPolicyVersion", err)
	if got.Active {
		t.Fatal("v3 still active after rolling back to v1")
	}
	hist, err = s.PolicyHistory(ctx, 0)
	check(t, "PolicyHistory", err)
	if want := []string{"v3", "v2", "v1*"}; !slices.Equal(versions(hist), want) {
		t.Fatalf("PolicyHistory after rollback = %v, want %v", versions(hist), want)
	}

	checkIs(t, "ActivatePolicyVersion(unknown)", s.ActivatePolicyVersion(ctx, "v9", at4), storage.ErrNotFound)
	act, err = s.ActivePolicyVersion(ctx)
	check(t, "ActivePolicyVersion", err)
	if act.Version != "v1" {
		t.Fatalf("activating an unknown version changed the active one to %s", act.Version)
	}

	// Returned versions belong to the caller.
	act.Documents[0].Source[0] = 'X'
	act.Documents[0].Name = "changed"
	got, err = s.GetPolicyVersion(ctx, "v1")
	check(t, "GetPolicyVersion", err)
	if d := equalPolicy(got, v1); d != "" {
		t.Fatalf("changing a returned version changed the store: %s", d)
	}
}

func testPoliciesShared(t *testing.T, a, b storage.PolicyStore) {
	ctx := testContext(t)
	check(t, "SavePolicyVersion", a.SavePolicyVersion(ctx, policyVersion("v1", base)))
	checkIs(t, "SavePolicyVersion(duplicate on second instance)", b.SavePolicyVersion(ctx, policyVersion("v1", base)), storage.ErrConflict)
	check(t, "ActivatePolicyVersion on the second instance", b.ActivatePolicyVersion(ctx, "v1", base.Add(time.Minute)))
	act, err := a.ActivePolicyVersion(ctx)
	check(t, "ActivePolicyVersion", err)
	if act.Version != "v1" {
		t.Fatalf("first instance sees active version %s, want v1", act.Version)
	}
}
