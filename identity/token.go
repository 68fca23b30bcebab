package identity

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Sentinel errors of VerifyToken. Callers answer all of them with
// UNAUTHENTICATED; the distinction is for logs and tests.
var (
	// ErrMalformed means the token is not one this gateway issues.
	ErrMalformed = errors.New("malformed credential token")
	// ErrBadSignature means the token was not signed with the gateway's
	// current or previous key.
	ErrBadSignature = errors.New("credential token signature does not verify")
	// ErrExpired means the token's expiry has passed.
	ErrExpired = errors.New("credential token expired")
	// ErrRevoked means the token was revoked (deregistration) or its agent killed.
	ErrRevoked = errors.New("credential token revoked")
)

// tokenPrefix names the token format version.
const tokenPrefix = "aa1."

// Claims are what a token asserts.
type Claims struct {
	// TokenID is unique per token; revocation is by token id.
	TokenID   string         `json:"jti"`
	Agent     action.AgentID `json:"-"`
	IssuedAt  time.Time      `json:"-"`
	ExpiresAt time.Time      `json:"-"`
}

// wireClaims is the signed JSON form of Claims.
type wireClaims struct {
	TokenID string `json:"jti"`
	Org     string `json:"org"`
	Team    string `json:"team"`
	Agent   string `json:"agent"`
	Issued  int64  `json:"iat"`
	Expires int64  `json:"exp"`
}

// Registry is what VerifyToken consults: revoked token ids and agents'
// statuses (a killed agent's tokens are invalid). storage/cache.Store
// implements it without a store round-trip on the common path.
type Registry interface {
	CredentialRevoked(ctx context.Context, tokenID string) (bool, error)
	GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error)
}

// Options configures an Issuer.
type Options struct {
	// TTL is how long issued tokens live (default 24h).
	TTL time.Duration
	// Registry, when set, makes VerifyToken reject revoked tokens and tokens
	// of killed or unknown agents.
	Registry Registry
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Reload, when set, is called when a token's signature matches none of
	// the issuer's keys, at most once per reloadEvery, and the token is
	// checked again: a key rotated on another replica is then accepted at
	// once. Reload is expected to call SetKeys.
	Reload func(ctx context.Context) error
}

// reloadEvery bounds how often a token with an unknown signature reloads
// the keys (Options.Reload), so forged tokens cannot load the store.
const reloadEvery = time.Second

// keySet is what an Issuer signs and verifies with.
type keySet struct {
	sign ed25519.PrivateKey
	// verify holds the signing key's public key first, then the previous
	// key's, whose tokens stay valid until they expire.
	verify []ed25519.PublicKey
}

// Issuer signs credential tokens with its current Ed25519 key and verifies
// them with the current key or the previous one (see SetKeys).
type Issuer struct {
	keys       atomic.Pointer[keySet]
	opts       Options
	lastReload atomic.Int64 // unix nanoseconds of the last Options.Reload
}

// NewIssuer returns an Issuer for the 32-byte Ed25519 seed.
func NewIssuer(seed []byte, opts Options) (*Issuer, error) {
	if opts.TTL <= 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	i := &Issuer{opts: opts}
	if _, _, err := i.SetKeys(seed, nil); err != nil {
		return nil, fmt.Errorf("new token issuer: %w", err)
	}
	return i, nil
}

// SetKeys makes current the signing key and previous (nil for none) a key
// that still verifies the tokens it signed. It reports whether the key set
// changed, and whether a key that verified tokens before no longer does (a
// revocation: cached verifications should be dropped).
func (i *Issuer) SetKeys(current, previous []byte) (changed, removed bool, err error) {
	ks := &keySet{}
	for n, seed := range [][]byte{current, previous} {
		if n == 1 && seed == nil {
			break
		}
		if len(seed) != ed25519.SeedSize {
			return false, false, fmt.Errorf("signing key seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
		}
		key := ed25519.NewKeyFromSeed(seed)
		if n == 0 {
			ks.sign = key
		}
		ks.verify = append(ks.verify, key.Public().(ed25519.PublicKey))
	}
	old := i.keys.Swap(ks)
	if old == nil {
		return true, false, nil
	}
	changed = !old.sign.Equal(ks.sign) || len(old.verify) != len(ks.verify)
	for _, p := range old.verify {
		if !slices.ContainsFunc(ks.verify, func(q ed25519.PublicKey) bool { return q.Equal(p) }) {
			changed, removed = true, true
		}
	}
	return changed, removed, nil
}

// KeyIDs names the signing key and then the previous key, if any: the
// first 8 bytes of the SHA-256 of each public key, in hex.
func (i *Issuer) KeyIDs() []string {
	var ids []string
	for _, p := range i.keys.Load().verify {
		ids = append(ids, KeyID(p))
	}
	return ids
}

// KeyID names a token-signing public key the way audit checkpoint keys are
// named (storage.CheckpointKeyID): the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string { return storage.CheckpointKeyID(pub) }

// PublicKey returns the key that verifies the tokens this issuer signs now
// (for verifiers outside the gateway, e.g. a runtime checking tokens offline).
func (i *Issuer) PublicKey() ed25519.PublicKey { return bytes.Clone(i.keys.Load().verify[0]) }

// TTL is how long issued tokens live.
func (i *Issuer) TTL() time.Duration { return i.opts.TTL }

// Issue returns a new token for agent.
func (i *Issuer) Issue(agent action.AgentID) (string, Claims, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return "", Claims{}, fmt.Errorf("issue token: %w", err)
	}
	now := i.opts.Now()
	c := Claims{TokenID: id.String(), Agent: agent, IssuedAt: now, ExpiresAt: now.Add(i.opts.TTL)}
	body, err := json.Marshal(wireClaims{TokenID: c.TokenID, Org: agent.Org, Team: agent.Team, Agent: agent.Agent,
		Issued: now.Unix(), Expires: c.ExpiresAt.Unix()})
	if err != nil {
		return "", Claims{}, fmt.Errorf("issue token: %w", err)
	}
	// Expiry has second resolution on the wire; report what a verifier sees.
	c.ExpiresAt = time.Unix(c.ExpiresAt.Unix(), 0)
	payload := tokenPrefix + base64.RawURLEncoding.EncodeToString(body)
	sig := ed25519.Sign(i.keys.Load().sign, []byte(payload))
	return payload + "." + base64.RawURLEncoding.EncodeToString(sig), c, nil
}

