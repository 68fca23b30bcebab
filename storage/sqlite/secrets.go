package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/agent-assembly/agent-assembly/storage"
)

func (s *Store) sealer(op, name string) error {
	if s.opts.Sealer == nil {
		return fmt.Errorf("%s secret %s: no secret key configured, so secrets cannot be stored encrypted: %w", op, name, storage.ErrNotSupported)
	}
	return nil
}

// PutSecret seals value (the name is the additional data) and stores it,
// replacing any previous value and incrementing its version.
func (s *Store) PutSecret(ctx context.Context, name string, value []byte) error {
	if name == "" {
		return fmt.Errorf("put secret: empty name: %w", storage.ErrInvalid)
	}
	if err := s.sealer("put", name); err != nil {
		return err
	}
	sealed, err := s.opts.Sealer.Seal(value, []byte(name))
	if err != nil {
		return fmt.Errorf("put secret %s: seal: %w", name, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO secrets (name, sealed, version, updated_ns) VALUES (?, ?, 1, ?)
			ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, version = secrets.version + 1, updated_ns = excluded.updated_ns`,
			name, sealed, s.opts.Now().UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("put secret %s: %w", name, wrapErr(err))
	}
	return nil
}

// GetSecret returns the decrypted value.
func (s *Store) GetSecret(ctx context.Context, name string) ([]byte, error) {
	if err := s.sealer("get", name); err != nil {
		return nil, err
	}
	var sealed []byte
	err := s.reader.QueryRowContext(ctx, `SELECT sealed FROM secrets WHERE name = ?`, name).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("get secret %s: %w", name, storage.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s: %w", name, wrapErr(err))
	}
	v, err := s.opts.Sealer.Open(sealed, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("get secret %s: %w", name, err)
	}
	return v, nil
}

// ListSecrets lists names and versions, sorted by name.
func (s *Store) ListSecrets(ctx context.Context) ([]storage.SecretMeta, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT name, version, updated_ns FROM secrets ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list secrets: %w", wrapErr(err))
	}
	defer rows.Close()
	var out []storage.SecretMeta
	for rows.Next() {
		var m storage.SecretMeta
		var upd int64
		if err := rows.Scan(&m.Name, &m.Version, &upd); err != nil {
			return nil, fmt.Errorf("list secrets: %w", wrapErr(err))
		}
		m.UpdatedAt = storage.FromUnixNanos(upd)
		out = append(out, m)
	}
	return out, wrapErr(rows.Err())
}

// DeleteSecret removes a secret; ErrNotFound if unknown.
func (s *Store) DeleteSecret(ctx context.Context, name string) error {
	err := s.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM secrets WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, storage.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete secret %s: %w", name, wrapErr(err))
	}
	return nil
}

// ResealSecrets implements storage.Secrets.
func (s *Store) ResealSecrets(ctx context.Context) (int, error) {
	if err := s.sealer("reseal", "secrets"); err != nil {
		return 0, err
	}
	type row struct {
		name    string
		sealed  []byte
		version int64
	}
	var old []row
	rows, err := s.reader.QueryContext(ctx, `SELECT name, sealed, version FROM secrets ORDER BY name`)
	if err != nil {
		return 0, fmt.Errorf("reseal secrets: %w", wrapErr(err))
	}
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.name, &r.sealed, &r.version); err != nil {
			rows.Close()
			return 0, fmt.Errorf("reseal secrets: %w", wrapErr(err))
		}
		if s.opts.Sealer.NeedsReseal(r.sealed) {
			old = append(old, r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reseal secrets: %w", wrapErr(err))
	}
	n := 0
	var errs error
	for _, r := range old {
		sealed, err := storage.Reseal(s.opts.Sealer, r.name, r.sealed)
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		var done int64
		err = s.write(ctx, func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, `UPDATE secrets SET sealed = ? WHERE name = ? AND version = ?`, sealed, r.name, r.version)
			if err != nil {
				return err
			}
			done, err = res.RowsAffected()
			return err
		})
		n += int(done)
		if err != nil {
			errs = errors.Join(errs, fmt.Errorf("reseal secret %s: %w", r.name, wrapErr(err)))
		}
	}
	return n, errs
}
