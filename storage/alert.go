package storage

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// TopicAlerts carries the id of an alert just stored by any replica, so
// every replica's watchers read it at once.
const TopicAlerts = "alerts"

// AlertSeverity is how urgently an operator must act on an alert.
type AlertSeverity string

// Alert severities, least urgent first.
const (
	SeverityInfo     AlertSeverity = "info"
	SeverityWarning  AlertSeverity = "warning"
	SeverityCritical AlertSeverity = "critical"
)

// Rank orders severities: info 1, warning 2, critical 3, anything else 0.
func (s AlertSeverity) Rank() int {
	switch s {
	case SeverityInfo:
		return 1
	case SeverityWarning:
		return 2
	case SeverityCritical:
		return 3
	}
	return 0
}

// AtLeast returns the severities of rank min.Rank() or higher, most urgent
// last; for an empty min it returns nil (any severity).
func AtLeast(min AlertSeverity) []AlertSeverity {
	if min == "" {
		return nil
	}
	var out []AlertSeverity
	for _, s := range []AlertSeverity{SeverityInfo, SeverityWarning, SeverityCritical} {
		if s.Rank() >= min.Rank() {
			out = append(out, s)
		}
	}
	return out
}

// Alert is one stored event an operator must act on.
type Alert struct {
	// ID is derived from the source event, so every replica that raises
	// the same event stores one alert.
	ID   string
	Time time.Time
	// Kind says what happened (budget_threshold, policy_violation, …).
	Kind     string
	Severity AlertSeverity
	// Agent is the agent concerned (zero when none).
	Agent   action.AgentID
	Summary string
	// Details is a JSON object (nil stores "{}").
	Details []byte
	// Source names the event the alert was raised for ("decision:<id>").
	Source string
	// SilenceID is the silence that matched when the alert was stored
	// (empty when none); a silenced alert is not delivered to webhooks.
	SilenceID string
}

// Silenced reports whether a silence matched the alert.
func (a *Alert) Silenced() bool { return a.SilenceID != "" }

// AlertQuery filters and pages alerts, newest first. Zero values mean "any".
type AlertQuery struct {
	Kind string
	// Severities, when not empty, are the severities to return.
	Severities       []AlertSeverity
	Org, Team, Agent string
	// Since is inclusive, Until exclusive.
	Since, Until time.Time
	// Cursor is the opaque NextCursor of a previous page.
	Cursor string
	// Limit caps the page size (default 100, maximum 1000).
	Limit int
}

// PageSize is Limit with the audit log's default and maximum applied.
func (q AlertQuery) PageSize() int {
	return AuditQuery{Limit: q.Limit}.PageSize()
}

// Matches reports whether a passes every filter of q except the cursor.
func (q AlertQuery) Matches(a *Alert) bool {
	switch {
	case q.Kind != "" && a.Kind != q.Kind,
		q.Org != "" && a.Agent.Org != q.Org,
		q.Team != "" && a.Agent.Team != q.Team,
		q.Agent != "" && a.Agent.Agent != q.Agent,
		!q.Since.IsZero() && a.Time.Before(q.Since),
		!q.Until.IsZero() && !a.Time.Before(q.Until):
		return false
	}
	if len(q.Severities) == 0 {
		return true
	}
	for _, s := range q.Severities {
		if a.Severity == s {
			return true
		}
	}
	return false
}

// AlertPosition is where an alert sits in the order alerts are paged by:
// Time, then ID, newest first.
type AlertPosition struct {
	TimeNanos int64
	ID        string
}

// Before reports whether an alert at p comes after o on a newest-first page,
// that is, whether p sorts strictly before o in ascending order.
func (p AlertPosition) Before(o AlertPosition) bool {
	if p.TimeNanos != o.TimeNanos {
		return p.TimeNanos < o.TimeNanos
	}
	return p.ID < o.ID
}

