package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// BootstrapKeyName is the name of the admin key created at first start.
const BootstrapKeyName = "bootstrap-admin"

// bootstrapLease is the nonce that elects the one replica creating the
// bootstrap admin key when several start on an empty store at once.
const bootstrapLease = "aa.bootstrap-admin-key.lease"

// BootstrapStore is what EnsureAdmin needs: the keys, and the registry's
// single-use nonces (used as a short lease).
type BootstrapStore interface {
	ListAPIKeys(ctx context.Context) ([]*storage.APIKey, error)
	CreateAPIKey(ctx context.Context, k *storage.APIKey) error
	PutNonce(ctx context.Context, nonce string, expires time.Time) error
	ConsumeNonce(ctx context.Context, nonce string, now time.Time) error
}

// Bootstrap is what EnsureAdmin did.
type Bootstrap struct {
	// Created is true when this call stored a new admin key.
	Created bool
	// Generated is the key this call generated (zero unless Created with
	// no given key): the caller shows it once and never logs it.
	Generated Key
	// ID is the id of the key stored (when Created).
	ID string
}

// EnsureAdmin makes sure the store holds an active admin key. When one
// exists it does nothing (and does not call given). Otherwise it stores the
// key given returns (aak_<id>_<secret>, from a file or the environment)
// when not empty, else a generated key, which it returns for the caller to
// show once. given may be nil. Replicas starting together create exactly
// one: the one that wins a lease (a nonce) creates it, the others wait
// until it appears.
func EnsureAdmin(ctx context.Context, st BootstrapStore, given func() (string, error), now func() time.Time) (Bootstrap, error) {
	if now == nil {
		now = time.Now
	}
	if ok, err := hasActiveAdmin(ctx, st); err != nil || ok {
		return Bootstrap{}, err
	}
	var key Key
	supplied := false
	if given != nil {
		s, err := given()
		if err != nil {
			return Bootstrap{}, fmt.Errorf("bootstrap admin key: %w", err)
		}
		if s != "" {
			if key, err = ParseKey(s); err != nil {
				return Bootstrap{}, fmt.Errorf("bootstrap admin key: %w", err)
			}
			supplied = true
		}
	}
	for {
		ok, err := hasActiveAdmin(ctx, st)
		if err != nil || ok {
			return Bootstrap{}, err
		}
		err = st.PutNonce(ctx, bootstrapLease, now().Add(30*time.Second))
		switch {
		case err == nil:
			// Won the lease: check again (a previous holder may have stored
			// one after our read), then create, then release the lease.
			defer func() { _ = st.ConsumeNonce(context.WithoutCancel(ctx), bootstrapLease, now()) }()
			if ok, err := hasActiveAdmin(ctx, st); err != nil || ok {
				return Bootstrap{}, err
			}
			b := Bootstrap{Created: true}
			if !supplied {
				if key, err = NewKey(); err != nil {
					return Bootstrap{}, err
				}
				b.Generated = key
			}
			b.ID = key.ID
			err := st.CreateAPIKey(ctx, &storage.APIKey{ID: key.ID, Name: BootstrapKeyName, Role: RoleAdmin.String(),
				Hash: key.Hash(), CreatedAt: now(), CreatedBy: "gateway bootstrap"})
			if errors.Is(err, storage.ErrConflict) {
				return Bootstrap{}, fmt.Errorf("bootstrap admin key: key id %s exists but is revoked or not an admin key: give another key (aasm admin key create prints one format; any aak_<id>_<secret> with a fresh id works)", key.ID)
			}
			if err != nil {
				return Bootstrap{}, fmt.Errorf("store bootstrap admin key: %w", err)
			}
			return b, nil
		case errors.Is(err, storage.ErrConflict):
			select { // another replica is creating it
			case <-ctx.Done():
				return Bootstrap{}, fmt.Errorf("wait for the admin key another replica is creating: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		default:
			return Bootstrap{}, fmt.Errorf("bootstrap admin key: %w", err)
		}
	}
}

func hasActiveAdmin(ctx context.Context, st BootstrapStore) (bool, error) {
	keys, err := st.ListAPIKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("bootstrap admin key: list keys: %w", err)
	}
	for _, k := range keys {
		if !k.Revoked() && k.Role == RoleAdmin.String() {
			return true, nil
		}
	}
	return false, nil
}
