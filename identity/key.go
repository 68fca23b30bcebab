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
// it on first start (LoadOrCreateSeed).
func LoadOrCreateSigningKey(ctx context.Context, st KeyStore) ([]byte, error) {
	return LoadOrCreateSeed(ctx, st, SigningKeySecret, "token signing key")
}

// LoadOrCreateSeed returns the Ed25519 key seed kept in the secret name,
// creating it on first start; what names the key in errors. Replicas
// starting together agree on one key: the one that wins a lease (the nonce
// name+".lease", ErrConflict for the others) generates and stores it, the
// others wait for it to appear.
func LoadOrCreateSeed(ctx context.Context, st KeyStore, name, what string) ([]byte, error) {
	lease := name + ".lease"
	if name == SigningKeySecret {
		lease = signingKeyLease
	}
	for {
		seed, err := st.GetSecret(ctx, name)
		if err == nil {
			if len(seed) != ed25519.SeedSize {
				return nil, fmt.Errorf("load %s: secret %s is %d bytes, want %d", what, name, len(seed), ed25519.SeedSize)
			}
			return seed, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("load %s: %w", what, err)
		}
		err = st.PutNonce(ctx, lease, time.Now().Add(30*time.Second))
		switch {
		case err == nil:
			// Won the lease: check again (a previous holder may have stored
			// it after our read), then create.
			if seed, err := st.GetSecret(ctx, name); err == nil {
				return seed, nil
			}
			seed, err := NewSeed()
			if err != nil {
				return nil, err
			}
			if err := st.PutSecret(ctx, name, seed); err != nil {
				return nil, fmt.Errorf("store %s: %w", what, err)
			}
			return seed, nil
		case errors.Is(err, storage.ErrConflict):
			select { // another replica is creating it
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for the %s another replica is creating: %w", what, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		default:
			return nil, fmt.Errorf("create %s: %w", what, err)
		}
	}
}
