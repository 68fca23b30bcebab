package storage

import (
	"context"
	"fmt"
	"time"
)

// ---------------------------------------------------------------- API keys

// APIKey is an operator API key as stored: its public id, name, role and the
// SHA-256 digest of its secret, never the secret itself.
type APIKey struct {
	// ID is the public part of the key (the "<id>" of aak_<id>_<secret>).
	ID string
	// Name is what the key is for ("ci", "alice"); it is the actor recorded
	// in the audit log for calls made with the key.
	Name string
	// Role is viewer, operator or admin.
	Role string
	// Hash is the SHA-256 digest of the secret.
	Hash []byte
	// CreatedAt and CreatedBy say when and by whom the key was made.
	CreatedAt time.Time
	CreatedBy string
	// RotatedAt is when the secret was last replaced (zero if never).
	RotatedAt time.Time
	// LastUsedAt is when the key last authenticated a call (zero if never);
	// writes are throttled, so it may lag by a minute.
	LastUsedAt time.Time
	// RevokedAt is when the key was revoked (zero while it is active).
	RevokedAt time.Time
}

// Revoked reports whether the key was revoked.
func (k *APIKey) Revoked() bool { return !k.RevokedAt.IsZero() }

// ValidateAPIKey rejects a key that cannot be stored (ErrInvalid).
func ValidateAPIKey(k *APIKey) error {
	switch {
	case k == nil:
		return fmt.Errorf("api key: nil: %w", ErrInvalid)
	case k.ID == "":
		return fmt.Errorf("api key: empty id: %w", ErrInvalid)
	case k.Name == "":
		return fmt.Errorf("api key %s: empty name: %w", k.ID, ErrInvalid)
	case k.Role == "":
		return fmt.Errorf("api key %s: empty role: %w", k.ID, ErrInvalid)
	case len(k.Hash) == 0:
		return fmt.Errorf("api key %s: empty hash: %w", k.ID, ErrInvalid)
	}
	return nil
}

// APIKeys keeps operator API keys. Every authenticated operator call reads
// its key from here, so a revocation on one replica holds on every replica
// sharing the store at once.
type APIKeys interface {
	// CreateAPIKey stores a new key; ErrConflict if the id exists,
	// ErrInvalid for a key without id, name, role or hash.
	CreateAPIKey(ctx context.Context, k *APIKey) error
	// GetAPIKey returns ErrNotFound for an unknown id.
	GetAPIKey(ctx context.Context, id string) (*APIKey, error)
	// ListAPIKeys returns every key, revoked ones included, oldest first
	// (CreatedAt, then ID).
	ListAPIKeys(ctx context.Context) ([]*APIKey, error)
	// RotateAPIKey replaces the hash of an active key and sets RotatedAt;
	// ErrNotFound for an unknown id, ErrConflict for a revoked key.
	RotateAPIKey(ctx context.Context, id string, hash []byte, at time.Time) (*APIKey, error)
	// RevokeAPIKey sets RevokedAt; revoking a revoked key keeps the first
	// time and succeeds. ErrNotFound for an unknown id.
	RevokeAPIKey(ctx context.Context, id string, at time.Time) (*APIKey, error)
	// TouchAPIKey sets LastUsedAt; ErrNotFound for an unknown id.
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
}