// Parse checks the token's form, signature and expiry, and returns its
// claims. It does not consult revocations; VerifyToken does.
func (i *Issuer) Parse(token string) (Claims, error) {
	rest, ok := strings.CutPrefix(token, tokenPrefix)
	if !ok {
		return Claims{}, fmt.Errorf("%w: want the aa1. form returned by Register", ErrMalformed)
	}
	body64, sig64, ok := strings.Cut(rest, ".")
	if !ok || len(token) > 4096 {
		return Claims{}, ErrMalformed
	}
	sig, err := base64.RawURLEncoding.DecodeString(sig64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return Claims{}, fmt.Errorf("%w: bad signature encoding", ErrMalformed)
	}
	if !slices.ContainsFunc(i.keys.Load().verify, func(pub ed25519.PublicKey) bool {
		return ed25519.Verify(pub, []byte(tokenPrefix+body64), sig)
	}) {
		return Claims{}, ErrBadSignature
	}
	body, err := base64.RawURLEncoding.DecodeString(body64)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: bad claims encoding", ErrMalformed)
	}
	var w wireClaims
	if err := json.Unmarshal(body, &w); err != nil || w.TokenID == "" || w.Org == "" || w.Team == "" || w.Agent == "" {
		return Claims{}, fmt.Errorf("%w: incomplete claims", ErrMalformed)
	}
	c := Claims{TokenID: w.TokenID, Agent: action.AgentID{Org: w.Org, Team: w.Team, Agent: w.Agent},
		IssuedAt: time.Unix(w.Issued, 0), ExpiresAt: time.Unix(w.Expires, 0)}
	if !i.opts.Now().Before(c.ExpiresAt) {
		return c, fmt.Errorf("%w at %s", ErrExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return c, nil
}

// VerifyToken returns the agent a token was issued to, after checking its
// signature, expiry, revocation and that its agent is not killed. Errors
// match ErrMalformed, ErrBadSignature, ErrExpired or ErrRevoked, or wrap the
// registry's error (fail closed: storage.ErrUnavailable denies).
func (i *Issuer) VerifyToken(ctx context.Context, token string) (action.AgentID, error) {
	c, err := i.Verify(ctx, token)
	return c.Agent, err
}

// Verify is VerifyToken returning every claim.
func (i *Issuer) Verify(ctx context.Context, token string) (Claims, error) {
	c, err := i.Parse(token)
	if errors.Is(err, ErrBadSignature) && i.reload(ctx) {
		c, err = i.Parse(token) // signed with a key rotated in on another replica?
	}
	if err != nil {
		return Claims{}, err
	}
	if i.opts.Registry == nil {
		return c, nil
	}
	revoked, err := i.opts.Registry.CredentialRevoked(ctx, c.TokenID)
	if err != nil {
		return Claims{}, fmt.Errorf("check credential revocation: %w", err)
	}
	if revoked {
		return Claims{}, ErrRevoked
	}
	ag, err := i.opts.Registry.GetAgent(ctx, c.Agent)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return Claims{}, fmt.Errorf("%w: agent %s is not registered", ErrRevoked, c.Agent)
	case err != nil:
		return Claims{}, fmt.Errorf("check agent of credential: %w", err)
	case ag.Status == storage.AgentKilled:
		return Claims{}, fmt.Errorf("%w: agent %s was killed", ErrRevoked, c.Agent)
	}
	return c, nil
}

// reload calls Options.Reload unless it ran less than reloadEvery ago, and
// reports whether it did and succeeded.
func (i *Issuer) reload(ctx context.Context) bool {
	if i.opts.Reload == nil {
		return false
	}
	now, last := time.Now().UnixNano(), i.lastReload.Load()
	if now-last < int64(reloadEvery) || !i.lastReload.CompareAndSwap(last, now) {
		return false
	}
	return i.opts.Reload(ctx) == nil
}

// NewSeed returns a fresh random signing key seed.
func NewSeed() ([]byte, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	return seed, nil
}
