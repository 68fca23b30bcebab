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

// PreviousSigningKeySecret holds the token-signing key seed that was current
// before the last rotation: tokens it signed stay valid until they expire,
// unless the rotation revoked it.
const PreviousSigningKeySecret = "aa.token-signing-key.previous"

// rotateLease, followed by the id of the key being replaced, is the nonce
// that lets a key be rotated away once: of two concurrent rotations, one
// fails instead of both storing a key and one of them being lost.
const rotateLease = "aa.token-signing-key.rotate."

// ErrRotationInProgress is returned by RotateSigningKey when another call
// rotated, or is rotating, the same key.
var ErrRotationInProgress = errors.New("another call is rotating or has just rotated this token-signing key (a rotation that failed half-way can be retried after a minute)")

// LoadSigningKeys returns the current token-signing key seed (created on
// first start) and the previous one, or nil when there is none.
func LoadSigningKeys(ctx context.Context, st KeyStore) (current, previous []byte, err error) {
	if current, err = LoadOrCreateSigningKey(ctx, st); err != nil {
		return nil, nil, err
	}
	previous, err = st.GetSecret(ctx, PreviousSigningKeySecret)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return current, nil, nil
	case err != nil:
		return nil, nil, fmt.Errorf("load previous token signing key: %w", err)
	case len(previous) != ed25519.SeedSize:
		return nil, nil, fmt.Errorf("load previous token signing key: secret %s is %d bytes, want %d", PreviousSigningKeySecret, len(previous), ed25519.SeedSize)
	}
	return current, previous, nil
}

// RotateStore is what RotateSigningKey needs.
type RotateStore interface {
	KeyStore
	DeleteSecret(ctx context.Context, name string) error
}

// RotateSigningKey makes a new token-signing key current. The key it
// replaces becomes the previous key, which still verifies the tokens it
// signed until they expire; with revokePrevious it is dropped instead (and
// so is an older previous key), so every token signed before the rotation
// stops verifying: the answer to a leaked key. Replicas pick the new keys up
// through LoadSigningKeys. It returns the new and previous seeds.
func RotateSigningKey(ctx context.Context, st RotateStore, revokePrevious bool) (current, previous []byte, err error) {
	old, err := LoadOrCreateSigningKey(ctx, st)
	if err != nil {
		return nil, nil, err
	}
	lease := rotateLease + KeyID(ed25519.NewKeyFromSeed(old).Public().(ed25519.PublicKey))
	switch err := st.PutNonce(ctx, lease, time.Now().Add(time.Minute)); {
	case errors.Is(err, storage.ErrConflict):
		return nil, nil, ErrRotationInProgress
	case err != nil:
		return nil, nil, fmt.Errorf("rotate token signing key: %w", err)
	}
	seed, err := NewSeed()
	if err != nil {
		return nil, nil, err
	}
	// The old key is kept as previous (or dropped) before the new one is
	// stored: a failure in between leaves the old key working.
	if revokePrevious {
		if err := st.DeleteSecret(ctx, PreviousSigningKeySecret); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, nil, fmt.Errorf("revoke previous token signing key: %w", err)
		}
	} else if err := st.PutSecret(ctx, PreviousSigningKeySecret, old); err != nil {
		return nil, nil, fmt.Errorf("keep previous token signing key: %w", err)
	}
	if err := st.PutSecret(ctx, SigningKeySecret, seed); err != nil {
		return nil, nil, fmt.Errorf("store new token signing key: %w", err)
	}
	if revokePrevious {
		return seed, nil, nil
	}
	return seed, old, nil
}
