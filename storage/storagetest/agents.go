package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// RunAgents runs the agent registry cases.
func RunAgents[R storage.AgentRegistry](t *testing.T, newRegistry func(t *testing.T) R, opts ...Option) {
	c := newConfig(opts)
	t.Run("CRUD", func(t *testing.T) { testAgentsCRUD(t, newRegistry(t)) })
	t.Run("List", func(t *testing.T) { testAgentsList(t, newRegistry(t)) })
	t.Run("Nonces", func(t *testing.T) { testNonces(t, newRegistry(t)) })
	t.Run("Revocation", func(t *testing.T) { testRevocation(t, newRegistry(t)) })
	t.Run("Mode", func(t *testing.T) { testAgentMode(t, newRegistry(t)) })
	t.Run("SharedBackend", func(t *testing.T) {
		a := newRegistry(t)
		b := second(t, c, a)
		testAgentsShared(t, a, b)
	})
}

func agent(org, team, name string) *storage.Agent {
	return &storage.Agent{
		ID:           action.AgentID{Org: org, Team: team, Agent: name},
		Labels:       map[string]string{"env": "prod", "owner": name + "@example.com"},
		PublicKey:    bytes.Repeat([]byte{0xA5}, 32),
		Status:       storage.AgentActive,
		StatusReason: "registered",
		Parent:       action.AgentID{Org: org, Team: team, Agent: "root"},
		Depth:        1,
		RegisteredAt: base,
		LastSeen:     base.Add(time.Minute),
	}
}

func equalAgent(a, b *storage.Agent) string {
	switch {
	case a.ID != b.ID:
		return fmt.Sprintf("ID %s != %s", a.ID, b.ID)
	case !maps.Equal(a.Labels, b.Labels):
		return fmt.Sprintf("Labels %v != %v", a.Labels, b.Labels)
	case !bytes.Equal(a.PublicKey, b.PublicKey):
		return "PublicKey differs"
	case a.Status != b.Status || a.StatusReason != b.StatusReason:
		return fmt.Sprintf("Status %s (%q) != %s (%q)", a.Status, a.StatusReason, b.Status, b.StatusReason)
	case a.Parent != b.Parent || a.Depth != b.Depth:
		return fmt.Sprintf("Parent/Depth %s/%d != %s/%d", a.Parent, a.Depth, b.Parent, b.Depth)
	case a.Mode != b.Mode:
		return fmt.Sprintf("Mode %s != %s", a.Mode, b.Mode)
	case !a.RegisteredAt.Equal(b.RegisteredAt) || !a.LastSeen.Equal(b.LastSeen):
		return fmt.Sprintf("times %s/%s != %s/%s", a.RegisteredAt, a.LastSeen, b.RegisteredAt, b.LastSeen)
	}
	return ""
}

func testAgentsCRUD(t *testing.T, r storage.AgentRegistry) {
	ctx := testContext(t)
	id := action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}
	_, err := r.GetAgent(ctx, id)
	checkIs(t, "GetAgent(unknown)", err, storage.ErrNotFound)

	a := agent("acme", "eng", "coder")
	check(t, "PutAgent", r.PutAgent(ctx, a))
	got, err := r.GetAgent(ctx, id)
	check(t, "GetAgent", err)
	if d := equalAgent(got, a); d != "" {
		t.Fatalf("agent did not round-trip: %s", d)
	}
	// Neither the argument nor the result aliases stored state.
	a.Labels["env"] = "changed"
	got.Labels["owner"] = "changed"
	got.PublicKey[0] = 0
	again, err := r.GetAgent(ctx, id)
	check(t, "GetAgent", err)
	if again.Labels["env"] != "prod" || again.Labels["owner"] != "coder@example.com" || again.PublicKey[0] != 0xA5 {
		t.Fatalf("stored agent changed through a caller's copy: %+v", again)
	}

	// A root agent with no labels or key round-trips too.
	root := &storage.Agent{ID: action.AgentID{Org: "acme", Team: "eng", Agent: "root"}, Status: storage.AgentActive, RegisteredAt: base}
	check(t, "PutAgent(root)", r.PutAgent(ctx, root))
	got, err = r.GetAgent(ctx, root.ID)
	check(t, "GetAgent(root)", err)
	if d := equalAgent(got, root); d != "" {
		t.Fatalf("root agent did not round-trip: %s", d)
	}

	// Put replaces.
	b := agent("acme", "eng", "coder")
	b.Labels = map[string]string{"env": "staging"}
	b.Depth = 2
	check(t, "PutAgent(replace)", r.PutAgent(ctx, b))
	got, err = r.GetAgent(ctx, id)
	check(t, "GetAgent", err)
	if d := equalAgent(got, b); d != "" {
		t.Fatalf("PutAgent did not replace: %s", d)
	}

	check(t, "SetAgentStatus", r.SetAgentStatus(ctx, id, storage.AgentSuspended, "budget exceeded"))
	got, err = r.GetAgent(ctx, id)
	check(t, "GetAgent", err)
	if got.Status != storage.AgentSuspended || got.StatusReason != "budget exceeded" {
		t.Fatalf("after SetAgentStatus: %s (%q), want suspended (budget exceeded)", got.Status, got.StatusReason)
	}
	if !maps.Equal(got.Labels, b.Labels) {
		t.Fatal("SetAgentStatus changed other fields")
	}
	checkIs(t, "SetAgentStatus(unknown)", r.SetAgentStatus(ctx, action.AgentID{Org: "x", Team: "y", Agent: "z"}, storage.AgentKilled, ""), storage.ErrNotFound)

	seen := base.Add(time.Hour + 123*time.Microsecond)
	check(t, "TouchAgent", r.TouchAgent(ctx, id, seen))
	got, err = r.GetAgent(ctx, id)
	check(t, "GetAgent", err)
	if !got.LastSeen.Equal(seen) || got.Status != storage.AgentSuspended {
		t.Fatalf("after TouchAgent: LastSeen %s status %s, want %s and unchanged status", got.LastSeen, got.Status, seen)
	}
	checkIs(t, "TouchAgent(unknown)", r.TouchAgent(ctx, action.AgentID{Org: "x", Team: "y", Agent: "z"}, seen), storage.ErrNotFound)

	checkIs(t, "PutAgent(no id)", r.PutAgent(ctx, &storage.Agent{Status: storage.AgentActive}), storage.ErrInvalid)
}

