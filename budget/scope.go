package budget

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

// ErrInvalidScope means a scope string or an agent id cannot name a budget
// accounting unit. Errors wrapping it say what is missing.
var ErrInvalidScope = errors.New("invalid budget scope")

// ErrInvalidUsage means token counts were negative.
var ErrInvalidUsage = errors.New("invalid token counts")

// Scope is a budget accounting unit: one agent, one team or one org. Per
// says which; the parts below that level are empty.
type Scope struct {
	Per   policy.BudgetPer
	Org   string
	Team  string
	Agent string
}

// ScopeOf returns the unit whose spending a budget with the given Per counts
// for agent ("" counts as policy.BudgetPerAgent). The parts it needs must be
// set: a team budget needs the agent's org and team.
func ScopeOf(agent action.AgentID, per policy.BudgetPer) (Scope, error) {
	s := Scope{Per: per, Org: agent.Org}
	switch per {
	case policy.BudgetPerOrg:
	case policy.BudgetPerTeam:
		s.Team = agent.Team
	case policy.BudgetPerAgent, "":
		s.Per, s.Team, s.Agent = policy.BudgetPerAgent, agent.Team, agent.Agent
	default:
		return Scope{}, fmt.Errorf("budget per %q: want agent, team or org: %w", per, ErrInvalidScope)
	}
	if err := s.check(); err != nil {
		return Scope{}, fmt.Errorf("agent %s: %w", agent, err)
	}
	return s, nil
}

func (s Scope) check() error {
	var missing string
	switch {
	case s.Org == "":
		missing = "org"
	case s.Per != policy.BudgetPerOrg && s.Team == "":
		missing = "team"
	case s.Per == policy.BudgetPerAgent && s.Agent == "":
		missing = "agent"
	default:
		return nil
	}
	return fmt.Errorf("a %s budget needs the %s id, which is empty: %w", s.Per, missing, ErrInvalidScope)
}

// ParseScope parses "agent/<org>/<team>/<agent>", "team/<org>/<team>" or
// "org/<org>", the form Scope.String returns. Parts containing '/', ':' or
// '%' are percent-encoded.
func ParseScope(s string) (Scope, error) {
	kind, rest, _ := strings.Cut(s, "/")
	var want int
	switch policy.BudgetPer(kind) {
	case policy.BudgetPerAgent:
		want = 3
	case policy.BudgetPerTeam:
		want = 2
	case policy.BudgetPerOrg:
		want = 1
	default:
		return Scope{}, fmt.Errorf("parse budget scope %q: want agent/<org>/<team>/<agent>, team/<org>/<team> or org/<org>: %w", s, ErrInvalidScope)
	}
	parts := strings.Split(rest, "/")
	if rest == "" || len(parts) != want {
		return Scope{}, fmt.Errorf("parse budget scope %q: %w", s, scopeShape(kind))
	}
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil || u == "" {
			return Scope{}, fmt.Errorf("parse budget scope %q: part %d is empty or badly percent-encoded: %w", s, i+1, scopeShape(kind))
		}
		parts[i] = u
	}
	sc := Scope{Per: policy.BudgetPer(kind), Org: parts[0]}
	if want > 1 {
		sc.Team = parts[1]
	}
	if want > 2 {
		sc.Agent = parts[2]
	}
	return sc, nil
}

func scopeShape(kind string) error {
	switch kind {
	case "agent":
		return fmt.Errorf("an agent scope is agent/<org>/<team>/<agent>: %w", ErrInvalidScope)
	case "team":
		return fmt.Errorf("a team scope is team/<org>/<team>: %w", ErrInvalidScope)
	}
	return fmt.Errorf("an org scope is org/<org>: %w", ErrInvalidScope)
}

// String renders the scope as ParseScope reads it, e.g. "team/acme/eng".
func (s Scope) String() string {
	b := make([]byte, 0, len(s.Per)+len(s.Org)+len(s.Team)+len(s.Agent)+3)
	b = append(b, s.Per...)
	b = append(b, '/')
	return string(s.appendSubject(b))
}

