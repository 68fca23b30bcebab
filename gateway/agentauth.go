package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
)

// CredentialTokenHeader is the gRPC metadata key (and, for ext_authz, the
// HTTP request header) that carries an agent's credential token on calls
// whose request message has no credential_token field.
const CredentialTokenHeader = "x-aa-credential-token"

// DefaultSPIFFETrustDomain is the trust domain of agent client certificates
// when none is configured.
const DefaultSPIFFETrustDomain = "agent-assembly"

// AgentAuthMode says whether agent-facing calls must prove their agent.
type AgentAuthMode string

// Agent authentication modes.
const (
	// AgentAuthToken requires every agent-facing call to prove the agent it
	// names with a credential token or an agent client certificate.
	AgentAuthToken AgentAuthMode = "token"
	// AgentAuthOff trusts the agent a call names (development only; the
	// server refuses it on a non-loopback listener).
	AgentAuthOff AgentAuthMode = "off"
)

// ParseAgentAuthMode reads "token" or "off".
func ParseAgentAuthMode(s string) (AgentAuthMode, error) {
	switch m := AgentAuthMode(s); m {
	case AgentAuthToken, AgentAuthOff:
		return m, nil
	}
	return "", fmt.Errorf("agent auth mode must be token or off, not %q", s)
}

// Messages of refusals. They are the same whatever went wrong, so a caller
// learns nothing about tokens it does not hold; the audit record and the
// metric carry the cause.
const (
	msgUnauthenticated = "agent not authenticated: present the credential token Register returned (the credential_token field or x-aa-credential-token metadata) or an agent client certificate"
	msgMismatch        = "agent credential does not belong to the agent named in the request"
	msgUnavailable     = "agent credential cannot be checked now (registry unavailable); retry"
)

