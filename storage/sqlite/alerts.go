package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

var (
	_ storage.Alerts     = (*Store)(nil)
	_ storage.CostLedger = (*Store)(nil)
)

const alertColumns = `id, time_ns, kind, severity, org, team, agent, summary, details, source, silence_id`

func scanAlert(sc interface{ Scan(...any) error }) (*storage.Alert, error) {
	a := &storage.Alert{}
	var t int64
	var sev, details string
	if err := sc.Scan(&a.ID, &t, &a.Kind, &sev, &a.Agent.Org, &a.Agent.Team, &a.Agent.Agent, &a.Summary, &details, &a.Source, &a.SilenceID); err != nil {
		return nil, err
	}
	a.Time, a.Severity, a.Details = storage.FromUnixNanos(t), storage.AlertSeverity(sev), []byte(details)
	return a, nil
}

func alertDetails(a *storage.Alert) string {
	if len(a.Details) == 0 {
		return "{}"
	}
	return string(a.Details)
}

// InsertAlert stores a unless its ID exists.
func (s *Store) InsertAlert(ctx context.Context, a *storage.Alert) (bool, error) {
	if err := storage.ValidateAlert(a); err != nil {
		return false, fmt.Errorf("insert alert: %w", err)
	}
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO alerts (`+alertColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING`,
			a.ID, storage.UnixNanos(a.Time), a.Kind, string(a.Severity), a.Agent.Org, a.Agent.Team, a.Agent.Agent,
			a.Summary, alertDetails(a), a.Source, a.SilenceID)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("insert alert %s: %w", a.ID, wrapErr(err))
	}
	return n == 1, nil
}

