package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// alertFeed is the in-memory storage.Alerts and storage.CostLedger.
type alertFeed struct {
	mu       sync.Mutex
	alerts   map[string]*storage.Alert
	silences map[string]*storage.Silence
	costs    map[costKey]storage.CostEntry
}

type costKey struct {
	agent action.AgentID
	model string
	day   string
}

var (
	_ storage.Alerts     = (*Store)(nil)
	_ storage.CostLedger = (*Store)(nil)
)

func cloneAlert(a *storage.Alert) *storage.Alert {
	c := *a
	c.Details = slices.Clone(a.Details)
	if c.Details == nil {
		c.Details = []byte(`{}`)
	}
	return &c
}

// InsertAlert stores a unless its ID exists.
func (s *Store) InsertAlert(ctx context.Context, a *storage.Alert) (bool, error) {
	if err := storage.ValidateAlert(a); err != nil {
		return false, fmt.Errorf("insert alert: %w", err)
	}
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.alerts[a.ID]; ok {
		return false, nil
	}
	if f.alerts == nil {
		f.alerts = map[string]*storage.Alert{}
	}
	c := cloneAlert(a)
	c.Time = a.Time.UTC()
	f.alerts[a.ID] = c
	return true, nil
}

// GetAlert returns one alert.
func (s *Store) GetAlert(ctx context.Context, id string) (*storage.Alert, error) {
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.alerts[id]
	if !ok {
		return nil, fmt.Errorf("get alert %s: %w", id, storage.ErrNotFound)
	}
	return cloneAlert(a), nil
}

// QueryAlerts returns one page of matching alerts, newest first.
func (s *Store) QueryAlerts(ctx context.Context, q storage.AlertQuery) (storage.AlertPage, error) {
	cur, ok, err := storage.ParseAlertCursor(q.Cursor)
	if err != nil {
		return storage.AlertPage{}, fmt.Errorf("query alerts: %w", err)
	}
	f := &s.feed
	f.mu.Lock()
	var out []*storage.Alert
	for _, a := range f.alerts {
		if q.Matches(a) && (!ok || (storage.AlertPosition{TimeNanos: a.Time.UnixNano(), ID: a.ID}).Before(cur)) {
			out = append(out, cloneAlert(a))
		}
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b *storage.Alert) int {
		return cmp.Or(b.Time.Compare(a.Time), cmp.Compare(b.ID, a.ID))
	})
	if n := q.PageSize() + 1; len(out) > n {
		out = out[:n]
	}
	return q.NextPage(out), nil
}

// PutSilence stores a new silence.
func (s *Store) PutSilence(ctx context.Context, si *storage.Silence) error {
	if si == nil || si.ID == "" {
		return fmt.Errorf("put silence: a silence needs an id: %w", storage.ErrInvalid)
	}
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.silences[si.ID]; ok {
		return fmt.Errorf("put silence %s: %w", si.ID, storage.ErrConflict)
	}
	if f.silences == nil {
		f.silences = map[string]*storage.Silence{}
	}
	c := *si
	f.silences[si.ID] = &c
	return nil
}

// ListSilences returns silences newest first, only active ones when
// activeAt is not zero.
func (s *Store) ListSilences(ctx context.Context, activeAt time.Time) ([]*storage.Silence, error) {
	f := &s.feed
	f.mu.Lock()
	var out []*storage.Silence
	for _, si := range f.silences {
		if activeAt.IsZero() || si.ActiveAt(activeAt) {
			c := *si
			out = append(out, &c)
		}
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b *storage.Silence) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), cmp.Compare(b.ID, a.ID))
	})
	return out, nil
}

// ExpireSilence ends a silence at the given instant.
func (s *Store) ExpireSilence(ctx context.Context, id string, at time.Time) (*storage.Silence, error) {
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	si, ok := f.silences[id]
	if !ok {
		return nil, fmt.Errorf("expire silence %s: %w", id, storage.ErrNotFound)
	}
	if si.EndsAt.After(at) {
		si.EndsAt = at
	}
	c := *si
	return &c, nil
}

// TrimAlerts deletes old alerts and ended silences.
func (s *Store) TrimAlerts(ctx context.Context, before time.Time) (int64, error) {
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for id, a := range f.alerts {
		if a.Time.Before(before) {
			delete(f.alerts, id)
			n++
		}
	}
	for id, si := range f.silences {
		if si.EndsAt.Before(before) {
			delete(f.silences, id)
		}
	}
	return n, nil
}

// RecordCost adds e to its daily row.
func (s *Store) RecordCost(ctx context.Context, e storage.CostEntry) error {
	if err := storage.ValidateCost(e); err != nil {
		return fmt.Errorf("record cost: %w", err)
	}
	f := &s.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.costs == nil {
		f.costs = map[costKey]storage.CostEntry{}
	}
	k := costKey{e.Agent, e.Model, e.Day}
	r := f.costs[k]
	r.Agent, r.Model, r.Day = e.Agent, e.Model, e.Day
	r.MicroUSD += e.MicroUSD
	r.PromptTokens += e.PromptTokens
	r.CompletionTokens += e.CompletionTokens
	r.Requests += e.Requests
	f.costs[k] = r
	return nil
}

// QueryCosts returns the matching daily rows.
func (s *Store) QueryCosts(ctx context.Context, q storage.CostQuery) ([]storage.CostEntry, error) {
	f := &s.feed
	f.mu.Lock()
	var out []storage.CostEntry
	for _, e := range f.costs {
		if q.Matches(e) {
			out = append(out, e)
		}
	}
	f.mu.Unlock()
	if len(out) > q.CostRowLimit() {
		return nil, fmt.Errorf("query costs: more than %d daily rows match: narrow the days or filters: %w", q.CostRowLimit(), storage.ErrInvalid)
	}
	slices.SortFunc(out, storage.CompareCostEntries)
	return out, nil
}