// Cursor encodes p as an opaque AlertPage.NextCursor.
func (p AlertPosition) Cursor() string {
	b := binary.AppendVarint([]byte{cursorVersion}, p.TimeNanos)
	return base64.RawURLEncoding.EncodeToString(append(b, p.ID...))
}

// ParseAlertCursor decodes an AlertQuery.Cursor. An empty cursor returns
// ok=false; a malformed one an error wrapping ErrInvalid.
func ParseAlertCursor(s string) (p AlertPosition, ok bool, err error) {
	if s == "" {
		return AlertPosition{}, false, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2 || b[0] != cursorVersion {
		return AlertPosition{}, false, fmt.Errorf("parse alert cursor %q: not a cursor from a previous page: %w", s, ErrInvalid)
	}
	t, n := binary.Varint(b[1:])
	if n <= 0 || len(b) == 1+n {
		return AlertPosition{}, false, fmt.Errorf("parse alert cursor %q: not a cursor from a previous page: %w", s, ErrInvalid)
	}
	return AlertPosition{TimeNanos: t, ID: string(b[1+n:])}, true, nil
}

// NextPage builds the page for alerts fetched newest first with a limit of
// PageSize()+1.
func (q AlertQuery) NextPage(as []*Alert) AlertPage {
	n := q.PageSize()
	if len(as) <= n {
		return AlertPage{Alerts: as}
	}
	as = as[:n]
	last := as[n-1]
	return AlertPage{Alerts: as, NextCursor: AlertPosition{TimeNanos: last.Time.UnixNano(), ID: last.ID}.Cursor()}
}

// AlertPage is one page of alerts.
type AlertPage struct {
	Alerts []*Alert
	// NextCursor is empty on the last page.
	NextCursor string
}

// ValidateAlert checks what every driver requires of an alert to store.
func ValidateAlert(a *Alert) error {
	switch {
	case a == nil || a.ID == "":
		return fmt.Errorf("alert needs an id: %w", ErrInvalid)
	case a.Kind == "":
		return fmt.Errorf("alert %s needs a kind: %w", a.ID, ErrInvalid)
	case a.Severity.Rank() == 0:
		return fmt.Errorf("alert %s: severity %q is not info, warning or critical: %w", a.ID, a.Severity, ErrInvalid)
	case a.Time.IsZero():
		return fmt.Errorf("alert %s needs a time: %w", a.ID, ErrInvalid)
	}
	return nil
}

// Silence stops webhook delivery of matching alerts between StartsAt and
// EndsAt. Empty matchers match everything.
type Silence struct {
	ID   string
	Kind string
	// Severity matches exactly.
	Severity AlertSeverity
	// AgentPrefix matches alerts whose agent id (org/team/agent) starts with it.
	AgentPrefix string
	StartsAt    time.Time
	EndsAt      time.Time
	Comment     string
	CreatedBy   string
	CreatedAt   time.Time
}

// ActiveAt reports whether the silence is in force at t.
func (s *Silence) ActiveAt(t time.Time) bool {
	return !t.Before(s.StartsAt) && t.Before(s.EndsAt)
}

// Matches reports whether the silence's matchers select a (ignoring time).
func (s *Silence) Matches(a *Alert) bool {
	if s.Kind != "" && s.Kind != a.Kind {
		return false
	}
	if s.Severity != "" && s.Severity != a.Severity {
		return false
	}
	return s.AgentPrefix == "" || strings.HasPrefix(a.Agent.String(), s.AgentPrefix)
}

// Alerts keeps the alert feed and its silences, shared by replicas.
type Alerts interface {
	// InsertAlert stores a unless an alert with its ID exists, and reports
	// whether it stored it: exactly one of several replicas inserting the
	// same alert gets true (and delivers it).
	InsertAlert(ctx context.Context, a *Alert) (bool, error)
	// GetAlert returns ErrNotFound for an unknown id.
	GetAlert(ctx context.Context, id string) (*Alert, error)
	// QueryAlerts returns one page of alerts matching q, newest first.
	QueryAlerts(ctx context.Context, q AlertQuery) (AlertPage, error)
	// PutSilence stores a new silence; ErrConflict if the ID exists.
	PutSilence(ctx context.Context, s *Silence) error
	// ListSilences returns silences newest first (CreatedAt, then ID);
	// when activeAt is not zero only those active at that instant.
	ListSilences(ctx context.Context, activeAt time.Time) ([]*Silence, error)
	// ExpireSilence ends a silence at the given instant (if it ends later)
	// and returns it; ErrNotFound for an unknown id.
	ExpireSilence(ctx context.Context, id string, at time.Time) (*Silence, error)
	// TrimAlerts deletes alerts older than before and silences that ended
	// before it, and returns how many alerts it deleted.
	TrimAlerts(ctx context.Context, before time.Time) (int64, error)
}

// CostEntry is the cost of LLM usage of one agent and model on one UTC day.
// RecordCost adds entries; QueryCosts returns the daily sums.
type CostEntry struct {
	Agent action.AgentID
	Model string
	// Day is the UTC day, YYYY-MM-DD.
	Day              string
	MicroUSD         int64
	PromptTokens     int64
	CompletionTokens int64
	Requests         int64
}

// CostQuery selects rows of the cost ledger. Zero values mean "any".
type CostQuery struct {
	Org, Team, Agent, Model string
	// FromDay and ToDay are inclusive YYYY-MM-DD days.
	FromDay, ToDay string
	// Limit caps the number of rows; drivers return ErrInvalid beyond it
	// instead of a partial answer (0 means MaxCostRows).
	Limit int
}

// MaxCostRows is the most daily rows one QueryCosts returns.
const MaxCostRows = 100000

// CostLedger keeps daily cost rollups per agent and model. Additions are
// atomic increments, so replicas sharing a backend never lose one.
type CostLedger interface {
	// RecordCost adds e's amounts to its (agent, model, day) row.
	RecordCost(ctx context.Context, e CostEntry) error
	// QueryCosts returns the matching rows sorted by day, org, team, agent,
	// model.
	QueryCosts(ctx context.Context, q CostQuery) ([]CostEntry, error)
}

// ValidateCost checks what every driver requires of a cost entry.
func ValidateCost(e CostEntry) error {
	if _, err := time.Parse(time.DateOnly, e.Day); err != nil {
		return fmt.Errorf("cost entry day %q is not YYYY-MM-DD: %w", e.Day, ErrInvalid)
	}
	if e.Agent.Agent == "" {
		return fmt.Errorf("cost entry needs an agent: %w", ErrInvalid)
	}
	if e.MicroUSD < 0 || e.PromptTokens < 0 || e.CompletionTokens < 0 || e.Requests < 0 {
		return fmt.Errorf("cost entry for %s: amounts must not be negative: %w", e.Agent, ErrInvalid)
	}
	return nil
}

// CostRowLimit is q.Limit with its default applied.
func (q CostQuery) CostRowLimit() int {
	if q.Limit <= 0 || q.Limit > MaxCostRows {
		return MaxCostRows
	}
	return q.Limit
}

// Matches reports whether e passes q's filters.
func (q CostQuery) Matches(e CostEntry) bool {
	switch {
	case q.Org != "" && e.Agent.Org != q.Org,
		q.Team != "" && e.Agent.Team != q.Team,
		q.Agent != "" && e.Agent.Agent != q.Agent,
		q.Model != "" && e.Model != q.Model,
		q.FromDay != "" && e.Day < q.FromDay,
		q.ToDay != "" && e.Day > q.ToDay:
		return false
	}
	return true
}

// CompareCostEntries orders cost rows by day, org, team, agent, model.
func CompareCostEntries(a, b CostEntry) int {
	return cmp.Or(strings.Compare(a.Day, b.Day), strings.Compare(a.Agent.Org, b.Agent.Org),
		strings.Compare(a.Agent.Team, b.Agent.Team), strings.Compare(a.Agent.Agent, b.Agent.Agent),
		strings.Compare(a.Model, b.Model))
}
