package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// invalidations is the in-memory InvalidationLog.
type invalidations struct {
	mu     sync.Mutex
	events []*storage.InvalidationEvent // in Seq order
	last   int64
	keys   map[string]bool
}

// AppendInvalidation stores ev with the next sequence number.
func (s *Store) AppendInvalidation(ctx context.Context, ev *storage.InvalidationEvent) (int64, error) {
	if ev == nil || ev.Type == "" {
		return 0, fmt.Errorf("append invalidation: event needs a type: %w", storage.ErrInvalid)
	}
	l := &s.inval
	l.mu.Lock()
	defer l.mu.Unlock()
	if ev.Key != "" {
		if l.keys[ev.Key] {
			return 0, fmt.Errorf("append invalidation %s: %w", ev.Key, storage.ErrConflict)
		}
		if l.keys == nil {
			l.keys = map[string]bool{}
		}
		l.keys[ev.Key] = true
	}
	l.last++
	ev.Seq = l.last
	c := *ev
	l.events = append(l.events, &c)
	return ev.Seq, nil
}

// InvalidationsSince returns events after the given sequence number.
func (s *Store) InvalidationsSince(ctx context.Context, after int64, limit int) ([]*storage.InvalidationEvent, error) {
	if limit <= 0 {
		limit = 1000
	}
	l := &s.inval
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*storage.InvalidationEvent
	for _, ev := range l.events {
		if ev.Seq > after && len(out) < limit {
			c := *ev
			out = append(out, &c)
		}
	}
	return out, nil
}

// TrimInvalidations deletes events older than before, keeping the newest.
func (s *Store) TrimInvalidations(ctx context.Context, before time.Time) (int64, error) {
	l := &s.inval
	l.mu.Lock()
	defer l.mu.Unlock()
	var kept []*storage.InvalidationEvent
	var n int64
	for i, ev := range l.events {
		if ev.Time.Before(before) && i < len(l.events)-1 {
			n++
			continue
		}
		kept = append(kept, ev)
	}
	l.events = kept
	return n, nil
}
