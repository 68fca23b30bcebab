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

const agentColumns = `org, team, name, labels, public_key, status, status_reason,
	parent_org, parent_team, parent_name, depth, registered_ns, last_seen_ns, mode`

func scanAgent(row pgx.Row) (*storage.Agent, error) {
	a := &storage.Agent{}
	var (
		status         string
		depth          int32
		reg, seen      int64
		labels         map[string]string
		publicKey      []byte
		org, team, nam string
		mode           string
	)
	err := row.Scan(&org, &team, &nam, &labels, &publicKey, &status, &a.StatusReason,
		&a.Parent.Org, &a.Parent.Team, &a.Parent.Agent, &depth, &reg, &seen, &mode)
	if err != nil {
		return nil, err
	}
	a.Mode = storage.ParseAgentMode(mode)
	a.ID = action.AgentID{Org: org, Team: team, Agent: nam}
	a.Labels, a.PublicKey = labels, publicKey
	a.Status, a.Depth = storage.AgentStatus(status), int(depth)
	a.RegisteredAt, a.LastSeen = fromNanos(reg), fromNanos(seen)
	return a, nil
}

// PutAgent creates or replaces an agent.
func (s *Store) PutAgent(ctx context.Context, a *storage.Agent) error {
	if a == nil || a.ID.Org == "" || a.ID.Team == "" || a.ID.Agent == "" {
		return fmt.Errorf("put agent: need an org, team and agent name: %w", storage.ErrInvalid)
	}
	if err := storage.ValidAgentMode(a.Mode); err != nil {
		return fmt.Errorf("put agent %s: %w", a.ID, err)
	}
	var labels map[string]string
	if len(a.Labels) > 0 {
		labels = a.Labels
	}
	return s.do(ctx, "put agent", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO agents (`+agentColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
			ON CONFLICT (org, team, name) DO UPDATE SET
				labels = EXCLUDED.labels, public_key = EXCLUDED.public_key,
				status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
				parent_org = EXCLUDED.parent_org, parent_team = EXCLUDED.parent_team,
				parent_name = EXCLUDED.parent_name, depth = EXCLUDED.depth,
				registered_ns = EXCLUDED.registered_ns, last_seen_ns = EXCLUDED.last_seen_ns,
				mode = EXCLUDED.mode`,
			a.ID.Org, a.ID.Team, a.ID.Agent, labels, a.PublicKey, string(a.Status), a.StatusReason,
			a.Parent.Org, a.Parent.Team, a.Parent.Agent, int32(a.Depth), nanos(a.RegisteredAt), nanos(a.LastSeen),
			storage.AgentModeName(a.Mode))
		return err
	})
}

// GetAgent returns storage.ErrNotFound for an unknown agent.
func (s *Store) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	var a *storage.Agent
	err := s.do(ctx, "get agent", func(c *pgx.Conn) error {
		var err error
		a, err = scanAgent(c.QueryRow(ctx, `SELECT `+agentColumns+` FROM agents WHERE org = $1 AND team = $2 AND name = $3`,
			id.Org, id.Team, id.Agent))
		return err
	})
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("get agent %s: %w", id, storage.ErrNotFound)
	}
	return a, err
}

// ListAgents returns the agents matching f, sorted by org, team and name.
func (s *Store) ListAgents(ctx context.Context, f storage.AgentFilter) ([]*storage.Agent, error) {
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
	add("org", f.Org)
	add("team", f.Team)
	add("status", string(f.Status))
	q := `SELECT ` + agentColumns + ` FROM agents`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += ` ORDER BY org COLLATE "C", team COLLATE "C", name COLLATE "C"`
	var out []*storage.Agent
	err := s.do(ctx, "list agents", func(c *pgx.Conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			a, err := scanAgent(rows)
			if err != nil {
				return err
			}
			out = append(out, a)
		}
		return rows.Err()
	})
	return out, err
}

// SetAgentStatus changes an agent's status and reason.
func (s *Store) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	return s.updateAgent(ctx, "set agent status", id, `UPDATE agents SET status = $4, status_reason = $5
		WHERE org = $1 AND team = $2 AND name = $3`, string(st), reason)
}

// TouchAgent records a heartbeat.
func (s *Store) TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error {
	return s.updateAgent(ctx, "touch agent", id, `UPDATE agents SET last_seen_ns = $4
		WHERE org = $1 AND team = $2 AND name = $3`, nanos(at))
}

// SetAgentMode sets the enforcement-mode override.
func (s *Store) SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error {
	if err := storage.ValidAgentMode(m); err != nil {
		return fmt.Errorf("set agent mode %s: %w", id, err)
	}
	return s.updateAgent(ctx, "set agent mode", id, `UPDATE agents SET mode = $4
		WHERE org = $1 AND team = $2 AND name = $3`, storage.AgentModeName(m))
}

func (s *Store) updateAgent(ctx context.Context, op string, id action.AgentID, sql string, args ...any) error {
	var n int64
	err := s.do(ctx, op, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, sql, append([]any{id.Org, id.Team, id.Agent}, args...)...)
		n = tag.RowsAffected()
		return err
	})
	if err == nil && n == 0 {
		return fmt.Errorf("%s %s: %w", op, id, storage.ErrNotFound)
	}
	return err
}

// PutNonce stores a single-use nonce until expires; storage.ErrConflict if
// it exists.
func (s *Store) PutNonce(ctx context.Context, nonce string, expires time.Time) error {
	if nonce == "" {
		return fmt.Errorf("put nonce: empty nonce: %w", storage.ErrInvalid)
	}
	return s.do(ctx, "put nonce", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO nonces (nonce, expires_ns) VALUES ($1, $2)`, nonce, nanos(expires))
		return err
	})
}

// ConsumeNonce deletes a nonce that is live at now; storage.ErrNotFound if
// it is unknown, expired or already used. Exactly one of any number of
// concurrent consumers, on any replica, succeeds.
func (s *Store) ConsumeNonce(ctx context.Context, nonce string, now time.Time) error {
	var live bool
	err := s.do(ctx, "consume nonce", func(c *pgx.Conn) error {
		var exp int64
		err := c.QueryRow(ctx, `DELETE FROM nonces WHERE nonce = $1 RETURNING expires_ns`, nonce).Scan(&exp)
		live = err == nil && exp > nanos(now)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err == nil && !live {
		return fmt.Errorf("consume nonce: %w", storage.ErrNotFound)
	}
	return err
}

// RevokeCredential marks tokenID revoked until expires.
func (s *Store) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	if tokenID == "" {
		return fmt.Errorf("revoke credential: empty token id: %w", storage.ErrInvalid)
	}
	return s.do(ctx, "revoke credential", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO revoked_credentials (token_id, expires_ns) VALUES ($1, $2)
			ON CONFLICT (token_id) DO UPDATE SET expires_ns = greatest(revoked_credentials.expires_ns, EXCLUDED.expires_ns)`,
			tokenID, nanos(expires))
		return err
	})
}

// CredentialRevoked reports whether tokenID was revoked. A revocation lasts
// until the credential's own expiry, after which the credential is invalid
// anyway and the row is swept.
func (s *Store) CredentialRevoked(ctx context.Context, tokenID string) (bool, error) {
	var revoked bool
	err := s.do(ctx, "check credential revocation", func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM revoked_credentials
			WHERE token_id = $1 AND (expires_ns = 0 OR expires_ns > $2))`, tokenID, nanos(s.opts.Now())).Scan(&revoked)
	})
	return revoked, err
}
