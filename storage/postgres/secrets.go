package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

func (s *Store) sealer(op string) (storage.Sealer, error) {
	if s.opts.Sealer == nil {
		return nil, fmt.Errorf("%s: postgres store opened without a secrets key: %w", op, storage.ErrNotSupported)
	}
	return s.opts.Sealer, nil
}

// PutSecret seals value with the store's Sealer (the name is the
// associated data, so a sealed value cannot be moved to another name) and
// stores it, replacing any previous value and bumping the version.
func (s *Store) PutSecret(ctx context.Context, name string, value []byte) error {
	if name == "" {
		return fmt.Errorf("put secret: empty name: %w", storage.ErrInvalid)
	}
	box, err := s.sealer("put secret " + name)
	if err != nil {
		return err
	}
	sealed, err := box.Seal(value, []byte(name))
	if err != nil {
		return fmt.Errorf("put secret %s: %w", name, err)
	}
	now := nanos(s.opts.Now())
	return s.do(ctx, "put secret "+name, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO secrets (name, sealed, version, updated_ns) VALUES ($1, $2, 1, $3)
			ON CONFLICT (name) DO UPDATE SET sealed = EXCLUDED.sealed,
				version = secrets.version + 1, updated_ns = EXCLUDED.updated_ns`, name, sealed, now)
		return err
	})
}

// GetSecret returns the opened value; storage.ErrNotFound for an unknown
// name.
func (s *Store) GetSecret(ctx context.Context, name string) ([]byte, error) {
	box, err := s.sealer("get secret " + name)
	if err != nil {
		return nil, err
	}
	var sealed []byte
	err = s.do(ctx, "get secret "+name, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT sealed FROM secrets WHERE name = $1`, name).Scan(&sealed)
	})
	if err != nil {
		return nil, err
	}
	v, err := box.Open(sealed, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("get secret %s: %w", name, err)
	}
	if len(v) == 0 {
		return nil, nil
	}
	return v, nil
}

// ListSecrets lists the secrets' names, versions and update times, by name.
func (s *Store) ListSecrets(ctx context.Context) ([]storage.SecretMeta, error) {
	var out []storage.SecretMeta
	err := s.do(ctx, "list secrets", func(c *pgx.Conn) error {
		out = out[:0]
		rows, err := c.Query(ctx, `SELECT name, version, updated_ns FROM secrets ORDER BY name COLLATE "C"`)
		if err != nil {
			return err
		}
		var (
			m       storage.SecretMeta
			updated int64
		)
		_, err = pgx.ForEachRow(rows, []any{&m.Name, &m.Version, &updated}, func() error {
			m.UpdatedAt = fromNanos(updated)
			out = append(out, m)
			return nil
		})
		return err
	})
	return out, err
}

// DeleteSecret removes a secret; storage.ErrNotFound if unknown.
func (s *Store) DeleteSecret(ctx context.Context, name string) error {
	var n int64
	err := s.do(ctx, "delete secret "+name, func(c *pgx.Conn) error {
		tag, err := c.Exec(ctx, `DELETE FROM secrets WHERE name = $1`, name)
		n = tag.RowsAffected()
		return err
	})
	if err == nil && n == 0 {
		err = fmt.Errorf("delete secret %s: %w", name, storage.ErrNotFound)
	}
	return err
}

// ResealSecrets implements storage.Secrets.
func (s *Store) ResealSecrets(ctx context.Context) (int, error) {
	box, err := s.sealer("reseal secrets")
	if err != nil {
		return 0, err
	}
	type row struct {
		name    string
		sealed  []byte
		version int64
	}
	var old []row
	err = s.do(ctx, "reseal secrets", func(c *pgx.Conn) error {
		old = old[:0]
		rows, err := c.Query(ctx, `SELECT name, sealed, version FROM secrets ORDER BY name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.name, &r.sealed, &r.version); err != nil {
				return err
			}
			if box.NeedsReseal(r.sealed) {
				old = append(old, r)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return 0, err
	}
	n := 0
	var errs error
	for _, r := range old {
		sealed, err := storage.Reseal(box, r.name, r.sealed)
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		var done int64
		err = s.do(ctx, "reseal secret "+r.name, func(c *pgx.Conn) error {
			tag, err := c.Exec(ctx, `UPDATE secrets SET sealed = $1 WHERE name = $2 AND version = $3`, sealed, r.name, r.version)
			done = tag.RowsAffected()
			return err
		})
		n += int(done)
		errs = errors.Join(errs, err)
	}
	return n, errs
}
