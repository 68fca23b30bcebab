package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

var (
	_ storage.Alerts     = (*Store)(nil)
	_ storage.CostLedger = (*Store)(nil)
)

const alertColumns = `id, time_ns, kind, severity, org, team, agent, summary, details, source, silence_id`

// params collects query arguments and names their placeholders.
type params []any

func (p *params) add(v any) string {
	*p = append(*p, v)
	return "$" + strconv.Itoa(len(*p))
}

func scanAlert(sc pgx.Row) (*storage.Alert, error) {
	a := &storage.Alert{}
	var t int64
	var sev, details string
	if err := sc.Scan(&a.ID, &t, &a.Kind, &sev, &a.Agent.Org, &a.Agent.Team, &a.Agent.Agent, &a.Summary, &details, &a.Source, &a.SilenceID); err != nil {
		return nil, err
	}
	a.Time, a.Severity, a.Details = fromNanos(t), storage.AlertSeverity(sev), []byte(details)
	return a, nil
}

// InsertAlert stores a unless its ID exists; with several replicas exactly
// one insert reports true.
func (s *Store) InsertAlert(ctx context.Context, a *storage.Alert) (bool, error) {
	if err := storage.ValidateAlert(a); err != nil {
		return false, fmt.Errorf("insert alert: %w", err)
	}
	details := string(a.Details)
	if details == "" {
		details = "{}"
	}
	var n int64
	err := s.do(ctx, "insert alert", func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `INSERT INTO alerts (`+alertColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
			ON CONFLICT (id) DO NOTHING`,
			a.ID, nanos(a.Time), a.Kind, string(a.Severity), a.Agent.Org, a.Agent.Team, a.Agent.Agent,
			a.Summary, details, a.Source, a.SilenceID)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// GetAlert returns one alert.
func (s *Store) GetAlert(ctx context.Context, id string) (*storage.Alert, error) {
	var a *storage.Alert
	err := s.do(ctx, "get alert", func(c *pgx.Conn) error {
		var err error
		a, err = scanAlert(c.QueryRow(ctx, `SELECT `+alertColumns+` FROM alerts WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, storage.ErrNotFound) || errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get alert %s: %w", id, storage.ErrNotFound)
	}
	return a, err
}

// QueryAlerts returns one page of matching alerts, newest first. Ids
// compare bytewise (COLLATE "C"), as the cursor does.
func (s *Store) QueryAlerts(ctx context.Context, q storage.AlertQuery) (storage.AlertPage, error) {
	cur, ok, err := storage.ParseAlertCursor(q.Cursor)
	if err != nil {
		return storage.AlertPage{}, fmt.Errorf("query alerts: %w", err)
	}
	var where []string
	var p params
	if q.Kind != "" {
		where = append(where, "kind = "+p.add(q.Kind))
	}
	if len(q.Severities) > 0 {
		ph := make([]string, len(q.Severities))
		for i, sev := range q.Severities {
			ph[i] = p.add(string(sev))
		}
		where = append(where, "severity IN ("+strings.Join(ph, ", ")+")")
	}
	for _, f := range []struct{ col, v string }{{"org", q.Org}, {"team", q.Team}, {"agent", q.Agent}} {
		if f.v != "" {
			where = append(where, f.col+" = "+p.add(f.v))
		}
	}
	if !q.Since.IsZero() {
		where = append(where, "time_ns >= "+p.add(q.Since.UnixNano()))
	}
	if !q.Until.IsZero() {
		where = append(where, "time_ns < "+p.add(q.Until.UnixNano()))
	}
	if ok {
		t := p.add(cur.TimeNanos)
		where = append(where, "(time_ns < "+t+" OR (time_ns = "+t+` AND id COLLATE "C" < `+p.add(cur.ID)+"))")
	}
	query := `SELECT ` + alertColumns + ` FROM alerts`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY time_ns DESC, id COLLATE "C" DESC LIMIT ` + p.add(q.PageSize()+1)
	var out []*storage.Alert
	err = s.do(ctx, "query alerts", func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, query, p...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*storage.Alert, error) { return scanAlert(r) })
		return err
	})
	if err != nil {
		return storage.AlertPage{}, err
	}
	return q.NextPage(out), nil
}

const silenceColumns = `id, kind, severity, agent_prefix, starts_ns, ends_ns, comment, created_by, created_ns`

func scanSilence(sc pgx.Row) (*storage.Silence, error) {
	si := &storage.Silence{}
	var sev string
	var starts, ends, created int64
	if err := sc.Scan(&si.ID, &si.Kind, &sev, &si.AgentPrefix, &starts, &ends, &si.Comment, &si.CreatedBy, &created); err != nil {
		return nil, err
	}
	si.Severity = storage.AlertSeverity(sev)
	si.StartsAt, si.EndsAt, si.CreatedAt = fromNanos(starts), fromNanos(ends), fromNanos(created)
	return si, nil
}

// PutSilence stores a new silence.
func (s *Store) PutSilence(ctx context.Context, si *storage.Silence) error {
	if si == nil || si.ID == "" {
		return fmt.Errorf("put silence: a silence needs an id: %w", storage.ErrInvalid)
	}
	var n int64
	err := s.do(ctx, "put silence", func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `INSERT INTO alert_silences (`+silenceColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (id) DO NOTHING`,
			si.ID, si.Kind, string(si.Severity), si.AgentPrefix, nanos(si.StartsAt), nanos(si.EndsAt),
			si.Comment, si.CreatedBy, nanos(si.CreatedAt))
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("put silence %s: %w", si.ID, storage.ErrConflict)
	}
	return nil
}

