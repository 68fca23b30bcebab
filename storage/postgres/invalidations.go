package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

// invalidationLockKey is the transaction-scoped advisory lock that
// serialises appends, so sequence numbers are gapless and commit in order:
// a reader that has seen seq n never misses an n-1 committed later.
const invalidationLockKey = 0x6161_696e_7661_6c00 // "aainval\0"

// AppendInvalidation stores ev with the next sequence number.
func (s *Store) AppendInvalidation(ctx context.Context, ev *storage.InvalidationEvent) (int64, error) {
	if ev == nil || ev.Type == "" {
		return 0, fmt.Errorf("append invalidation: event needs a type: %w", storage.ErrInvalid)
	}
	var key any
	if ev.Key != "" {
		key = ev.Key
	}
	var seq int64
	err := s.tx(ctx, "append invalidation", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(invalidationLockKey)); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO invalidations
			(seq, type, org, team, agent, policy_version, approval_id, reason, time_ns, key)
			SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM invalidations
			RETURNING seq`,
			string(ev.Type), ev.Agent.Org, ev.Agent.Team, ev.Agent.Agent, ev.PolicyVersion, ev.ApprovalID,
			ev.Reason, nanos(ev.Time), key).Scan(&seq)
	})
	if err != nil {
		return 0, err
	}
	ev.Seq = seq
	return seq, nil
}

// InvalidationsSince returns events after the given sequence number.
func (s *Store) InvalidationsSince(ctx context.Context, after int64, limit int) ([]*storage.InvalidationEvent, error) {
	if limit <= 0 {
		limit = 1000
	}
	var out []*storage.InvalidationEvent
	err := s.do(ctx, "read invalidations", func(c *pgx.Conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, `SELECT seq, type, org, team, agent, policy_version, approval_id, reason, time_ns, COALESCE(key, '')
			FROM invalidations WHERE seq > $1 ORDER BY seq LIMIT $2`, after, limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			ev := &storage.InvalidationEvent{}
			var typ string
			var t int64
			if err := rows.Scan(&ev.Seq, &typ, &ev.Agent.Org, &ev.Agent.Team, &ev.Agent.Agent, &ev.PolicyVersion,
				&ev.ApprovalID, &ev.Reason, &t, &ev.Key); err != nil {
				return err
			}
			ev.Type, ev.Time = storage.InvalidationType(typ), fromNanos(t)
			out = append(out, ev)
		}
		return rows.Err()
	})
	return out, err
}

// TrimInvalidations deletes events older than before, keeping the newest.
func (s *Store) TrimInvalidations(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.tx(ctx, "trim invalidations", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(invalidationLockKey)); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM invalidations WHERE time_ns < $1
			AND seq < (SELECT MAX(seq) FROM invalidations)`, nanos(before))
		n = tag.RowsAffected()
		return err
	})
	return n, err
}
