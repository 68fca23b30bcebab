package identity

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// SigningKeySecret is the name under which the token-signing key seed is
// kept in the store's secrets. Operators' secret names are upper case, so
// the API cannot overwrite or delete it.
const SigningKeySecret = "aa.token-signing-key"

// signingKeyLease is the nonce that elects the one replica generating the
// key when several start on an empty store at once.
const signingKeyLease = "aa.token-signing-key.lease"

// KeyStore is what LoadOrCreateSigningKey needs: encrypted secrets and the
// registry's single-use nonces (used as a short lease).
type KeyStore interface {
	GetSecret(ctx context.Context, name string) ([]byte, error)
	PutSecret(ctx context.Context, name string, value []byte) error
	PutNonce(ctx context.Context, nonce string, expires time.Time) error
}

// LoadOrCreateSigningKey returns the shared token-signing key seed, creating
// it on first start. Replicas starting together agree on one key: the one
// that wins a lease (a nonce, ErrConflict for the others) generates and
// stores it, the others wait for it to appear.
func LoadOrCreateSigningKey(ctx context.Context, st KeyStore) ([]byte, error) {
	for {
		seed, err := st.GetSecret(ctx, SigningKeySecret)
		if err == nil {
			if len(seed) != ed25519.SeedSize {
				return nil, fmt.Errorf("load token signing key: secret %s is %d bytes, want %d", SigningKeySecret, len(seed), ed25519.SeedSize)
			}
			return seed, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("load token signing key: %w", err)
		}
		err = st.PutNonce(ctx, signingKeyLease, time.Now().Add(30*time.Second))
		switch {
		case err == nil:
			// Won the lease: check again (a previous holder may have stored
			// it after our read), then create.
			if seed, err := st.GetSecret(ctx, SigningKeySecret); err == nil {
				return seed, nil
			}
			seed, err := NewSeed()
			if err != nil {
				return nil, err
			}
			if err := st.PutSecret(ctx, SigningKeySecret, seed); err != nil {
				return nil, fmt.Errorf("store token signing key: %w", err)
			}
			return seed, nil
		case errors.Is(err, storage.ErrConflict):
			select { // another replica is creating it
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for the token signing key another replica is creating: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		default:
			return nil, fmt.Errorf("create token signing key: %w", err)
		}
	}
}
