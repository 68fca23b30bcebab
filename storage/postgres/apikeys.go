package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

const apiKeyColumns = `id, name, role, hash, created_ns, created_by, rotated_ns, last_used_ns, revoked_ns`

func scanAPIKey(r pgx.Row) (*storage.APIKey, error) {
	var (
		k                               storage.APIKey
		created, rotated, used, revoked int64
	)
	if err := r.Scan(&k.ID, &k.Name, &k.Role, &k.Hash, &created, &k.CreatedBy, &rotated, &used, &revoked); err != nil {
		return nil, err
	}
	k.CreatedAt, k.RotatedAt = fromNanos(created), fromNanos(rotated)
	k.LastUsedAt, k.RevokedAt = fromNanos(used), fromNanos(revoked)
	return &k, nil
}

// CreateAPIKey stores a new key; storage.ErrConflict if the id exists.
func (s *Store) CreateAPIKey(ctx context.Context, k *storage.APIKey) error {
	if err := storage.ValidateAPIKey(k); err != nil {
		return fmt.Errorf("create api key: %w", err)
	}
	return s.do(ctx, "create api key "+k.ID, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO api_keys (`+apiKeyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			k.ID, k.Name, k.Role, k.Hash, nanos(k.CreatedAt), k.CreatedBy, nanos(k.RotatedAt), nanos(k.LastUsedAt), nanos(k.RevokedAt))
		return err
	})
}

// GetAPIKey returns storage.ErrNotFound for an unknown id.
func (s *Store) GetAPIKey(ctx context.Context, id string) (*storage.APIKey, error) {
	var k *storage.APIKey
	err := s.do(ctx, "get api key "+id, func(c *pgx.Conn) error {
		var err error
		k, err = scanAPIKey(c.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
		return err
	})
	return k, err
}

// ListAPIKeys returns every key, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*storage.APIKey, error) {
	var out []*storage.APIKey
	err := s.do(ctx, "list api keys", func(c *pgx.Conn) error {
		out = nil
		rows, err := c.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY created_ns, id`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (*storage.APIKey, error) { return scanAPIKey(r) })
		return err
	})
	return out, err
}

// errRevoked marks a rotation of a revoked key inside a transaction.
var errRevoked = errors.New("revoked")

// RotateAPIKey replaces an active key's hash.
func (s *Store) RotateAPIKey(ctx context.Context, id string, hash []byte, at time.Time) (*storage.APIKey, error) {
	if len(hash) == 0 {
		return nil, fmt.Errorf("rotate api key %s: empty hash: %w", id, storage.ErrInvalid)
	}
	var k *storage.APIKey
	err := s.tx(ctx, "rotate api key "+id, func(tx pgx.Tx) error {
		var err error
		k, err = scanAPIKey(tx.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1 FOR UPDATE`, id))
		if err != nil {
			return err
		}
		if k.Revoked() {
			return errRevoked
		}
		k.Hash, k.RotatedAt = hash, fromNanos(nanos(at))
		_, err = tx.Exec(ctx, `UPDATE api_keys SET hash = $1, rotated_ns = $2 WHERE id = $3`, hash, nanos(at), id)
		return err
	})
	if errors.Is(err, errRevoked) {
		return nil, fmt.Errorf("rotate api key %s: revoked: %w", id, storage.ErrConflict)
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

// RevokeAPIKey marks a key revoked, keeping the first revocation time.
func (s *Store) RevokeAPIKey(ctx context.Context, id string, at time.Time) (*storage.APIKey, error) {
	var k *storage.APIKey
	err := s.tx(ctx, "revoke api key "+id, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE api_keys SET revoked_ns = $1 WHERE id = $2 AND revoked_ns = 0`, nanos(at), id); err != nil {
			return err
		}
		var err error
		k, err = scanAPIKey(tx.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
		return err
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// TouchAPIKey records a use of the key.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	return s.do(ctx, "touch api key "+id, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `UPDATE api_keys SET last_used_ns = $1 WHERE id = $2`, nanos(at), id)
		if err == nil && tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		return err
	})
}
