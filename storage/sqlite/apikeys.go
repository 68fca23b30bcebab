package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

const apiKeyColumns = `id, name, role, hash, created_ns, created_by, rotated_ns, last_used_ns, revoked_ns`

func scanAPIKey(r scanner) (*storage.APIKey, error) {
	var (
		k                                 storage.APIKey
		created, rotated, used, revokedNs int64
	)
	if err := r.Scan(&k.ID, &k.Name, &k.Role, &k.Hash, &created, &k.CreatedBy, &rotated, &used, &revokedNs); err != nil {
		return nil, err
	}
	k.CreatedAt, k.RotatedAt = storage.FromUnixNanos(created), storage.FromUnixNanos(rotated)
	k.LastUsedAt, k.RevokedAt = storage.FromUnixNanos(used), storage.FromUnixNanos(revokedNs)
	return &k, nil
}

// CreateAPIKey stores a new key; storage.ErrConflict if the id exists.
func (s *Store) CreateAPIKey(ctx context.Context, k *storage.APIKey) error {
	if err := storage.ValidateAPIKey(k); err != nil {
		return fmt.Errorf("create api key: %w", err)
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO api_keys (`+apiKeyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			k.ID, k.Name, k.Role, k.Hash, storage.UnixNanos(k.CreatedAt), k.CreatedBy,
			storage.UnixNanos(k.RotatedAt), storage.UnixNanos(k.LastUsedAt), storage.UnixNanos(k.RevokedAt))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create api key %s: %w", k.ID, wrapErr(err))
	}
	return nil
}

// GetAPIKey returns storage.ErrNotFound for an unknown id.
func (s *Store) GetAPIKey(ctx context.Context, id string) (*storage.APIKey, error) {
	k, err := scanAPIKey(s.reader.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get api key %s: %w", id, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get api key %s: %w", id, wrapErr(err))
	}
	return k, nil
}

// ListAPIKeys returns every key, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*storage.APIKey, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY created_ns, id`)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []*storage.APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list api keys: %w", wrapErr(err))
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api keys: %w", wrapErr(err))
	}
	return out, nil
}

// RotateAPIKey replaces an active key's hash.
func (s *Store) RotateAPIKey(ctx context.Context, id string, hash []byte, at time.Time) (*storage.APIKey, error) {
	if len(hash) == 0 {
		return nil, fmt.Errorf("rotate api key %s: empty hash: %w", id, storage.ErrInvalid)
	}
	var out *storage.APIKey
	err := s.write(ctx, func(tx *sql.Tx) error {
		k, err := scanAPIKey(tx.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return storage.ErrNotFound
		}
		if err != nil {
			return err
		}
		if k.Revoked() {
			return fmt.Errorf("revoked: %w", storage.ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_keys SET hash = ?, rotated_ns = ? WHERE id = ?`, hash, storage.UnixNanos(at), id); err != nil {
			return err
		}
		k.Hash, k.RotatedAt = hash, storage.FromUnixNanos(storage.UnixNanos(at))
		out = k
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rotate api key %s: %w", id, wrapErr(err))
	}
	return out, nil
}

// RevokeAPIKey marks a key revoked, keeping the first revocation time.
func (s *Store) RevokeAPIKey(ctx context.Context, id string, at time.Time) (*storage.APIKey, error) {
	var out *storage.APIKey
	err := s.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE api_keys SET revoked_ns = ? WHERE id = ? AND revoked_ns = 0`, storage.UnixNanos(at), id); err != nil {
			return err
		}
		k, err := scanAPIKey(tx.QueryRowContext(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return storage.ErrNotFound
		}
		out = k
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("revoke api key %s: %w", id, wrapErr(err))
	}
	return out, nil
}

// TouchAPIKey records a use of the key.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE api_keys SET last_used_ns = ? WHERE id = ?`, storage.UnixNanos(at), id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch api key %s: %w", id, wrapErr(err))
	}
	return nil
}
