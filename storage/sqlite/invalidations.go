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

// AppendInvalidation stores ev with the next sequence number. SQLite has one
// writer, so sequence numbers become visible in order.
func (s *Store) AppendInvalidation(ctx context.Context, ev *storage.InvalidationEvent) (int64, error) {
	if ev == nil || ev.Type == "" {
		return 0, fmt.Errorf("append invalidation: event needs a type: %w", storage.ErrInvalid)
	}
	var key any
	if ev.Key != "" {
		key = ev.Key
	}
	var seq int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) + 1 FROM invalidations`).Scan(&seq); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO invalidations
			(seq, type, org, team, agent, policy_version, approval_id, reason, time_ns, key)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			seq, string(ev.Type), ev.Agent.Org, ev.Agent.Team, ev.Agent.Agent, ev.PolicyVersion, ev.ApprovalID,
			ev.Reason, storage.UnixNanos(ev.Time), key)
		if err != nil && strings.Contains(err.Error(), "UNIQUE") {
			return errors.Join(err, storage.ErrConflict)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("append invalidation: %w", wrapErr(err))
	}
	ev.Seq = seq
	return seq, nil
}

// InvalidationsSince returns events after the given sequence number.
func (s *Store) InvalidationsSince(ctx context.Context, after int64, limit int) ([]*storage.InvalidationEvent, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT seq, type, org, team, agent, policy_version, approval_id, reason, time_ns, COALESCE(key, '')
		FROM invalidations WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read invalidations: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.InvalidationEvent
	for rows.Next() {
		ev := &storage.InvalidationEvent{}
		var typ string
		var t int64
		if err := rows.Scan(&ev.Seq, &typ, &ev.Agent.Org, &ev.Agent.Team, &ev.Agent.Agent, &ev.PolicyVersion,
			&ev.ApprovalID, &ev.Reason, &t, &ev.Key); err != nil {
			return nil, fmt.Errorf("read invalidations: %w", wrapErr(err))
		}
		ev.Type, ev.Time = storage.InvalidationType(typ), storage.FromUnixNanos(t)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read invalidations: %w", wrapErr(err))
	}
	return out, nil
}

// TrimInvalidations deletes events older than before, keeping the newest.
func (s *Store) TrimInvalidations(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM invalidations WHERE time_ns < ?
			AND seq < (SELECT MAX(seq) FROM invalidations)`, storage.UnixNanos(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("trim invalidations: %w", wrapErr(err))
	}
	return n, nil
}
