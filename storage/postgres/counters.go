package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

// reserveSQL adds $2 to counter $1 only if the live value (zero once
// expires_ns has passed $5) stays within $3, in one statement. On a
// conflict the row is locked even when the WHERE refuses the update, so the
// read that follows in the same implicit transaction sees the value the
// decision was made on.
const reserveSQL = `INSERT INTO counters AS c (key, value, expires_ns)
SELECT $1::text, $2::bigint, $4::bigint WHERE $2::bigint <= $3::bigint
ON CONFLICT (key) DO UPDATE
   SET value = CASE WHEN c.expires_ns > $5 THEN c.value ELSE 0 END + EXCLUDED.value,
       expires_ns = EXCLUDED.expires_ns
 WHERE CASE WHEN c.expires_ns > $5 THEN c.value ELSE 0 END <= $3::bigint - EXCLUDED.value
RETURNING value`

const counterSQL = `SELECT coalesce((SELECT value FROM counters WHERE key = $1 AND expires_ns > $2), 0)`

// counterTx sends the statements queue adds in one pipeline (one round
// trip), in a transaction that commits without waiting for the WAL flush
// unless Options.SyncCounters is set.
func (s *Store) counterTx(ctx context.Context, op string, queue func(b *pgx.Batch)) error {
	return s.do(ctx, op, func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		async := !s.opts.SyncCounters
		if async {
			b.Queue("BEGIN")
			b.Queue("SET LOCAL synchronous_commit = off")
		}
		queue(b)
		if async {
			b.Queue("COMMIT")
		}
		err := c.SendBatch(ctx, b).Close()
		if err != nil {
			rollback(ctx, c)
		}
		return err
	})
}

// Reserve atomically adds amount to key if the result stays within limit.
// It is one round trip: the conditional upsert and a read of the current
// value travel in one pipeline.
func (s *Store) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	if key == "" || amount < 0 {
		return storage.Reservation{}, fmt.Errorf("reserve %d on counter %q: need a key and a non-negative amount: %w", amount, key, storage.ErrInvalid)
	}
	now := nanos(s.opts.Now())
	if amount == 0 {
		used, err := s.Counter(ctx, key)
		return storage.Reservation{Allowed: err == nil && used <= limit, Used: used}, err
	}
	var res storage.Reservation
	err := s.counterTx(ctx, "reserve counter", func(b *pgx.Batch) {
		res = storage.Reservation{}
		b.Queue(reserveSQL, key, amount, limit, nanos(expires), now).QueryRow(func(row pgx.Row) error {
			err := row.Scan(&res.Used)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			res.Allowed = err == nil
			return err
		})
		b.Queue(counterSQL, key, now).QueryRow(func(row pgx.Row) error {
			var cur int64
			if err := row.Scan(&cur); err != nil {
				return err
			}
			if !res.Allowed {
				res.Used = cur
			}
			return nil
		})
	})
	return res, err
}

// Adjust adds delta to key unconditionally and returns the new value.
func (s *Store) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	if key == "" {
		return 0, fmt.Errorf("adjust counter: empty key: %w", storage.ErrInvalid)
	}
	now := nanos(s.opts.Now())
	var v int64
	err := s.counterTx(ctx, "adjust counter", func(b *pgx.Batch) {
		b.Queue(`INSERT INTO counters AS c (key, value, expires_ns) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE
			   SET value = CASE WHEN c.expires_ns > $4 THEN c.value ELSE 0 END + EXCLUDED.value,
			       expires_ns = EXCLUDED.expires_ns
			RETURNING value`, key, delta, nanos(expires), now).QueryRow(func(row pgx.Row) error {
			return row.Scan(&v)
		})
	})
	return v, err
}

// Counter returns the live value of key: 0 when missing or expired.
func (s *Store) Counter(ctx context.Context, key string) (int64, error) {
	now := nanos(s.opts.Now())
	var v int64
	err := s.do(ctx, "read counter", func(c *pgx.Conn) error {
		return c.QueryRow(ctx, counterSQL, key, now).Scan(&v)
	})
	return v, err
}

// TakeToken takes one token from bucket key with the take_token function:
// one statement, atomic under the bucket's row lock.
func (s *Store) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	if key == "" || !(rate > 0) || burst < 1 || math.IsInf(rate, 0) {
		return false, 0, fmt.Errorf("take token from %q: need a key, rate > 0 and burst >= 1: %w", key, storage.ErrInvalid)
	}
	var (
		ok   bool
		wait int64
	)
	err := s.counterTx(ctx, "take token", func(b *pgx.Batch) {
		b.Queue(`SELECT ok, wait_ns FROM take_token($1, $2, $3, $4)`, key, rate, burst, now.UnixNano()).QueryRow(func(row pgx.Row) error {
			return row.Scan(&ok, &wait)
		})
	})
	return ok, time.Duration(wait), err
}

// PutHold stores data under key until expires, in a counter transaction.
func (s *Store) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	if key == "" {
		return fmt.Errorf("put hold: empty key: %w", storage.ErrInvalid)
	}
	return s.counterTx(ctx, "put hold", func(b *pgx.Batch) {
		b.Queue(`INSERT INTO budget_holds (key, data, expires_ns) VALUES ($1, $2, $3)
			ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, expires_ns = EXCLUDED.expires_ns`, key, data, nanos(expires))
	})
}

// TakeHold deletes key's row and returns its data, in one statement: the
// row lock makes exactly one of concurrent callers get it.
func (s *Store) TakeHold(ctx context.Context, key string) ([]byte, error) {
	now := nanos(s.opts.Now())
	var (
		data  []byte
		found bool
	)
	err := s.counterTx(ctx, "take hold", func(b *pgx.Batch) {
		b.Queue(`DELETE FROM budget_holds WHERE key = $1 RETURNING data, expires_ns > $2`, key, now).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				if err := rows.Scan(&data, &found); err != nil {
					return err
				}
			}
			return rows.Err()
		})
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("take hold %q: %w", key, storage.ErrNotFound)
	}
	return data, nil
}

// PeekHold reads key's unexpired row, leaving it.
func (s *Store) PeekHold(ctx context.Context, key string) ([]byte, error) {
	now := nanos(s.opts.Now())
	var data []byte
	err := s.do(ctx, "peek hold", func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT data FROM budget_holds WHERE key = $1 AND expires_ns > $2`, key, now).Scan(&data)
	})
	if errors.Is(err, pgx.ErrNoRows) || errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("peek hold %q: %w", key, storage.ErrNotFound)
	}
	return data, err
}