// GetAlert returns one alert.
func (s *Store) GetAlert(ctx context.Context, id string) (*storage.Alert, error) {
	a, err := scanAlert(s.reader.QueryRowContext(ctx, `SELECT `+alertColumns+` FROM alerts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get alert %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get alert %s: %w", id, wrapErr(err))
	}
	return a, nil
}

// QueryAlerts returns one page of matching alerts, newest first.
func (s *Store) QueryAlerts(ctx context.Context, q storage.AlertQuery) (storage.AlertPage, error) {
	cur, ok, err := storage.ParseAlertCursor(q.Cursor)
	if err != nil {
		return storage.AlertPage{}, fmt.Errorf("query alerts: %w", err)
	}
	var where []string
	var args []any
	add := func(cond string, v ...any) { where = append(where, cond); args = append(args, v...) }
	if q.Kind != "" {
		add("kind = ?", q.Kind)
	}
	if len(q.Severities) > 0 {
		ph := make([]string, len(q.Severities))
		for i, sev := range q.Severities {
			ph[i] = "?"
			args = append(args, string(sev))
		}
		where = append(where, "severity IN ("+strings.Join(ph, ", ")+")")
	}
	for _, f := range []struct{ col, v string }{{"org", q.Org}, {"team", q.Team}, {"agent", q.Agent}} {
		if f.v != "" {
			add(f.col+" = ?", f.v)
		}
	}
	if !q.Since.IsZero() {
		add("time_ns >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("time_ns < ?", q.Until.UnixNano())
	}
	if ok {
		add("(time_ns < ? OR (time_ns = ? AND id < ?))", cur.TimeNanos, cur.TimeNanos, cur.ID)
	}
	query := `SELECT ` + alertColumns + ` FROM alerts`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY time_ns DESC, id DESC LIMIT ?`
	args = append(args, q.PageSize()+1)
	rows, err := s.reader.QueryContext(ctx, query, args...)
	if err != nil {
		return storage.AlertPage{}, fmt.Errorf("query alerts: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.Alert
	for rows.Next() {
		a, err := scanAlert(rows)
		if err != nil {
			return storage.AlertPage{}, fmt.Errorf("query alerts: %w", wrapErr(err))
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return storage.AlertPage{}, fmt.Errorf("query alerts: %w", wrapErr(err))
	}
	return q.NextPage(out), nil
}

const silenceColumns = `id, kind, severity, agent_prefix, starts_ns, ends_ns, comment, created_by, created_ns`

func scanSilence(sc interface{ Scan(...any) error }) (*storage.Silence, error) {
	si := &storage.Silence{}
	var sev string
	var starts, ends, created int64
	if err := sc.Scan(&si.ID, &si.Kind, &sev, &si.AgentPrefix, &starts, &ends, &si.Comment, &si.CreatedBy, &created); err != nil {
		return nil, err
	}
	si.Severity = storage.AlertSeverity(sev)
	si.StartsAt, si.EndsAt, si.CreatedAt = storage.FromUnixNanos(starts), storage.FromUnixNanos(ends), storage.FromUnixNanos(created)
	return si, nil
}

// PutSilence stores a new silence.
func (s *Store) PutSilence(ctx context.Context, si *storage.Silence) error {
	if si == nil || si.ID == "" {
		return fmt.Errorf("put silence: a silence needs an id: %w", storage.ErrInvalid)
	}
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO alert_silences (`+silenceColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING`,
			si.ID, si.Kind, string(si.Severity), si.AgentPrefix, storage.UnixNanos(si.StartsAt), storage.UnixNanos(si.EndsAt),
			si.Comment, si.CreatedBy, storage.UnixNanos(si.CreatedAt))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return fmt.Errorf("put silence %s: %w", si.ID, wrapErr(err))
	}
	if n == 0 {
		return fmt.Errorf("put silence %s: %w", si.ID, storage.ErrConflict)
	}
	return nil
}

// ListSilences returns silences newest first.
func (s *Store) ListSilences(ctx context.Context, activeAt time.Time) ([]*storage.Silence, error) {
	query := `SELECT ` + silenceColumns + ` FROM alert_silences`
	var args []any
	if !activeAt.IsZero() {
		query += ` WHERE starts_ns <= ? AND ends_ns > ?`
		args = append(args, activeAt.UnixNano(), activeAt.UnixNano())
	}
	rows, err := s.reader.QueryContext(ctx, query+` ORDER BY created_ns DESC, id DESC`, args...)
	if err != nil {
		return nil, fmt.Errorf("list silences: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.Silence
	for rows.Next() {
		si, err := scanSilence(rows)
		if err != nil {
			return nil, fmt.Errorf("list silences: %w", wrapErr(err))
		}
		out = append(out, si)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list silences: %w", wrapErr(err))
	}
	return out, nil
}

// ExpireSilence ends a silence at the given instant.
func (s *Store) ExpireSilence(ctx context.Context, id string, at time.Time) (*storage.Silence, error) {
	var si *storage.Silence
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE alert_silences SET ends_ns = ? WHERE id = ? AND ends_ns > ?`, at.UnixNano(), id, at.UnixNano()); err != nil {
			return err
		}
		var err error
		si, err = scanSilence(tx.QueryRowContext(ctx, `SELECT `+silenceColumns+` FROM alert_silences WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return storage.ErrNotFound
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("expire silence %s: %w", id, wrapErr(err))
	}
	return si, nil
}

// TrimAlerts deletes old alerts and ended silences.
func (s *Store) TrimAlerts(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM alerts WHERE time_ns < ?`, before.UnixNano())
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM alert_silences WHERE ends_ns < ?`, before.UnixNano())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("trim alerts: %w", wrapErr(err))
	}
	return n, nil
}

// RecordCost adds e to its daily row in one upsert.
func (s *Store) RecordCost(ctx context.Context, e storage.CostEntry) error {
	if err := storage.ValidateCost(e); err != nil {
		return fmt.Errorf("record cost: %w", err)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO cost_daily
			(day, org, team, agent, model, micro_usd, prompt_tokens, completion_tokens, requests)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (day, org, team, agent, model) DO UPDATE SET
				micro_usd = micro_usd + excluded.micro_usd,
				prompt_tokens = prompt_tokens + excluded.prompt_tokens,
				completion_tokens = completion_tokens + excluded.completion_tokens,
				requests = requests + excluded.requests`,
			e.Day, e.Agent.Org, e.Agent.Team, e.Agent.Agent, e.Model, e.MicroUSD, e.PromptTokens, e.CompletionTokens, e.Requests)
		return err
	})
	if err != nil {
		return fmt.Errorf("record cost: %w", wrapErr(err))
	}
	return nil
}

// QueryCosts returns the matching daily rows.
func (s *Store) QueryCosts(ctx context.Context, q storage.CostQuery) ([]storage.CostEntry, error) {
	var where []string
	var args []any
	for _, f := range []struct{ cond, v string }{
		{"org = ?", q.Org}, {"team = ?", q.Team}, {"agent = ?", q.Agent}, {"model = ?", q.Model},
		{"day >= ?", q.FromDay}, {"day <= ?", q.ToDay},
	} {
		if f.v != "" {
			where = append(where, f.cond)
			args = append(args, f.v)
		}
	}
	query := `SELECT day, org, team, agent, model, micro_usd, prompt_tokens, completion_tokens, requests FROM cost_daily`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := q.CostRowLimit()
	rows, err := s.reader.QueryContext(ctx, query+` ORDER BY day, org, team, agent, model LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return nil, fmt.Errorf("query costs: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []storage.CostEntry
	for rows.Next() {
		var e storage.CostEntry
		if err := rows.Scan(&e.Day, &e.Agent.Org, &e.Agent.Team, &e.Agent.Agent, &e.Model, &e.MicroUSD, &e.PromptTokens, &e.CompletionTokens, &e.Requests); err != nil {
			return nil, fmt.Errorf("query costs: %w", wrapErr(err))
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query costs: %w", wrapErr(err))
	}
	if len(out) > limit {
		return nil, fmt.Errorf("query costs: more than %d daily rows match: narrow the days or filters: %w", limit, storage.ErrInvalid)
	}
	return out, nil
}