// appendSubject appends the escaped org[/team[/agent]] part of keys and
// scope strings.
func (s Scope) appendSubject(b []byte) []byte {
	b = appendEscaped(b, s.Org)
	if s.Per == policy.BudgetPerOrg {
		return b
	}
	b = append(b, '/')
	b = appendEscaped(b, s.Team)
	if s.Per == policy.BudgetPerTeam {
		return b
	}
	b = append(b, '/')
	return appendEscaped(b, s.Agent)
}

// covers reports whether a budget counted per `per` constrains s: an agent
// is constrained by its agent, team and org budgets, a team by its team and
// org budgets, an org by its org budgets.
func (s Scope) covers(per policy.BudgetPer) bool {
	return perRank(per) <= perRank(s.Per)
}

func perRank(p policy.BudgetPer) int {
	switch p {
	case policy.BudgetPerOrg:
		return 1
	case policy.BudgetPerTeam:
		return 2
	}
	return 3
}

// appendEscaped appends s with '%', '/' and ':' percent-encoded, so ids
// that contain them cannot collide with other ids in keys and scope
// strings. Ordinary ids are appended unchanged.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', '/', ':':
			const hex = "0123456789ABCDEF"
			b = append(b, '%', hex[c>>4], hex[c&15])
		default:
			b = append(b, c)
		}
	}
	return b
}

// Window is a budget period.
type Window string

// Budget windows.
const (
	// Daily runs from midnight to midnight in the budget's time zone.
	Daily Window = "daily"
	// Monthly runs from midnight on the first of the month to midnight on
	// the first of the next month in the budget's time zone.
	Monthly Window = "monthly"
)

// Bounds returns the window containing t in loc (UTC when nil): its start
// and its end (the next window's start). Days are calendar days, so a day
// with a daylight-saving change lasts 23 or 25 hours.
func (w Window) Bounds(t time.Time, loc *time.Location) (start, end time.Time) {
	if loc == nil {
		loc = time.UTC
	}
	y, m, d := t.In(loc).Date()
	if w == Monthly {
		return time.Date(y, m, 1, 0, 0, 0, 0, loc), time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	}
	return time.Date(y, m, d, 0, 0, 0, 0, loc), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
}

// appendLabel appends the window's name in keys: the local date
// (2026-11-25) or month (2026-11) of start.
func (w Window) appendLabel(b []byte, start time.Time) []byte {
	y, m, d := start.Date()
	b = appendDigits(b, y, 4)
	b = append(b, '-')
	b = appendDigits(b, int(m), 2)
	if w == Monthly {
		return b
	}
	b = append(b, '-')
	return appendDigits(b, d, 2)
}

// appendDigits appends v zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	v = max(v, 0)
	var buf [20]byte
	i := len(buf)
	for v >= 10 || width > 1 {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		width--
	}
	i--
	buf[i] = byte('0' + v)
	return append(b, buf[i:]...)
}

// CounterKey returns the counter a budget of scope uses for the window
// starting at start (as returned by Window.Bounds), for example
// "budget:v1:team:acme/eng:daily:2026-11-25". Windows in a zone other than
// UTC append the zone name ("...:daily:2026-11-25:Europe/Berlin"), so two
// budgets with different zones never share a counter.
func CounterKey(scope Scope, w Window, start time.Time) string {
	b := make([]byte, 0, 96)
	b = append(b, "budget:v1:"...)
	b = append(b, scope.Per...)
	b = append(b, ':')
	b = scope.appendSubject(b)
	b = append(b, ':')
	b = append(b, w...)
	b = append(b, ':')
	b = w.appendLabel(b, start)
	if loc := start.Location(); loc != time.UTC {
		b = append(b, ':')
		b = append(b, loc.String()...)
	}
	return string(b)
}
