package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

const approvalColumns = `id, decision_id, agent_org, agent_team, agent_name, kind, payload, rule_id,
	reason, status, created_ns, expires_ns, decided_ns, decided_by, comment`

func scanApproval(row pgx.Row) (*storage.Approval, error) {
	a := &storage.Approval{}
	var (
		kind                      int16
		status                    string
		created, expires, decided int64
		org, team, name           string
	)
	err := row.Scan(&a.ID, &a.DecisionID, &org, &team, &name, &kind, &a.Payload, &a.RuleID,
		&a.Reason, &status, &created, &expires, &decided, &a.DecidedBy, &a.Comment)
	if err != nil {
		return nil, err
	}
	a.Agent = action.AgentID{Org: org, Team: team, Agent: name}
	a.Kind, a.Status = action.Kind(kind), storage.ApprovalStatus(status)
	a.CreatedAt, a.ExpiresAt, a.DecidedAt = fromNanos(created), fromNanos(expires), fromNanos(decided)
	return a, nil
}

// CreateApproval stores a new pending approval; storage.ErrConflict if the
// id exists.
func (s *Store) CreateApproval(ctx context.Context, a *storage.Approval) error {
	if err := storage.ValidateNewApproval(a); err != nil {
		return err
	}
	return s.do(ctx, "create approval", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO approvals (`+approvalColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, 0, '', '')`,
			a.ID, a.DecisionID, a.Agent.Org, a.Agent.Team, a.Agent.Agent, int16(a.Kind), a.Payload, a.RuleID,
			a.Reason, nanos(a.CreatedAt), nanos(a.ExpiresAt))
		return err
	})
}

// DecideApproval sets a final status; storage.ErrConflict if the approval
// was already decided (by any replica), storage.ErrNotFound if unknown.
// Waiters on every replica are woken through storage.TopicApprovals.
func (s *Store) DecideApproval(ctx context.Context, id string, st storage.ApprovalStatus, by, comment string, at time.Time) (*storage.Approval, error) {
	if err := storage.ValidateDecision(id, st); err != nil {
		return nil, err
	}
	var (
		a      *storage.Approval
		exists bool
	)
	err := s.do(ctx, "decide approval", func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue(`UPDATE approvals SET status = $2, decided_by = $3, comment = $4, decided_ns = $5
			WHERE id = $1 AND status = 'pending' RETURNING `+approvalColumns,
			id, string(st), by, comment, nanos(at)).QueryRow(func(row pgx.Row) error {
			var err error
			a, err = scanApproval(row)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return err
		})
		b.Queue(`SELECT EXISTS (SELECT 1 FROM approvals WHERE id = $1)`, id).QueryRow(func(row pgx.Row) error {
			return row.Scan(&exists)
		})
		// Runs after the update in the same implicit transaction, so it
		// is delivered only if the update commits, and only if it decided.
		b.Queue(`SELECT pg_notify($1, $2) FROM approvals WHERE id = $3 AND decided_by = $4 AND decided_ns = $5 AND status = $6`,
			s.channel, encodeMessage(storage.TopicApprovals, []byte(id)), id, by, nanos(at), string(st))
		return c.SendBatch(ctx, b).Close()
	})
	switch {
	case err != nil:
		return nil, err
	case a != nil:
		return a, nil
	case !exists:
		return nil, fmt.Errorf("decide approval %s: %w", id, storage.ErrNotFound)
	}
	return nil, fmt.Errorf("decide approval %s: already decided: %w", id, storage.ErrConflict)
}

// GetApproval returns one approval; storage.ErrNotFound if unknown.
func (s *Store) GetApproval(ctx context.Context, id string) (*storage.Approval, error) {
	var a *storage.Approval
	err := s.do(ctx, "get approval", func(c *pgx.Conn) error {
		var err error
		a, err = scanApproval(c.QueryRow(ctx, `SELECT `+approvalColumns+` FROM approvals WHERE id = $1`, id))
		return err
	})
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("get approval %s: %w", id, storage.ErrNotFound)
	}
	return a, err
}

// ListApprovals returns the approvals matching f, oldest first, at most
// f.PageSize().
func (s *Store) ListApprovals(ctx context.Context, f storage.ApprovalFilter) ([]*storage.Approval, error) {
	var (
		where []string
		args  []any
	)
	add := func(col, v string) {
		if v != "" {
			args = append(args, v)
			where = append(where, col+" = $"+strconv.Itoa(len(args)))
		}
	}
	add("status", string(f.Status))
	add("agent_org", f.Org)
	add("agent_team", f.Team)
	q := `SELECT ` + approvalColumns + ` FROM approvals`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_ns, id COLLATE "C" LIMIT ` + strconv.Itoa(f.PageSize())
	var out []*storage.Approval
	err := s.do(ctx, "list approvals", func(c *pgx.Conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			a, err := scanApproval(rows)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return rows.Err()
	})
	return out, err
}

// approvalPoll is how often WaitApproval re-reads without a notification, a
// backstop for notifications lost while the listener reconnects.
const approvalPoll = 5 * time.Second

// WaitApproval blocks until approval id is decided, by any replica, or ctx
// ends (then it returns ctx's error). A decision wakes it through
// LISTEN/NOTIFY.
func (s *Store) WaitApproval(ctx context.Context, id string) (*storage.Approval, error) {
	a, err := s.GetApproval(ctx, id)
	if err != nil || a.Status != storage.ApprovalPending {
		return a, err
	}
	sub, err := s.lis.subscribe(ctx, "wait approval", storage.TopicApprovals, true)
	if err != nil {
		return nil, err
	}
	defer s.lis.unsubscribe(storage.TopicApprovals, sub)
	poll := time.NewTicker(approvalPoll)
	defer poll.Stop()
	for {
		// Read after subscribing: a decision made before the subscription
		// is seen here, one made after it is notified.
		a, err := s.GetApproval(ctx, id)
		if err != nil || a.Status != storage.ApprovalPending {
			return a, err
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("wait approval %s: %w", id, context.Cause(ctx))
			case <-s.ctx.Done():
				return nil, fmt.Errorf("wait approval %s: postgres: %w", id, storage.ErrClosed)
			case <-poll.C:
				break wait
			case msg, ok := <-sub.ch:
				if !ok {
					return nil, fmt.Errorf("wait approval %s: postgres: %w", id, storage.ErrClosed)
				}
				if msg == nil || string(msg) == id {
					break wait
				}
			}
		}
	}
}
