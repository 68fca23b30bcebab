package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

// SavePolicyVersion stores a new, inactive version; storage.ErrConflict if
// the version exists.
func (s *Store) SavePolicyVersion(ctx context.Context, v *storage.PolicyVersion) error {
	if v == nil || v.Version == "" {
		return fmt.Errorf("save policy version: empty version: %w", storage.ErrInvalid)
	}
	return s.tx(ctx, "save policy version "+v.Version, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO policy_versions (version, author, message, created_ns, activated_ns)
			VALUES ($1, $2, $3, $4, 0)`, v.Version, v.Author, v.Message, nanos(v.CreatedAt)); err != nil {
			return err
		}
		if len(v.Documents) == 0 {
			return nil
		}
		ords := make([]int32, len(v.Documents))
		names := make([]string, len(v.Documents))
		sources := make([][]byte, len(v.Documents))
		for i, d := range v.Documents {
			ords[i], names[i], sources[i] = int32(i), d.Name, d.Source
			if sources[i] == nil {
				sources[i] = []byte{}
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO policy_documents (version, ord, name, source)
			SELECT $1, * FROM unnest($2::int4[], $3::text[], $4::bytea[])`, v.Version, ords, names, sources)
		return err
	})
}

// ActivatePolicyVersion makes version the active one at time at.
func (s *Store) ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error {
	err := s.tx(ctx, "activate policy version "+version, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE policy_versions SET activated_ns = $2 WHERE version = $1`, version, nanos(at))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		_, err = tx.Exec(ctx, `INSERT INTO policy_active (singleton, version) VALUES (true, $1)
			ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version`, version)
		return err
	})
	return err
}

// ActivePolicyVersion returns the active version; storage.ErrNotFound when
// none was activated.
func (s *Store) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	vs, err := s.policyVersions(ctx, "get active policy version",
		`WHERE v.version = (SELECT version FROM policy_active)`, 0)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("get active policy version: none is active: %w", storage.ErrNotFound)
	}
	return vs[0], nil
}

// GetPolicyVersion returns one version; storage.ErrNotFound if unknown.
func (s *Store) GetPolicyVersion(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	vs, err := s.policyVersions(ctx, "get policy version", `WHERE v.version = $1`, 0, version)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("get policy version %q: %w", version, storage.ErrNotFound)
	}
	return vs[0], nil
}

// PolicyHistory lists up to limit versions (all when limit <= 0), newest
// first.
func (s *Store) PolicyHistory(ctx context.Context, limit int) ([]*storage.PolicyVersion, error) {
	return s.policyVersions(ctx, "list policy history", "", limit)
}

// policyVersions reads the versions selected by where (over alias v),
// newest first, with their documents, in one snapshot.
func (s *Store) policyVersions(ctx context.Context, op, where string, limit int, args ...any) ([]*storage.PolicyVersion, error) {
	q := `SELECT v.version, v.author, v.message, v.created_ns, v.activated_ns,
		coalesce(v.version = (SELECT version FROM policy_active), false)
		FROM policy_versions v ` + where + ` ORDER BY v.created_ns DESC, v.pos DESC`
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	var out []*storage.PolicyVersion
	err := s.do(ctx, op, func(c *pgx.Conn) error {
		out = out[:0]
		return pgx.BeginTxFunc(ctx, c, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, q, args...)
			if err != nil {
				return err
			}
			byVersion := map[string]*storage.PolicyVersion{}
			var names []string
			for rows.Next() {
				v := &storage.PolicyVersion{}
				var created, activated int64
				if err := rows.Scan(&v.Version, &v.Author, &v.Message, &created, &activated, &v.Active); err != nil {
					rows.Close()
					return err
				}
				v.CreatedAt, v.ActivatedAt = fromNanos(created), fromNanos(activated)
				out = append(out, v)
				byVersion[v.Version] = v
				names = append(names, v.Version)
			}
			rows.Close()
			if err := rows.Err(); err != nil || len(names) == 0 {
				return err
			}
			rows, err = tx.Query(ctx, `SELECT version, name, source FROM policy_documents
				WHERE version = ANY($1::text[]) ORDER BY version, ord`, names)
			if err != nil {
				return err
			}
			var (
				version, name string
				source        []byte
			)
			_, err = pgx.ForEachRow(rows, []any{&version, &name, &source}, func() error {
				v := byVersion[version]
				doc := storage.PolicyDocument{Name: name}
				if len(source) > 0 {
					doc.Source = append([]byte(nil), source...)
				}
				v.Documents = append(v.Documents, doc)
				return nil
			})
			return err
		})
	})
	return out, err
}
