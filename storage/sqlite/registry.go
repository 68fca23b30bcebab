package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

const agentColumns = `org, team, agent, labels, public_key, status, status_reason,
	parent_org, parent_team, parent_agent, depth, registered_ns, last_seen_ns, mode`

// PutAgent creates or replaces an agent.
func (s *Store) PutAgent(ctx context.Context, a *storage.Agent) error {
	if a.ID.Org == "" || a.ID.Team == "" || a.ID.Agent == "" {
		return fmt.Errorf("put agent %q: id needs org, team and agent: %w", a.ID, storage.ErrInvalid)
	}
	if err := storage.ValidAgentMode(a.Mode); err != nil {
		return fmt.Errorf("put agent %s: %w", a.ID, err)
	}
	labels, err := json.Marshal(a.Labels)
	if err != nil {
		return fmt.Errorf("put agent %s: %w", a.ID, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO agents (`+agentColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			a.ID.Org, a.ID.Team, a.ID.Agent, string(labels), a.PublicKey, string(a.Status), a.StatusReason,
			a.Parent.Org, a.Parent.Team, a.Parent.Agent, a.Depth, storage.UnixNanos(a.RegisteredAt), storage.UnixNanos(a.LastSeen),
			storage.AgentModeName(a.Mode))
		return err
	})
	if err != nil {
		return fmt.Errorf("put agent %s: %w", a.ID, wrapErr(err))
	}
	return nil
}

func scanAgent(row scanner) (*storage.Agent, error) {
	var (
		a              storage.Agent
		labels, status string
		reg, seen      int64
		mode           string
	)
	if err := row.Scan(&a.ID.Org, &a.ID.Team, &a.ID.Agent, &labels, &a.PublicKey, &status, &a.StatusReason,
		&a.Parent.Org, &a.Parent.Team, &a.Parent.Agent, &a.Depth, &reg, &seen, &mode); err != nil {
		return nil, err
	}
	a.Mode = storage.ParseAgentMode(mode)
	if err := json.Unmarshal([]byte(labels), &a.Labels); err != nil {
		return nil, fmt.Errorf("labels of agent %s: %w", a.ID, err)
	}
	a.Status = storage.AgentStatus(status)
	a.RegisteredAt, a.LastSeen = storage.FromUnixNanos(reg), storage.FromUnixNanos(seen)
	return &a, nil
}

// GetAgent returns ErrNotFound for an unknown agent.
func (s *Store) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	a, err := scanAgent(s.reader.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM agents WHERE org = ? AND team = ? AND agent = ?`, id.Org, id.Team, id.Agent))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get agent %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get agent %s: %w", id, wrapErr(err))
	}
	return a, nil
}

// ListAgents returns matching agents sorted by id.
func (s *Store) ListAgents(ctx context.Context, f storage.AgentFilter) ([]*storage.Agent, error) {
	var where []string
	var args []any
	for col, v := range map[string]string{"org": f.Org, "team": f.Team, "status": string(f.Status)} {
		if v != "" {
			where = append(where, col+" = ?")
			args = append(args, v)
		}
	}
	q := `SELECT ` + agentColumns + ` FROM agents`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.reader.QueryContext(ctx, q+" ORDER BY org, team, agent", args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", wrapErr(err))
		}
		out = append(out, a)
	}
	return out, wrapErr(rows.Err())
}

// updateOne runs an UPDATE that must change exactly one row.
func (s *Store) updateOne(ctx context.Context, query string, args ...any) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrNotFound)
		}
		return nil
	})
}

// SetAgentStatus changes status and reason.
func (s *Store) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	err := s.updateOne(ctx, `UPDATE agents SET status = ?, status_reason = ? WHERE org = ? AND team = ? AND agent = ?`,
		string(st), reason, id.Org, id.Team, id.Agent)
	if err != nil {
		return fmt.Errorf("set status of agent %s: %w", id, wrapErr(err))
	}
	return nil
}

// TouchAgent records a heartbeat.
func (s *Store) TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error {
	err := s.updateOne(ctx, `UPDATE agents SET last_seen_ns = ? WHERE org = ? AND team = ? AND agent = ?`,
		storage.UnixNanos(at), id.Org, id.Team, id.Agent)
	if err != nil {
		return fmt.Errorf("touch agent %s: %w", id, wrapErr(err))
	}
	return nil
}

// SetAgentMode sets the enforcement-mode override.
func (s *Store) SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error {
	if err := storage.ValidAgentMode(m); err != nil {
		return fmt.Errorf("set mode of agent %s: %w", id, err)
	}
	err := s.updateOne(ctx, `UPDATE agents SET mode = ? WHERE org = ? AND team = ? AND agent = ?`,
		storage.AgentModeName(m), id.Org, id.Team, id.Agent)
	if err != nil {
		return fmt.Errorf("set mode of agent %s: %w", id, wrapErr(err))
	}
	return nil
}

// PutNonce stores a single-use nonce; ErrConflict if a live one exists.
func (s *Store) PutNonce(ctx context.Context, nonce string, expires time.Time) error {
	if nonce == "" {
		return fmt.Errorf("put nonce: empty nonce: %w", storage.ErrInvalid)
	}
	now := s.opts.Now().UnixNano()
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO nonces (nonce, expires_ns) VALUES (?, ?)
			ON CONFLICT (nonce) DO UPDATE SET expires_ns = excluded.expires_ns WHERE nonces.expires_ns <= ?`,
			nonce, expires.UnixNano(), now)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("put nonce: %w", wrapErr(err))
	}
	return nil
}

// ConsumeNonce deletes a live nonce.
func (s *Store) ConsumeNonce(ctx context.Context, nonce string, now time.Time) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM nonces WHERE nonce = ? AND expires_ns > ?`, nonce, now.UnixNano())
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("consume nonce: %w", wrapErr(err))
	}
	return nil
}

// RevokeCredential marks a token id revoked until expires.
func (s *Store) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	if tokenID == "" {
		return fmt.Errorf("revoke credential: empty token id: %w", storage.ErrInvalid)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO revoked_credentials (token_id, expires_ns) VALUES (?, ?)
			ON CONFLICT (token_id) DO UPDATE SET expires_ns = MAX(expires_ns, excluded.expires_ns)`, tokenID, expires.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("revoke credential: %w", wrapErr(err))
	}
	return nil
}

// CredentialRevoked reports whether a token id is revoked.
func (s *Store) CredentialRevoked(ctx context.Context, tokenID string) (bool, error) {
	var n int
	err := s.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM revoked_credentials WHERE token_id = ? AND expires_ns > ?`,
		tokenID, s.opts.Now().UnixNano()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("check revoked credential: %w", wrapErr(err))
	}
	return n > 0, nil
}
