package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// SavePolicyVersion stores a new, inactive version; ErrConflict if it exists.
func (s *Store) SavePolicyVersion(ctx context.Context, v *storage.PolicyVersion) error {
	if v.Version == "" {
		return fmt.Errorf("save policy version: empty version: %w", storage.ErrInvalid)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO policy_versions (version, author, message, created_ns, activated_ns, active)
			VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (version) DO NOTHING`, v.Version, v.Author, v.Message, storage.UnixNanos(v.CreatedAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrConflict)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		for i, d := range v.Documents {
			if _, err := tx.ExecContext(ctx, `INSERT INTO policy_documents (version_id, position, name, source) VALUES (?, ?, ?, ?)`,
				id, i, d.Name, d.Source); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save policy version %s: %w", v.Version, wrapErr(err))
	}
	return nil
}

// ActivatePolicyVersion makes version the only active one.
func (s *Store) ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		var id int64
		if err := tx.QueryRowContext(ctx, `SELECT id FROM policy_versions WHERE version = ?`, version).Scan(&id); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return storage.ErrNotFound
			}
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE policy_versions SET active = 0 WHERE active = 1`); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE policy_versions SET active = 1, activated_ns = ? WHERE id = ?`, storage.UnixNanos(at), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("activate policy version %s: %w", version, wrapErr(err))
	}
	return nil
}

const policyColumns = `id, version, author, message, created_ns, activated_ns, active`

// readVersions runs a policy_versions query and attaches the documents, in
// one read transaction so a version and its documents agree.
func (s *Store) readVersions(ctx context.Context, query string, args ...any) ([]*storage.PolicyVersion, error) {
	tx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	var out []*storage.PolicyVersion
	var ids []int64
	for rows.Next() {
		var (
			v                  storage.PolicyVersion
			id, created, activ int64
			active             bool
		)
		if err := rows.Scan(&id, &v.Version, &v.Author, &v.Message, &created, &activ, &active); err != nil {
			rows.Close()
			return nil, err
		}
		v.CreatedAt, v.ActivatedAt, v.Active = storage.FromUnixNanos(created), storage.FromUnixNanos(activ), active
		out = append(out, &v)
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, v := range out {
		docs, err := tx.QueryContext(ctx, `SELECT name, source FROM policy_documents WHERE version_id = ? ORDER BY position`, ids[i])
		if err != nil {
			return nil, err
		}
		v.Documents = []storage.PolicyDocument{}
		for docs.Next() {
			var d storage.PolicyDocument
			if err := docs.Scan(&d.Name, &d.Source); err != nil {
				docs.Close()
				return nil, err
			}
			v.Documents = append(v.Documents, d)
		}
		docs.Close()
		if err := docs.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *Store) oneVersion(ctx context.Context, what, query string, args ...any) (*storage.PolicyVersion, error) {
	vs, err := s.readVersions(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, wrapErr(err))
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("%s: %w", what, storage.ErrNotFound)
	}
	return vs[0], nil
}

// ActivePolicyVersion returns ErrNotFound when none is active.
func (s *Store) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	return s.oneVersion(ctx, "active policy version", `SELECT `+policyColumns+` FROM policy_versions WHERE active = 1`)
}

// GetPolicyVersion returns one version.
func (s *Store) GetPolicyVersion(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	return s.oneVersion(ctx, "get policy version "+version, `SELECT `+policyColumns+` FROM policy_versions WHERE version = ?`, version)
}

// PolicyHistory lists versions newest first; limit <= 0 means all.
func (s *Store) PolicyHistory(ctx context.Context, limit int) ([]*storage.PolicyVersion, error) {
	if limit <= 0 {
		limit = -1
	}
	vs, err := s.readVersions(ctx, `SELECT `+policyColumns+` FROM policy_versions ORDER BY created_ns DESC, id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("policy history: %w", wrapErr(err))
	}
	return vs, nil
}
