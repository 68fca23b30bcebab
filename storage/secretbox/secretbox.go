// Package secretbox seals secrets at rest with AES-256-GCM under a key the
// gateway loads from its configuration.
//
// A sealed value is: version byte (1), key id (4 bytes: the start of
// SHA-256 of the key), 12-byte random nonce, then the GCM ciphertext and tag.
// The key id lets a Box hold retired keys for reading while sealing with the
// current one, so keys can be rotated without re-encrypting at once.
package secretbox

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/agent-assembly/agent-assembly/storage"
)

// KeySize is the length of a key: 32 bytes for AES-256.
const KeySize = 32

const (
	formatVersion = 1
	keyIDSize     = 4
	nonceSize     = 12
	headerSize    = 1 + keyIDSize + nonceSize
)

// ErrDecrypt means a sealed value could not be opened: wrong key, corrupted
// or moved to another name.
var ErrDecrypt = errors.New("cannot decrypt secret")

// Key is an AES-256 key. Its String method never prints it.
type Key [KeySize]byte

// String hides the key from logs and error messages.
func (k Key) String() string { return "secretbox.Key(redacted)" }

// GoString hides the key from %#v.
func (k Key) GoString() string { return k.String() }

// ID returns the key id stored in values sealed with k, as hex.
func (k Key) ID() string { id := k.id(); return hex.EncodeToString(id[:]) }

func (k Key) id() [keyIDSize]byte {
	sum := sha256.Sum256(k[:])
	return [keyIDSize]byte(sum[:keyIDSize])
}

// GenerateKey returns a new random key.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate secret key: %w", err)
	}
	return k, nil
}

// ParseKey decodes a 32-byte key written as 64 hex digits or as base64
// (standard or URL alphabet, padded or not). Surrounding space is ignored.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	var k Key
	if len(s) == 2*KeySize {
		if b, err := hex.DecodeString(s); err == nil {
			copy(k[:], b)
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != KeySize {
				return Key{}, fmt.Errorf("parse secret key: it decodes to %d bytes, want %d (generate one with: head -c 32 /dev/urandom | base64)", len(b), KeySize)
			}
			copy(k[:], b)
			return k, nil
		}
	}
	return Key{}, errors.New("parse secret key: not 64 hex digits or base64 of 32 bytes (generate one with: head -c 32 /dev/urandom | base64)")
}

// EncodeKey returns k in the base64 form ParseKey and key files use.
func EncodeKey(k Key) string { return base64.StdEncoding.EncodeToString(k[:]) }

// LoadOrCreateKeyFile reads the key in path, or, when the file does not
// exist, creates it (mode 0600, parent directories 0700) with a new random
// key. Two processes starting at once agree on one key: the file is created
// exclusively and the loser reads the winner's.
func LoadOrCreateKeyFile(path string) (Key, error) {
	k, err := readKeyFile(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	k, err = GenerateKey()
	if err != nil {
		return Key{}, err
	}
	// Write to a temporary file and link it into place, so a reader never
	// sees a half-written key and an existing key is never replaced.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".secret-key-*")
	if err != nil {
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	if _, err := tmp.WriteString(EncodeKey(k) + "\n"); err != nil {
		tmp.Close()
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readKeyFile(path)
		}
		return Key{}, fmt.Errorf("create secret key file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return k, nil
}

// ReadKeyFile reads the key in path, which must exist (it is never
// created): for keys kept only to open values sealed before a rotation.
func ReadKeyFile(path string) (Key, error) {
	k, err := readKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("secret key file %s: %w", path, err)
	}
	return k, err
}

func readKeyFile(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Key{}, err
		}
		return Key{}, fmt.Errorf("read secret key file: %w", err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return Key{}, fmt.Errorf("secret key file %s: %w", path, err)
	}
	return k, nil
}

// Box seals with one key and opens with it or any retired key.
type Box struct {
	sealID [keyIDSize]byte
	seal   cipher.AEAD
	open   map[[keyIDSize]byte]cipher.AEAD
}

var _ storage.Sealer = (*Box)(nil)

// New returns a Box sealing with key and also opening values sealed with
// any of retired.
func New(key Key, retired ...Key) (*Box, error) {
	b := &Box{open: make(map[[keyIDSize]byte]cipher.AEAD, 1+len(retired))}
	for i, k := range append([]Key{key}, retired...) {
		block, err := aes.NewCipher(k[:])
		if err != nil {
			return nil, fmt.Errorf("secretbox: %w", err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("secretbox: %w", err)
		}
		id := k.id()
		if i == 0 {
			b.sealID, b.seal = id, aead
		}
		if _, dup := b.open[id]; !dup {
			b.open[id] = aead
		}
	}
	return b, nil
}

// Seal encrypts plaintext, authenticating aad with it.
func (b *Box) Seal(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, headerSize, headerSize+len(plaintext)+b.seal.Overhead())
	out[0] = formatVersion
	copy(out[1:], b.sealID[:])
	if _, err := rand.Read(out[1+keyIDSize : headerSize]); err != nil {
		return nil, fmt.Errorf("seal secret: %w", err)
	}
	return b.seal.Seal(out, out[1+keyIDSize:headerSize], plaintext, aad), nil
}

// Open decrypts a value from Seal; aad must match. It returns an error
// wrapping ErrDecrypt when the value is corrupt, was sealed with an unknown
// key, or under another aad.
func (b *Box) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < headerSize || sealed[0] != formatVersion {
		return nil, fmt.Errorf("open secret: not a sealed value: %w", ErrDecrypt)
	}
	id := [keyIDSize]byte(sealed[1 : 1+keyIDSize])
	aead, ok := b.open[id]
	if !ok {
		return nil, fmt.Errorf("open secret: sealed with key %x, which is not configured: %w", id, ErrDecrypt)
	}
	pt, err := aead.Open(nil, sealed[1+keyIDSize:headerSize], sealed[headerSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("open secret: wrong key, corrupted or moved: %w", ErrDecrypt)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// NeedsReseal reports whether sealed was sealed with a retired key, so a
// rotation job can rewrite it with the current one.
func (b *Box) NeedsReseal(sealed []byte) bool {
	return len(sealed) >= headerSize && !bytes.Equal(sealed[1:1+keyIDSize], b.sealID[:])
}