// AgentAuthOptions configures an AgentAuth.
type AgentAuthOptions struct {
	// Mode is AgentAuthToken (default) or AgentAuthOff.
	Mode AgentAuthMode
	// Issuer verifies credential tokens (signature, expiry, revocation and
	// killed agents through its registry). Required in token mode.
	Issuer *identity.Issuer
	// TrustDomain is the SPIFFE trust domain of agent client certificates,
	// spiffe://<trust-domain>/agent/<org>/<team>/<agent> (default
	// DefaultSPIFFETrustDomain).
	TrustDomain string
	// Core audits refusals as governance events; nil only logs them.
	Core *Core
	// Logger receives refusals at debug level and audit failures.
	Logger *slog.Logger
	// Registry, when set, receives the aa_agent_auth_* metrics.
	Registry prometheus.Registerer
	// CacheSize bounds the verified tokens kept (default 65536).
	CacheSize int
	// CacheTTL is the longest a verified token is trusted without verifying
	// it again (default 30s); never past the token's expiry. Revocations
	// drop entries at once (Forget), so this is only the backstop.
	CacheTTL time.Duration
	// AuditRate and AuditBurst bound the refusals audited per second
	// (default 20, burst 100); the rest are counted, and the next audited
	// refusal says how many were not written.
	AuditRate  float64
	AuditBurst int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// AgentAuth authenticates agents on the agent-facing surfaces: by their
// credential token, verified once and then kept in a bounded cache keyed by
// the token's SHA-256 (so the hot path pays a hash and a map lookup, not an
// Ed25519 verification), or by a verified client certificate whose URI SAN
// is spiffe://<trust-domain>/agent/<org>/<team>/<agent>.
//
// A nil *AgentAuth authenticates nothing and trusts the named agent, like
// AgentAuthOff; the gateway server always sets one.
type AgentAuth struct {
	o     AgentAuthOptions
	log   *slog.Logger
	mu    sync.RWMutex
	cache map[[32]byte]authEntry
	epoch atomic.Uint64 // bumped by Forget; a verification that saw an older epoch is not cached
	m     authMetrics
	lim   limiter
}

// authEntry is one verified token.
type authEntry struct {
	claims identity.Claims
	until  time.Time
}

type authMetrics struct {
	refusals     *prometheus.CounterVec
	suppressed   prometheus.Counter
	cache        *prometheus.CounterVec
	hits, misses prometheus.Counter // cache's two series, resolved once
}

// NewAgentAuth returns an AgentAuth with defaults applied.
func NewAgentAuth(o AgentAuthOptions) (*AgentAuth, error) {
	if o.Mode == "" {
		o.Mode = AgentAuthToken
	}
	if _, err := ParseAgentAuthMode(string(o.Mode)); err != nil {
		return nil, fmt.Errorf("new agent auth: %w", err)
	}
	if o.Mode == AgentAuthToken && o.Issuer == nil {
		return nil, errors.New("new agent auth: an issuer is required in token mode")
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultSPIFFETrustDomain
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 1 << 16
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 30 * time.Second
	}
	if o.AuditRate <= 0 {
		o.AuditRate = 20
	}
	if o.AuditBurst <= 0 {
		o.AuditBurst = 100
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &AgentAuth{o: o, log: o.Logger, cache: map[[32]byte]authEntry{},
		lim: limiter{rate: o.AuditRate, burst: float64(o.AuditBurst), tokens: float64(o.AuditBurst)}}
	a.m = authMetrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "agent_auth_refusals_total",
			Help: "Agent-facing calls refused because the agent was not authenticated, by surface and cause (missing, malformed, bad_signature, expired, revoked, mismatch, unavailable).",
		}, []string{"surface", "cause"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "aa", Name: "agent_auth_refusals_unaudited_total",
			Help: "Agent authentication refusals not written to the audit log because they arrived faster than the audit bound.",
		}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "aa", Name: "agent_auth_token_cache_total",
			Help: "Credential token lookups by result (hit: verified earlier, miss: verified now).",
		}, []string{"result"}),
	}
	a.m.hits, a.m.misses = a.m.cache.WithLabelValues("hit"), a.m.cache.WithLabelValues("miss")
	if o.Registry != nil {
		for _, c := range []prometheus.Collector{a.m.refusals, a.m.suppressed, a.m.cache} {
			if err := o.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("register agent auth metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Enabled reports whether agents must authenticate.
func (a *AgentAuth) Enabled() bool { return a != nil && a.o.Mode == AgentAuthToken }

// Authenticate proves the agent of an agent-facing call on surface (a short
// name for metrics and audit, e.g. "CheckAction"). The credential is, in
// order: token (the request's credential_token field), the
// x-aa-credential-token metadata, then a verified agent client certificate.
// When named is not zero it must be the proven agent. The proven agent is
// returned; with authentication off, named is returned unchecked.
//
// Refusals are gRPC status errors: UNAUTHENTICATED (no, malformed, forged,
// expired or revoked credential), PERMISSION_DENIED (a credential of another
// agent) or UNAVAILABLE (the registry could not be read; fail closed). Each
// is counted and audited as a governance event.
func (a *AgentAuth) Authenticate(ctx context.Context, surface, token string, named action.AgentID) (action.AgentID, error) {
	if !a.Enabled() {
		return named, nil
	}
	if token == "" {
		token = TokenFromMetadata(ctx)
	}
	var got action.AgentID
	if token != "" {
		c, cause, err := a.verify(ctx, token)
		if err != nil {
			return action.AgentID{}, a.refuse(ctx, surface, cause, named, err)
		}
		got = c.Agent
	} else if id, ok := a.PeerAgent(ctx); ok {
		got = id
	} else {
		return action.AgentID{}, a.refuse(ctx, surface, "missing", named, nil)
	}
	if !named.IsZero() && named != got {
		return action.AgentID{}, a.refuse(ctx, surface, "mismatch", named, fmt.Errorf("credential of %s", got))
	}
	return got, nil
}

// maxMetadataTokens bounds the credential tokens one call may carry.
const maxMetadataTokens = 64

// AuthenticateAll proves the agents of a call that may speak for several
// (a runtime governing more than one agent): every x-aa-credential-token
// metadata value (at most 64) and the agent client certificate. Each token
// must verify; at least one credential is required. With authentication
// off it returns nil, nil: every agent is allowed.
func (a *AgentAuth) AuthenticateAll(ctx context.Context, surface string) (map[action.AgentID]bool, error) {
	if !a.Enabled() {
		return nil, nil
	}
	toks := metadata.ValueFromIncomingContext(ctx, CredentialTokenHeader)
	if len(toks) > maxMetadataTokens {
		return nil, a.refuse(ctx, surface, "malformed", action.AgentID{}, fmt.Errorf("%d tokens, over the limit of %d", len(toks), maxMetadataTokens))
	}
	out := make(map[action.AgentID]bool, len(toks)+1)
	for _, t := range toks {
		c, cause, err := a.verify(ctx, t)
		if err != nil {
			return nil, a.refuse(ctx, surface, cause, action.AgentID{}, err)
		}
		out[c.Agent] = true
	}
	if id, ok := a.PeerAgent(ctx); ok {
		out[id] = true
	}
	if len(out) == 0 {
		return nil, a.refuse(ctx, surface, "missing", action.AgentID{}, nil)
	}
	return out, nil
}

// AuthenticateStream proves the agent of a stream that names its agent
// later (an ADS stream's node id), from the first x-aa-credential-token
// metadata value or the agent client certificate, and returns the token
// presented ("" for a certificate). surface names the stream in metrics and
// audit. With authentication off it returns a zero agent and no error.
func (a *AgentAuth) AuthenticateStream(ctx context.Context, surface string) (action.AgentID, string, error) {
	if !a.Enabled() {
		return action.AgentID{}, "", nil
	}
	tok := TokenFromMetadata(ctx)
	id, err := a.Authenticate(ctx, surface, tok, action.AgentID{})
	return id, tok, err
}

// RefuseMismatch counts and audits a call that speaks for named without its
// credential, and returns PERMISSION_DENIED.
func (a *AgentAuth) RefuseMismatch(ctx context.Context, surface string, named action.AgentID) error {
	return a.refuse(ctx, surface, "mismatch", named, nil)
}

// AuthenticateProto is Authenticate for a request's AgentId field.
func (a *AgentAuth) AuthenticateProto(ctx context.Context, surface, token string, named *v1.AgentId) (action.AgentID, error) {
	return a.Authenticate(ctx, surface, token, action.AgentID{Org: named.GetOrgId(), Team: named.GetTeamId(), Agent: named.GetAgentId()})
}

// Refuse counts and audits a refusal decided outside Authenticate (e.g. by
// ext_authz, which answers with an HTTP denial rather than a gRPC status),
// and returns the status error Authenticate would have returned.
func (a *AgentAuth) Refuse(ctx context.Context, surface, cause string, named action.AgentID) error {
	return a.refuse(ctx, surface, cause, named, nil)
}

// TokenFromMetadata returns the x-aa-credential-token of the incoming call.
func TokenFromMetadata(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, CredentialTokenHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// verify returns the claims of a token, from the cache when it was verified
// recently, and the cause of a refusal.
func (a *AgentAuth) verify(ctx context.Context, token string) (identity.Claims, string, error) {
	// Sum256 reads the bytes and keeps nothing: hash the string in place
	// rather than copying the token on every check.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	now := a.o.Now()
	a.mu.RLock()
	e, ok := a.cache[key]
	a.mu.RUnlock()
	if ok && now.Before(e.until) {
		a.m.hits.Inc()
		return e.claims, "", nil
	}
	a.m.misses.Inc()
	epoch := a.epoch.Load()
	c, err := a.o.Issuer.Verify(ctx, token)
	if err != nil {
		return identity.Claims{}, tokenCause(err), err
	}
	until := now.Add(a.o.CacheTTL)
	if c.ExpiresAt.Before(until) {
		until = c.ExpiresAt
	}
	a.mu.Lock()
	// A Forget that ran while this token was being verified may have
	// revoked it; do not cache an answer read before it.
	if a.epoch.Load() == epoch {
		if len(a.cache) >= a.o.CacheSize {
			a.evictLocked(now)
		}
		a.cache[key] = authEntry{claims: c, until: until}
	}
	a.mu.Unlock()
	return c, "", nil
}

// evictLocked drops expired entries, and when none were, about a tenth of
// the cache (map order is random enough for a bound, not a policy).
func (a *AgentAuth) evictLocked(now time.Time) {
	for k, e := range a.cache {
		if !now.Before(e.until) {
			delete(a.cache, k)
		}
	}
	n := len(a.cache) - a.o.CacheSize*9/10
	for k := range a.cache {
		if n <= 0 {
			break
		}
		delete(a.cache, k)
		n--
	}
}

// Forget drops every cached token of agent, so its next call is verified
// against the registry again. The gateway calls it when an agent's
// credential is revoked or the agent killed, on this replica at once and
// on the others when they read the invalidation event.
func (a *AgentAuth) Forget(agent action.AgentID) {
	if a == nil {
		return
	}
	a.epoch.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.cache {
		if e.claims.Agent == agent {
			delete(a.cache, k)
		}
	}
}

// ForgetAll drops every cached verification, so that every token is
// verified again: after a token-signing key was revoked.
func (a *AgentAuth) ForgetAll() {
	if a == nil {
		return
	}
	a.epoch.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.cache)
}

// OnInvalidation is the hook for Invalidations.OnEvent: revocations, kills
// and registrations (a re-registered agent may have had its old token
// revoked) drop the agent's cached tokens.
func (a *AgentAuth) OnInvalidation(ev *storage.InvalidationEvent) {
	switch ev.Type {
	case storage.InvalidateRevoked, storage.InvalidateKilled, storage.InvalidateRegistered:
		a.Forget(ev.Agent)
	}
}

// Registry wraps the agent registry the lifecycle service writes through, so
// revoking a credential or killing an agent drops its cached tokens on this
// replica before the call returns.
func (a *AgentAuth) Registry(r storage.AgentRegistry) storage.AgentRegistry {
	if a == nil {
		return r
	}
	return &forgettingRegistry{AgentRegistry: r, a: a}
}

type forgettingRegistry struct {
	storage.AgentRegistry
	a *AgentAuth
}

func (f *forgettingRegistry) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	err := f.AgentRegistry.RevokeCredential(ctx, tokenID, expires)
	f.a.forgetToken(tokenID)
	return err
}

func (f *forgettingRegistry) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	err := f.AgentRegistry.SetAgentStatus(ctx, id, st, reason)
	f.a.Forget(id)
	return err
}

// forgetToken drops the cache entry of one token id.
func (a *AgentAuth) forgetToken(tokenID string) {
	a.epoch.Add(1)
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, e := range a.cache {
		if e.claims.TokenID == tokenID {
			delete(a.cache, k)
		}
	}
}

// PeerAgent returns the agent named by the verified client certificate of
// the call's connection: a URI SAN spiffe://<trust-domain>/agent/<org>/<team>/<agent>.
func (a *AgentAuth) PeerAgent(ctx context.Context) (action.AgentID, bool) {
	if a == nil {
		return action.AgentID{}, false
	}
	leaf := verifiedPeer(ctx)
	if leaf == nil {
		return action.AgentID{}, false
	}
	for _, u := range leaf.URIs {
		if id, ok := a.ParseSPIFFE(u); ok {
			return id, true
		}
	}
	return action.AgentID{}, false
}

// PeerVerified reports whether the call's connection carries a client
// certificate the listener's TLS configuration verified.
func PeerVerified(ctx context.Context) bool { return verifiedPeer(ctx) != nil }

func verifiedPeer(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// ParseSPIFFE reads spiffe://<trust-domain>/agent/<org>/<team>/<agent> of
// this gateway's trust domain.
func (a *AgentAuth) ParseSPIFFE(u *url.URL) (action.AgentID, bool) {
	if u == nil || u.Scheme != "spiffe" || u.Host != a.o.TrustDomain || u.RawQuery != "" || u.Fragment != "" {
		return action.AgentID{}, false
	}
	p := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(p) != 4 || p[0] != "agent" {
		return action.AgentID{}, false
	}
	id := action.AgentID{Org: p[1], Team: p[2], Agent: p[3]}
	if _, err := agentIDFrom("spiffe", agentIDTo(id)); err != nil {
		return action.AgentID{}, false
	}
	return id, true
}

// tokenCause names a verification failure for metrics and audit.
func tokenCause(err error) string {
	switch {
	case errors.Is(err, identity.ErrExpired):
		return "expired"
	case errors.Is(err, identity.ErrRevoked):
		return "revoked"
	case errors.Is(err, identity.ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, identity.ErrMalformed):
		return "malformed"
	}
	return "unavailable"
}

// refuse counts, logs and (within the audit bound) audits a refusal, and
// returns its status error.
func (a *AgentAuth) refuse(ctx context.Context, surface, cause string, named action.AgentID, err error) error {
	a.m.refusals.WithLabelValues(surface, cause).Inc()
	detail := ""
	if err != nil {
		detail = err.Error()
	}
	a.log.DebugContext(ctx, "agent not authenticated", "surface", surface, "cause", cause, "agent", named.String(), "err", detail)
	if skipped, ok := a.lim.take(a.o.Now()); ok && a.o.Core != nil {
		fields := map[string]any{"surface": surface, "cause": cause}
		if detail != "" {
			fields["detail"] = detail
		}
		if skipped > 0 {
			fields["unaudited_before"] = skipped
		}
		payload, _ := json.Marshal(fields)
		rule := "agent.auth.unauthenticated"
		if cause == "mismatch" {
			rule = "agent.auth.mismatch"
		}
		_ = a.o.Core.AuditGovernance(context.WithoutCancel(ctx), named, rule,
			fmt.Sprintf("%s refused: agent not authenticated (%s)", surface, cause), payload)
	} else if !ok {
		a.m.suppressed.Inc()
	}
	switch cause {
	case "mismatch":
		return status.Error(codes.PermissionDenied, msgMismatch)
	case "unavailable":
		return status.Error(codes.Unavailable, msgUnavailable)
	}
	return status.Error(codes.Unauthenticated, msgUnauthenticated)
}

// limiter is a token bucket that also counts what it refused since the
// last token it gave.
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	tokens  float64
	last    time.Time
	skipped int64
}

// take returns whether a token was available, and how many takes were
// refused before this successful one.
func (l *limiter) take(now time.Time) (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		l.skipped++
		return 0, false
	}
	l.tokens--
	s := l.skipped
	l.skipped = 0
	return s, true
}

// WithAgentAuth makes ReportEvents require the credentials of every agent
// its events are for (x-aa-credential-token metadata, one value per agent,
// or an agent client certificate). Call it after WithReports. It returns s.
func (s *AuditService) WithAgentAuth(a *AgentAuth) *AuditService {
	if s.reports != nil {
		s.reports.auth = a
	}
	return s
}