func agentIDs(as []*storage.Agent) []string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.ID.String()
	}
	return s
}

func testAgentsList(t *testing.T, r storage.AgentRegistry) {
	ctx := testContext(t)
	for _, id := range []string{"globex/ops/b", "acme/eng/b", "acme/ops/a", "acme/eng/a", "globex/eng/c"} {
		p := strings.Split(id, "/")
		check(t, "PutAgent", r.PutAgent(ctx, agent(p[0], p[1], p[2])))
	}
	check(t, "SetAgentStatus", r.SetAgentStatus(ctx, action.AgentID{Org: "acme", Team: "eng", Agent: "b"}, storage.AgentKilled, "kill switch"))
	cases := []struct {
		f    storage.AgentFilter
		want []string
	}{
		{storage.AgentFilter{}, []string{"acme/eng/a", "acme/eng/b", "acme/ops/a", "globex/eng/c", "globex/ops/b"}},
		{storage.AgentFilter{Org: "acme"}, []string{"acme/eng/a", "acme/eng/b", "acme/ops/a"}},
		{storage.AgentFilter{Org: "acme", Team: "eng"}, []string{"acme/eng/a", "acme/eng/b"}},
		{storage.AgentFilter{Team: "eng"}, []string{"acme/eng/a", "acme/eng/b", "globex/eng/c"}},
		{storage.AgentFilter{Status: storage.AgentKilled}, []string{"acme/eng/b"}},
		{storage.AgentFilter{Org: "acme", Status: storage.AgentActive}, []string{"acme/eng/a", "acme/ops/a"}},
		{storage.AgentFilter{Org: "initech"}, nil},
	}
	for _, c := range cases {
		got, err := r.ListAgents(ctx, c.f)
		check(t, "ListAgents", err)
		if !slices.Equal(agentIDs(got), c.want) {
			t.Fatalf("ListAgents(%+v) = %v, want %v (sorted by org, team, agent)", c.f, agentIDs(got), c.want)
		}
	}
}

func testNonces(t *testing.T, r storage.AgentRegistry) {
	ctx := testContext(t)
	now := time.Now().Truncate(time.Microsecond)
	exp := now.Add(time.Minute)
	checkIs(t, "ConsumeNonce(unknown)", r.ConsumeNonce(ctx, "never-issued", now), storage.ErrNotFound)

	check(t, "PutNonce", r.PutNonce(ctx, "n1", exp))
	checkIs(t, "PutNonce(duplicate)", r.PutNonce(ctx, "n1", exp), storage.ErrConflict)
	check(t, "ConsumeNonce", r.ConsumeNonce(ctx, "n1", now))
	checkIs(t, "ConsumeNonce(used)", r.ConsumeNonce(ctx, "n1", now), storage.ErrNotFound)

	check(t, "PutNonce", r.PutNonce(ctx, "n2", exp))
	checkIs(t, "ConsumeNonce(expired)", r.ConsumeNonce(ctx, "n2", exp.Add(time.Second)), storage.ErrNotFound)
	checkIs(t, "ConsumeNonce(at expiry)", r.ConsumeNonce(ctx, "n2", exp), storage.ErrNotFound)

	checkIs(t, "PutNonce(empty)", r.PutNonce(ctx, "", exp), storage.ErrInvalid)

	// Single use under contention.
	check(t, "PutNonce", r.PutNonce(ctx, "n3", exp))
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			err := r.ConsumeNonce(ctx, "n3", now)
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, storage.ErrNotFound):
				t.Errorf("ConsumeNonce: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("a nonce consumed concurrently succeeded %d times, want exactly 1", wins.Load())
	}
}

