package budget

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

func TestParseScope(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Scope
	}{
		{"agent/acme/eng/bot", Scope{Per: policy.BudgetPerAgent, Org: "acme", Team: "eng", Agent: "bot"}},
		{"team/acme/eng", Scope{Per: policy.BudgetPerTeam, Org: "acme", Team: "eng"}},
		{"org/acme", Scope{Per: policy.BudgetPerOrg, Org: "acme"}},
		{"agent/acme/eng/mcp%3Abot%2F2", Scope{Per: policy.BudgetPerAgent, Org: "acme", Team: "eng", Agent: "mcp:bot/2"}},
	} {
		got, err := ParseScope(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseScope(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if s := got.String(); s != c.in {
			t.Errorf("String() = %q, want %q", s, c.in)
		}
	}
	for _, c := range []struct{ in, msg string }{
		{"", `parse budget scope "": want agent/<org>/<team>/<agent>, team/<org>/<team> or org/<org>`},
		{"user/x", `want agent/<org>/<team>/<agent>, team/<org>/<team> or org/<org>`},
		{"team/acme", `parse budget scope "team/acme": a team scope is team/<org>/<team>`},
		{"org/", `an org scope is org/<org>`},
		{"org/acme/eng", `an org scope is org/<org>`},
		{"agent/acme/eng", `an agent scope is agent/<org>/<team>/<agent>`},
		{"agent/acme//bot", `part 2 is empty or badly percent-encoded`},
		{"team/acme/%zz", `part 2 is empty or badly percent-encoded`},
	} {
		_, err := ParseScope(c.in)
		if !errors.Is(err, ErrInvalidScope) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseScope(%q) = %v, want ErrInvalidScope saying %q", c.in, err, c.msg)
		}
	}
}

func TestScopeOf(t *testing.T) {
	id := action.AgentID{Org: "a/b", Team: "c", Agent: "d"}
	for per, want := range map[policy.BudgetPer]string{
		policy.BudgetPerAgent: "agent/a%2Fb/c/d",
		"":                    "agent/a%2Fb/c/d",
		policy.BudgetPerTeam:  "team/a%2Fb/c",
		policy.BudgetPerOrg:   "org/a%2Fb",
	} {
		s, err := ScopeOf(id, per)
		if err != nil || s.String() != want {
			t.Errorf("ScopeOf(%v, %q) = %q, %v; want %q", id, per, s, err, want)
		}
	}
	// "a/b" + "c" must not collide with "a" + "b/c".
	x, _ := ScopeOf(action.AgentID{Org: "a/b", Team: "c"}, policy.BudgetPerTeam)
	y, _ := ScopeOf(action.AgentID{Org: "a", Team: "b/c"}, policy.BudgetPerTeam)
	if CounterKey(x, Daily, day) == CounterKey(y, Daily, day) {
		t.Error("escaped ids collide")
	}
	if _, err := ScopeOf(id, "planet"); !errors.Is(err, ErrInvalidScope) {
		t.Errorf("unknown per: %v", err)
	}
	if _, err := ScopeOf(action.AgentID{Team: "eng", Agent: "x"}, policy.BudgetPerOrg); !errors.Is(err, ErrInvalidScope) {
		t.Errorf("missing org: %v", err)
	}
	if _, err := ScopeOf(action.AgentID{Org: "acme", Team: "eng"}, policy.BudgetPerAgent); !errors.Is(err, ErrInvalidScope) {
		t.Errorf("missing agent: %v", err)
	}
}

func TestCounterKey(t *testing.T) {
	team := Scope{Per: policy.BudgetPerTeam, Org: "acme", Team: "eng"}
	start, _ := Daily.Bounds(day, time.UTC)
	if k := CounterKey(team, Daily, start); k != "budget:v1:team:acme/eng:daily:2026-11-25" {
		t.Errorf("key = %q", k)
	}
	kolkata := mustLoc(t, "Asia/Kolkata")
	start, _ = Monthly.Bounds(day, kolkata)
	if k := CounterKey(Scope{Per: policy.BudgetPerOrg, Org: "acme"}, Monthly, start); k != "budget:v1:org:acme:monthly:2026-11:Asia/Kolkata" {
		t.Errorf("key = %q", k)
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"agent/acme/eng/bot", "team/a%2Fb/c", "org/x", "team//", "agent/%", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseScope(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidScope) {
				t.Fatalf("ParseScope(%q) error %v does not wrap ErrInvalidScope", s, err)
			}
			return
		}
		again, err := ParseScope(sc.String())
		if err != nil || again != sc {
			t.Fatalf("ParseScope(%q) = %+v; String %q parses to %+v, %v", s, sc, sc.String(), again, err)
		}
		if _, err := ScopeOf(action.AgentID{Org: sc.Org, Team: sc.Team, Agent: sc.Agent}, sc.Per); err != nil {
			t.Fatalf("ScopeOf(parsed %+v) = %v", sc, err)
		}
	})
}
