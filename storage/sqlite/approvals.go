package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

const approvalColumns = `id, decision_id, org, team, agent, kind, payload, rule_id, reason, status,
	created_ns, expires_ns, decided_ns, decided_by, comment`

// CreateApproval stores a pending approval; ErrConflict if the id exists.
func (s *Store) CreateApproval(ctx context.Context, a *storage.Approval) error {
	if err := storage.ValidateNewApproval(a); err != nil {
		return err
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO approvals (`+approvalColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '', '')
			ON CONFLICT (id) DO NOTHING`,
			a.ID, a.DecisionID, a.Agent.Org, a.Agent.Team, a.Agent.Agent, int64(a.Kind), a.Payload, a.RuleID, a.Reason,
			string(storage.ApprovalPending), storage.UnixNanos(a.CreatedAt), storage.UnixNanos(a.ExpiresAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create approval %s: %w", a.ID, wrapErr(err))
	}
	return nil
}

func scanApproval(row scanner) (*storage.Approval, error) {
	var (
		a                          storage.Approval
		kind, created, exp, decded int64
		status                     string
	)
	if err := row.Scan(&a.ID, &a.DecisionID, &a.Agent.Org, &a.Agent.Team, &a.Agent.Agent, &kind, &a.Payload, &a.RuleID,
		&a.Reason, &status, &created, &exp, &decded, &a.DecidedBy, &a.Comment); err != nil {
		return nil, err
	}
	a.Kind, a.Status = action.Kind(kind), storage.ApprovalStatus(status)
	a.CreatedAt, a.ExpiresAt, a.DecidedAt = storage.FromUnixNanos(created), storage.FromUnixNanos(exp), storage.FromUnixNanos(decded)
	return &a, nil
}

// DecideApproval sets a final status once and wakes every waiter on this file.
func (s *Store) DecideApproval(ctx context.Context, id string, st storage.ApprovalStatus, by, comment string, at time.Time) (*storage.Approval, error) {
	if err := storage.ValidateDecision(id, st); err != nil {
		return nil, err
	}
	var out *storage.Approval
	err := s.write(ctx, func(tx *sql.Tx) error {
		cur, err := scanApproval(tx.QueryRowContext(ctx, `SELECT `+approvalColumns+` FROM approvals WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return storage.ErrNotFound
		}
		if err != nil {
			return err
		}
		if cur.Status != storage.ApprovalPending {
			return fmt.Errorf("already %s: %w", cur.Status, storage.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE approvals SET status = ?, decided_ns = ?, decided_by = ?, comment = ? WHERE id = ?`,
			string(st), storage.UnixNanos(at), by, comment, id); err != nil {
			return err
		}
		cur.Status, cur.DecidedAt, cur.DecidedBy, cur.Comment = st, at, by, comment
		out = cur
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decide approval %s: %w", id, wrapErr(err))
	}
	_ = s.hub.notifier.Publish(context.WithoutCancel(ctx), storage.TopicApprovals, []byte(id))
	return out, nil
}

// GetApproval returns one approval.
func (s *Store) GetApproval(ctx context.Context, id string) (*storage.Approval, error) {
	a, err := scanApproval(s.reader.QueryRowContext(ctx, `SELECT `+approvalColumns+` FROM approvals WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get approval %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get approval %s: %w", id, wrapErr(err))
	}
	return a, nil
}

// ListApprovals returns matching approvals oldest first.
func (s *Store) ListApprovals(ctx context.Context, f storage.ApprovalFilter) ([]*storage.Approval, error) {
	var where []string
	var args []any
	for _, c := range []struct{ col, v string }{{"status", string(f.Status)}, {"org", f.Org}, {"team", f.Team}} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	q := `SELECT ` + approvalColumns + ` FROM approvals`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.reader.QueryContext(ctx, q+" ORDER BY created_ns, id LIMIT ?", append(args, f.PageSize())...)
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.Approval
	for rows.Next() {
		a, err := scanApproval(rows)
		if err != nil {
			return nil, fmt.Errorf("list approvals: %w", wrapErr(err))
		}
		out = append(out, a)
	}
	return out, wrapErr(rows.Err())
}

// WaitApproval blocks until the approval is decided or ctx ends. A decision
// through any Store on this file in this process wakes it at once; one made
// by another process is noticed within ApprovalPoll.
func (s *Store) WaitApproval(ctx context.Context, id string) (*storage.Approval, error) {
	return storage.WaitForDecision(ctx, s, s.hub.notifier, id, s.opts.ApprovalPoll)
}