func testRevocation(t *testing.T, r storage.AgentRegistry) {
	ctx := testContext(t)
	exp := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	revoked, err := r.CredentialRevoked(ctx, "tok-1")
	check(t, "CredentialRevoked", err)
	if revoked {
		t.Fatal("CredentialRevoked(never revoked) = true")
	}
	check(t, "RevokeCredential", r.RevokeCredential(ctx, "tok-1", exp))
	check(t, "RevokeCredential(again)", r.RevokeCredential(ctx, "tok-1", exp))
	for tok, want := range map[string]bool{"tok-1": true, "tok-2": false} {
		revoked, err := r.CredentialRevoked(ctx, tok)
		check(t, "CredentialRevoked", err)
		if revoked != want {
			t.Fatalf("CredentialRevoked(%s) = %v, want %v", tok, revoked, want)
		}
	}
	checkIs(t, "RevokeCredential(empty)", r.RevokeCredential(ctx, "", exp), storage.ErrInvalid)
}

func testAgentsShared(t *testing.T, a, b storage.AgentRegistry) {
	ctx := testContext(t)
	ag := agent("acme", "eng", "shared")
	check(t, "PutAgent", a.PutAgent(ctx, ag))
	check(t, "SetAgentStatus on the second instance", b.SetAgentStatus(ctx, ag.ID, storage.AgentSuspended, "by replica b"))
	got, err := a.GetAgent(ctx, ag.ID)
	check(t, "GetAgent", err)
	if got.Status != storage.AgentSuspended {
		t.Fatalf("first instance sees status %s, want suspended", got.Status)
	}
	exp := time.Now().Add(time.Minute)
	check(t, "PutNonce", a.PutNonce(ctx, "shared-nonce", exp))
	check(t, "ConsumeNonce on the second instance", b.ConsumeNonce(ctx, "shared-nonce", time.Now()))
	checkIs(t, "ConsumeNonce(used, first instance)", a.ConsumeNonce(ctx, "shared-nonce", time.Now()), storage.ErrNotFound)
	check(t, "RevokeCredential", a.RevokeCredential(ctx, "shared-tok", exp))
	revoked, err := b.CredentialRevoked(ctx, "shared-tok")
	check(t, "CredentialRevoked on the second instance", err)
	if !revoked {
		t.Fatal("revocation on one instance not seen by the other")
	}
}

func testAgentMode(t *testing.T, r storage.AgentRegistry) {
	ctx := testContext(t)
	a := agent("acme", "eng", "moded")
	check(t, "PutAgent", r.PutAgent(ctx, a))
	got, err := r.GetAgent(ctx, a.ID)
	check(t, "GetAgent", err)
	if got.Mode != action.ModeUnspecified {
		t.Fatalf("new agent has mode override %s, want none", got.Mode)
	}
	for _, m := range []action.Mode{action.ModeObserve, action.ModeDisabled, action.ModeEnforce, action.ModeUnspecified} {
		check(t, "SetAgentMode("+m.String()+")", r.SetAgentMode(ctx, a.ID, m))
		got, err := r.GetAgent(ctx, a.ID)
		check(t, "GetAgent", err)
		if got.Mode != m || got.Status != a.Status || !maps.Equal(got.Labels, a.Labels) {
			t.Fatalf("after SetAgentMode(%s): mode %s status %s labels %v; want the mode set and nothing else changed", m, got.Mode, got.Status, got.Labels)
		}
	}
	// PutAgent stores the mode too, and SetAgentStatus leaves it alone.
	a.Mode = action.ModeObserve
	check(t, "PutAgent(observe)", r.PutAgent(ctx, a))
	check(t, "SetAgentStatus", r.SetAgentStatus(ctx, a.ID, storage.AgentSuspended, "x"))
	got, err = r.GetAgent(ctx, a.ID)
	check(t, "GetAgent", err)
	if d := equalAgent(got, &storage.Agent{ID: a.ID, Labels: a.Labels, PublicKey: a.PublicKey, Status: storage.AgentSuspended,
		StatusReason: "x", Parent: a.Parent, Depth: a.Depth, RegisteredAt: a.RegisteredAt, LastSeen: a.LastSeen, Mode: action.ModeObserve}); d != "" {
		t.Fatalf("mode after PutAgent and SetAgentStatus: %s", d)
	}
	checkIs(t, "SetAgentMode(unknown agent)", r.SetAgentMode(ctx, action.AgentID{Org: "x", Team: "y", Agent: "z"}, action.ModeObserve), storage.ErrNotFound)
	checkIs(t, "SetAgentMode(bad mode)", r.SetAgentMode(ctx, a.ID, action.Mode(9)), storage.ErrInvalid)
}
