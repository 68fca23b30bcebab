package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Counters live in memory (shared by the Stores on this file in this
// process), so Reserve costs no transaction on the hot path; changed keys are
// written to the counters table every CounterFlushInterval and on Close, and
// loaded back at open. Token buckets are not persisted: after a restart they
// start full, as a new bucket does.

// Reserve implements storage.Counters.
func (s *Store) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	r, err := s.hub.counters.Reserve(ctx, key, amount, limit, expires)
	if err == nil && r.Allowed && amount != 0 {
		s.hub.markDirty(key)
	}
	return r, err
}

// Adjust implements storage.Counters.
func (s *Store) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	v, err := s.hub.counters.Adjust(ctx, key, delta, expires)
	if err == nil {
		s.hub.markDirty(key)
	}
	return v, err
}

// Counter implements storage.Counters.
func (s *Store) Counter(ctx context.Context, key string) (int64, error) {
	return s.hub.counters.Counter(ctx, key)
}

// TakeToken implements storage.Counters.
func (s *Store) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	return s.hub.counters.TakeToken(ctx, key, rate, burst, now)
}

// PutHold implements storage.Counters. Holds live in memory with the
// counters and are persisted behind with them, so a restart keeps the
// reservations put more than one CounterFlushInterval before it.
func (s *Store) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	err := s.hub.counters.PutHold(ctx, key, data, expires)
	if err == nil {
		s.hub.markHoldDirty(key)
	}
	return err
}

// TakeHold implements storage.Counters.
func (s *Store) TakeHold(ctx context.Context, key string) ([]byte, error) {
	data, err := s.hub.counters.TakeHold(ctx, key)
	if err == nil {
		s.hub.markHoldDirty(key)
	}
	return data, err
}

// PeekHold implements storage.Counters.
func (s *Store) PeekHold(ctx context.Context, key string) ([]byte, error) {
	return s.hub.counters.PeekHold(ctx, key)
}

func (h *hub) markHoldDirty(key string) {
	h.dirtyMu.Lock()
	h.dirtyHolds[key] = struct{}{}
	h.dirtyMu.Unlock()
}

func (h *hub) markDirty(key string) {
	h.dirtyMu.Lock()
	h.dirty[key] = struct{}{}
	h.dirtyMu.Unlock()
}

// loadCounters reads the persisted, unexpired counters into memory.
func (h *hub) loadCounters(ctx context.Context, s *Store) error {
	rows, err := s.writer.QueryContext(ctx, `SELECT key, value, expires_ns FROM counters WHERE expires_ns > ?`, s.opts.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("load counters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var v, exp int64
		if err := rows.Scan(&key, &v, &exp); err != nil {
			return fmt.Errorf("load counters: %w", err)
		}
		h.counters.Load(key, v, storage.FromUnixNanos(exp))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load counters: %w", err)
	}
	holds, err := s.writer.QueryContext(ctx, `SELECT key, data, expires_ns FROM budget_holds WHERE expires_ns > ?`, s.opts.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("load budget holds: %w", err)
	}
	defer holds.Close()
	for holds.Next() {
		var key string
		var data []byte
		var exp int64
		if err := holds.Scan(&key, &data, &exp); err != nil {
			return fmt.Errorf("load budget holds: %w", err)
		}
		h.counters.LoadHold(key, data, storage.FromUnixNanos(exp))
	}
	return holds.Err()
}

// flushCounters writes the counters and budget holds changed since the last
// flush. On failure they stay dirty for the next attempt.
// upsertOrDelete writes key's value and expiry into table (whose value
// column is col) when ok, and deletes key's row otherwise: what flushCounters
// does for every changed counter and hold.
func upsertOrDelete(ctx context.Context, tx *sql.Tx, table, col, key string, value any, exp time.Time, ok bool) error {
	var err error
	if ok {
		_, err = tx.ExecContext(ctx, `INSERT INTO `+table+` (key, `+col+`, expires_ns) VALUES (?, ?, ?)
			ON CONFLICT (key) DO UPDATE SET `+col+` = excluded.`+col+`, expires_ns = excluded.expires_ns`, key, value, exp.UnixNano())
	} else {
		_, err = tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE key = ?`, key)
	}
	return err
}

func (h *hub) flushCounters(ctx context.Context, s *Store) error {
	h.dirtyMu.Lock()
	if len(h.dirty) == 0 && len(h.dirtyHolds) == 0 {
		h.dirtyMu.Unlock()
		return nil
	}
	keys, holds := h.dirty, h.dirtyHolds
	h.dirty = make(map[string]struct{}, len(keys))
	h.dirtyHolds = make(map[string]struct{}, len(holds))
	h.dirtyMu.Unlock()
	err := s.write(ctx, func(tx *sql.Tx) error {
		for key := range holds {
			data, exp, ok := h.counters.HoldEntry(key)
			if err := upsertOrDelete(ctx, tx, "budget_holds", "data", key, data, exp, ok); err != nil {
				return err
			}
		}
		for key := range keys {
			v, exp, ok := h.counters.Entry(key)
			if err := upsertOrDelete(ctx, tx, "counters", "value", key, v, exp, ok); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.dirtyMu.Lock()
		for k := range keys {
			h.dirty[k] = struct{}{}
		}
		for k := range holds {
			h.dirtyHolds[k] = struct{}{}
		}
		h.dirtyMu.Unlock()
		return fmt.Errorf("persist %d counters and %d budget holds: %w", len(keys), len(holds), wrapErr(err))
	}
	return nil
}

// Publish implements storage.Notifier for the Stores on this file in this process.
func (s *Store) Publish(ctx context.Context, topic string, payload []byte) error {
	return s.hub.notifier.Publish(ctx, topic, payload)
}

// Subscribe implements storage.Notifier for the Stores on this file in this process.
func (s *Store) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	return s.hub.notifier.Subscribe(ctx, topic)
}
