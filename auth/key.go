package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeyPrefix starts every API key: aak_<id>_<secret>.
const KeyPrefix = "aak_"

// Sizes of a key's parts before encoding.
const (
	idBytes     = 8  // 16 hex characters
	secretBytes = 32 // 43 base64url characters
)

// ErrMalformedKey means a string is not an API key.
var ErrMalformedKey = errors.New("malformed API key")

// Key is an API key: a public id and a secret. Only the secret's SHA-256
// is stored; the whole key is shown once, when it is created or rotated.
type Key struct {
	// ID is 16 lower-case hex characters; it names the key in lists,
	// rotate and revoke, and is not secret.
	ID string
	// Secret is 32 random bytes, base64url without padding.
	Secret string
}

// String returns the key as presented: aak_<id>_<secret>.
func (k Key) String() string { return KeyPrefix + k.ID + "_" + k.Secret }

// Hash returns the SHA-256 of the secret, as stored.
func (k Key) Hash() []byte { return HashSecret(k.Secret) }

// HashSecret returns the SHA-256 of a key's secret.
func HashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// Matches reports, in constant time, whether the key's secret has hash.
func (k Key) Matches(hash []byte) bool {
	return subtle.ConstantTimeCompare(k.Hash(), hash) == 1
}

// NewKey returns a key with a fresh random id and secret.
func NewKey() (Key, error) {
	id := make([]byte, idBytes)
	if _, err := rand.Read(id); err != nil {
		return Key{}, fmt.Errorf("generate api key id: %w", err)
	}
	k := Key{ID: hex.EncodeToString(id)}
	var err error
	if k.Secret, err = NewSecret(); err != nil {
		return Key{}, err
	}
	return k, nil
}

// NewSecret returns a fresh random secret (for a rotation).
func NewSecret() (string, error) {
	s := make([]byte, secretBytes)
	if _, err := rand.Read(s); err != nil {
		return "", fmt.Errorf("generate api key secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(s), nil
}

// ParseKey reads aak_<id>_<secret>. The error says which part is wrong but
// never repeats the input.
func ParseKey(s string) (Key, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), KeyPrefix)
	if !ok {
		return Key{}, fmt.Errorf("%w: want %s<id>_<secret>", ErrMalformedKey, KeyPrefix)
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok {
		return Key{}, fmt.Errorf("%w: want %s<id>_<secret>", ErrMalformedKey, KeyPrefix)
	}
	if len(id) != 2*idBytes || !isLowerHex(id) {
		return Key{}, fmt.Errorf("%w: the id must be %d lower-case hex characters", ErrMalformedKey, 2*idBytes)
	}
	if b, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(b) != secretBytes {
		return Key{}, fmt.Errorf("%w: the secret must be %d bytes in unpadded base64url", ErrMalformedKey, secretBytes)
	}
	return Key{ID: id, Secret: secret}, nil
}

func isLowerHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