// ListSilences returns silences newest first.
func (s *Store) ListSilences(ctx context.Context, activeAt time.Time) ([]*storage.Silence, error) {
	query := `SELECT ` + silenceColumns + ` FROM alert_silences`
	var p params
	if !activeAt.IsZero() {
		t := p.add(activeAt.UnixNano())
		query += ` WHERE starts_ns <= ` + t + ` AND ends_ns > ` + t
	}
	query += ` ORDER BY created_ns DESC, id COLLATE "C" DESC`
	var out []*storage.Silence
	err := s.do(ctx, "list silences", func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, query, p...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*storage.Silence, error) { return scanSilence(r) })
		return err
	})
	return out, err
}

// ExpireSilence ends a silence at the given instant.
func (s *Store) ExpireSilence(ctx context.Context, id string, at time.Time) (*storage.Silence, error) {
	var si *storage.Silence
	err := s.tx(ctx, "expire silence", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE alert_silences SET ends_ns = $1 WHERE id = $2 AND ends_ns > $1`, at.UnixNano(), id); err != nil {
			return err
		}
		var err error
		si, err = scanSilence(tx.QueryRow(ctx, `SELECT `+silenceColumns+` FROM alert_silences WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, storage.ErrNotFound) || errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("expire silence %s: %w", id, storage.ErrNotFound)
	}
	return si, err
}

// TrimAlerts deletes old alerts and ended silences.
func (s *Store) TrimAlerts(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, "trim alerts", func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM alerts WHERE time_ns < $1`, before.UnixNano())
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		_, err = tx.Exec(ctx, `DELETE FROM alert_silences WHERE ends_ns < $1`, before.UnixNano())
		return err
	})
	return n, err
}

// RecordCost adds e to its daily row in one atomic upsert, so concurrent
// replicas never lose an addition.
func (s *Store) RecordCost(ctx context.Context, e storage.CostEntry) error {
	if err := storage.ValidateCost(e); err != nil {
		return fmt.Errorf("record cost: %w", err)
	}
	return s.do(ctx, "record cost", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO cost_daily AS d
			(day, org, team, agent, model, micro_usd, prompt_tokens, completion_tokens, requests)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (day, org, team, agent, model) DO UPDATE SET
				micro_usd = d.micro_usd + excluded.micro_usd,
				prompt_tokens = d.prompt_tokens + excluded.prompt_tokens,
				completion_tokens = d.completion_tokens + excluded.completion_tokens,
				requests = d.requests + excluded.requests`,
			e.Day, e.Agent.Org, e.Agent.Team, e.Agent.Agent, e.Model, e.MicroUSD, e.PromptTokens, e.CompletionTokens, e.Requests)
		return err
	})
}

// QueryCosts returns the matching daily rows.
func (s *Store) QueryCosts(ctx context.Context, q storage.CostQuery) ([]storage.CostEntry, error) {
	var where []string
	var p params
	for _, f := range []struct{ cond, v string }{
		{"org = ", q.Org}, {"team = ", q.Team}, {"agent = ", q.Agent}, {"model = ", q.Model},
		{"day >= ", q.FromDay}, {"day <= ", q.ToDay},
	} {
		if f.v != "" {
			where = append(where, f.cond+p.add(f.v))
		}
	}
	query := `SELECT day, org, team, agent, model, micro_usd, prompt_tokens, completion_tokens, requests FROM cost_daily`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := q.CostRowLimit()
	query += ` ORDER BY day COLLATE "C", org COLLATE "C", team COLLATE "C", agent COLLATE "C", model COLLATE "C" LIMIT ` + p.add(limit+1)
	var out []storage.CostEntry
	err := s.do(ctx, "query costs", func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, query, p...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (e storage.CostEntry, err error) {
			err = r.Scan(&e.Day, &e.Agent.Org, &e.Agent.Team, &e.Agent.Agent, &e.Model, &e.MicroUSD, &e.PromptTokens, &e.CompletionTokens, &e.Requests)
			return e, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out) > limit {
		return nil, fmt.Errorf("query costs: more than %d daily rows match: narrow the days or filters: %w", limit, storage.ErrInvalid)
	}
	return out, nil
}
