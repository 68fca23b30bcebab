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
	"strings"
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
	// ErrBadSignature means the token was not signed with the gateway's key.
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
}

// Issuer signs and verifies credential tokens with one Ed25519 key.
type Issuer struct {
	key  ed25519.PrivateKey
	pub  ed25519.PublicKey
	opts Options
}

// NewIssuer returns an Issuer for the 32-byte Ed25519 seed.
func NewIssuer(seed []byte, opts Options) (*Issuer, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("new token issuer: signing key seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	if opts.TTL <= 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	key := ed25519.NewKeyFromSeed(seed)
	return &Issuer{key: key, pub: key.Public().(ed25519.PublicKey), opts: opts}, nil
}

// PublicKey returns the key that verifies this issuer's tokens (for
// verifiers outside the gateway, e.g. a runtime checking tokens offline).
func (i *Issuer) PublicKey() ed25519.PublicKey { return bytes.Clone(i.pub) }

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
	sig := ed25519.Sign(i.key, []byte(payload))
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
	if !ed25519.Verify(i.pub, []byte(tokenPrefix+body64), sig) {
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

// NewSeed returns a fresh random signing key seed.
func NewSeed() ([]byte, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	return seed, nil
}
