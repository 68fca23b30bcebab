package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

func cloneAPIKey(k *storage.APIKey) *storage.APIKey {
	c := *k
	c.Hash = slices.Clone(k.Hash)
	return &c
}

// CreateAPIKey stores a new key; storage.ErrConflict if the id exists.
func (s *Store) CreateAPIKey(ctx context.Context, k *storage.APIKey) error {
	if err := storage.ValidateAPIKey(k); err != nil {
		return fmt.Errorf("create api key: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apiKeys == nil {
		s.apiKeys = make(map[string]*storage.APIKey)
	}
	if _, ok := s.apiKeys[k.ID]; ok {
		return fmt.Errorf("create api key %s: %w", k.ID, storage.ErrConflict)
	}
	s.apiKeys[k.ID] = cloneAPIKey(k)
	return nil
}

// GetAPIKey returns a copy of the key; storage.ErrNotFound if unknown.
func (s *Store) GetAPIKey(ctx context.Context, id string) (*storage.APIKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.apiKeys[id]
	if !ok {
		return nil, fmt.Errorf("get api key %s: %w", id, storage.ErrNotFound)
	}
	return cloneAPIKey(k), nil
}

// ListAPIKeys returns every key, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]*storage.APIKey, error) {
	s.mu.RLock()
	out := make([]*storage.APIKey, 0, len(s.apiKeys))
	for _, k := range s.apiKeys {
		out = append(out, cloneAPIKey(k))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *storage.APIKey) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// RotateAPIKey replaces an active key's hash.
func (s *Store) RotateAPIKey(ctx context.Context, id string, hash []byte, at time.Time) (*storage.APIKey, error) {
	if len(hash) == 0 {
		return nil, fmt.Errorf("rotate api key %s: empty hash: %w", id, storage.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.apiKeys[id]
	if !ok {
		return nil, fmt.Errorf("rotate api key %s: %w", id, storage.ErrNotFound)
	}
	if k.Revoked() {
		return nil, fmt.Errorf("rotate api key %s: revoked: %w", id, storage.ErrConflict)
	}
	k.Hash, k.RotatedAt = slices.Clone(hash), at
	return cloneAPIKey(k), nil
}

// RevokeAPIKey marks a key revoked, keeping the first revocation time.
func (s *Store) RevokeAPIKey(ctx context.Context, id string, at time.Time) (*storage.APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.apiKeys[id]
	if !ok {
		return nil, fmt.Errorf("revoke api key %s: %w", id, storage.ErrNotFound)
	}
	if !k.Revoked() {
		k.RevokedAt = at
	}
	return cloneAPIKey(k), nil
}

// TouchAPIKey records a use of the key.
func (s *Store) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.apiKeys[id]
	if !ok {
		return fmt.Errorf("touch api key %s: %w", id, storage.ErrNotFound)
	}
	k.LastUsedAt = at
	return nil
}
