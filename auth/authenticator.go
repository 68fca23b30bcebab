package auth

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Messages of refusals. They never say whether a key exists, was revoked or
// had a wrong secret; the audit record carries the cause.
const (
	// MsgUnauthenticated answers a call without a valid operator credential.
	MsgUnauthenticated = "a valid API key is required: aasm login, or Authorization: Bearer <key>"
	msgUnavailable     = "the API key cannot be checked now (key store unavailable); retry"
	msgUnclassified    = "this method is not open to any caller"
)

// Audit rule ids of refusals.
const (
	RuleUnauthenticated = "auth.unauthenticated"
	RuleForbidden       = "auth.forbidden"
)

// KeyStore is what the authenticator reads: the key by id, and a throttled
// record of its last use.
type KeyStore interface {
	GetAPIKey(ctx context.Context, id string) (*storage.APIKey, error)
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
}

// Auditor writes governance records of refused calls, with decision DENY
// (gateway.Core implements it).
type Auditor interface {
	AuditRefusal(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error
}

// Options configures an Authenticator.
type Options struct {
	// Keys is where API keys are looked up, on every operator call, so a
	// revocation on any replica sharing the store holds at once. Required
	// unless Disabled.
	Keys KeyStore
	// Disabled lets every operator call through as an admin named
	// "auth-off" (loopback development only; the server enforces that).
	Disabled bool
	// Audit records refusals as governance events; nil only logs them.
	Audit Auditor
	// Logger receives refusals at debug level (default: discard).
	Logger *slog.Logger
	// Registry, when set, receives the aa_operator_auth_* metrics.
	Registry prometheus.Registerer
	// TouchEvery is the least time between two writes of a key's last use
	// (default one minute).
	TouchEvery time.Duration
	// AuditRate and AuditBurst bound the refusals audited per second from
	// one source address (default 1 per second, burst 10); AuditGlobalRate
	// bounds them over all sources (default 50 per second, burst 200). The
	// rest are counted in aa_operator_auth_unaudited_total and the next
	// audited refusal from the source says how many it skipped.
	AuditRate       float64
	AuditBurst      int
	AuditGlobalRate float64
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Authenticator decides, for every call, whether the caller may make it.
type Authenticator struct {
	o   Options
	log *slog.Logger

	refusals  *prometheus.CounterVec
	unaudited prometheus.Counter
	touchMu   sync.Mutex
	touched   map[string]time.Time // key id -> last touch written by this replica
	limMu     sync.Mutex
	perSource map[string]*bucket
	global    bucket
}

// New returns an Authenticator with defaults applied.
func New(o Options) (*Authenticator, error) {
	if !o.Disabled && o.Keys == nil {
		return nil, errors.New("new authenticator: a key store is required unless authentication is disabled")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TouchEvery <= 0 {
		o.TouchEvery = time.Minute
	}
	if o.AuditRate <= 0 {
		o.AuditRate = 1
	}
	if o.AuditBurst <= 0 {
		o.AuditBurst = 10
	}
	if o.AuditGlobalRate <= 0 {
		o.AuditGlobalRate = 50
	}
	a := &Authenticator{
		o: o, log: o.Logger, touched: make(map[string]time.Time), perSource: make(map[string]*bucket),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aa_operator_auth_refusals_total",
			Help: "Operator calls refused, by surface (grpc, rest) and cause (missing, malformed, unknown, revoked, mismatch, role, unclassified, unavailable).",
		}, []string{"surface", "cause"}),
		unaudited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aa_operator_auth_unaudited_total",
			Help: "Operator authentication refusals not written to the audit log because their source exceeded the audit rate.",
		}),
		global: bucket{tokens: 4 * o.AuditGlobalRate},
	}
	if o.Registry != nil {
		for _, c := range []prometheus.Collector{a.refusals, a.unaudited} {
			if err := o.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("register operator auth metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Disabled reports whether operator authentication is off.
func (a *Authenticator) Disabled() bool { return a.o.Disabled }

// Request is one call to authorize.
type Request struct {
	// Method is the full gRPC method name.
	Method string
	// Surface is "grpc" or "rest" (for the audit record and metrics).
	Surface string
	// Authorization is the Authorization header / metadata value ("" if none).
	Authorization string
	// PeerCert is the caller's verified client certificate, if any.
	PeerCert *x509.Certificate
	// Source is the caller's address (the audit rate is bounded per source).
	Source string
}

// Authorize authenticates the caller of req and checks its role against the
// method's class. It returns ctx carrying the caller's Identity, or a gRPC
// status error: Unauthenticated, PermissionDenied or Unavailable. Public and
// agent methods pass untouched (agents are authenticated by the agent
// authenticator; an operator key is never accepted in their place).
func (a *Authenticator) Authorize(ctx context.Context, req Request) (context.Context, error) {
	class := Classify(req.Method)
	switch class {
	case ClassPublic, ClassAgent:
		return ctx, nil
	case ClassUnknown:
		a.log.ErrorContext(ctx, "refused a call to a method missing from the authorization table", "method", req.Method)
		a.refuse(ctx, req, "unclassified", "")
		return ctx, status.Error(codes.PermissionDenied, msgUnclassified)
	}
	if a.o.Disabled {
		return WithIdentity(ctx, Identity{Name: "auth-off", Role: RoleAdmin, Via: ViaAuthOff}), nil
	}
	id, cause, err := a.authenticate(ctx, req)
	if err != nil {
		a.refuse(ctx, req, cause, "")
		if cause == "unavailable" {
			return ctx, status.Error(codes.Unavailable, msgUnavailable)
		}
		return ctx, status.Error(codes.Unauthenticated, MsgUnauthenticated)
	}
	if need := class.Required(); id.Role < need {
		a.refuse(ctx, req, "role", fmt.Sprintf("%s %q has role %s", id.Via, id.Name, id.Role))
		return ctx, status.Errorf(codes.PermissionDenied, "this call needs the %s role", need)
	}
	return WithIdentity(ctx, id), nil
}

// authenticate finds the caller's identity: a bearer API key when one is
// presented (it must then be valid, whatever certificate comes with it),
// else an operator client certificate.
func (a *Authenticator) authenticate(ctx context.Context, req Request) (Identity, string, error) {
	if req.Authorization == "" {
		if id, ok := CertIdentity(req.PeerCert); ok {
			return id, "", nil
		}
		return Identity{}, "missing", errors.New("no credential")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(req.Authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return Identity{}, "malformed", errors.New("not a bearer credential")
	}
	key, err := ParseKey(token)
	if err != nil {
		return Identity{}, "malformed", err
	}
	stored, err := a.o.Keys.GetAPIKey(ctx, key.ID)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return Identity{}, "unknown", err
	case err != nil:
		a.log.WarnContext(ctx, "api key lookup failed", "key_id", key.ID, "err", err)
		return Identity{}, "unavailable", err
	}
	if !key.Matches(stored.Hash) {
		return Identity{}, "mismatch", errors.New("secret does not match")
	}
	if stored.Revoked() {
		return Identity{}, "revoked", errors.New("revoked")
	}
	role, err := ParseRole(stored.Role)
	if err != nil {
		return Identity{}, "unknown", fmt.Errorf("stored role: %w", err)
	}
	a.touch(ctx, stored)
	return Identity{Name: stored.Name, Role: role, KeyID: stored.ID, Via: ViaAPIKey}, "", nil
}

// touch records the key's use, at most once per TouchEvery per key.
func (a *Authenticator) touch(ctx context.Context, k *storage.APIKey) {
	now := a.o.Now()
	a.touchMu.Lock()
	last := a.touched[k.ID]
	if k.LastUsedAt.After(last) {
		last = k.LastUsedAt
	}
	if now.Sub(last) < a.o.TouchEvery {
		a.touchMu.Unlock()
		return
	}
	if len(a.touched) > 4096 {
		clear(a.touched)
	}
	a.touched[k.ID] = now
	a.touchMu.Unlock()
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := a.o.Keys.TouchAPIKey(tctx, k.ID, now); err != nil {
		a.log.WarnContext(ctx, "record api key use", "key_id", k.ID, "err", err)
	}
}

// refuse counts, logs and (within the audit bound) audits a refusal.
func (a *Authenticator) refuse(ctx context.Context, req Request, cause, detail string) {
	a.refusals.WithLabelValues(req.Surface, cause).Inc()
	a.log.DebugContext(ctx, "operator call refused", "method", req.Method, "surface", req.Surface, "cause", cause, "source", req.Source)
	skipped, ok := a.allowAudit(req.Source)
	if !ok {
		a.unaudited.Inc()
		return
	}
	if a.o.Audit == nil {
		return
	}
	fields := map[string]any{"method": req.Method, "surface": req.Surface, "cause": cause, "source": req.Source}
	if detail != "" {
		fields["detail"] = detail
	}
	if skipped > 0 {
		fields["unaudited_before"] = skipped
	}
	payload, _ := json.Marshal(fields)
	rule, what := RuleUnauthenticated, "not authenticated"
	if cause == "role" || cause == "unclassified" {
		rule, what = RuleForbidden, "permission denied"
	}
	_ = a.o.Audit.AuditRefusal(context.WithoutCancel(ctx), action.AgentID{}, rule,
		fmt.Sprintf("%s %s refused: %s (%s)", req.Surface, req.Method, what, cause), payload)
}

// allowAudit takes a token from the source's bucket and the global one.
func (a *Authenticator) allowAudit(source string) (int64, bool) {
	now := a.o.Now()
	a.limMu.Lock()
	defer a.limMu.Unlock()
	b, ok := a.perSource[source]
	if !ok {
		if len(a.perSource) >= 4096 {
			clear(a.perSource) // a flood from many sources: start over, the global bucket still bounds it
		}
		b = &bucket{tokens: float64(a.o.AuditBurst), last: now}
		a.perSource[source] = b
	}
	if !b.take(now, a.o.AuditRate, float64(a.o.AuditBurst)) {
		b.skipped++
		return 0, false
	}
	if !a.global.take(now, a.o.AuditGlobalRate, 4*a.o.AuditGlobalRate) {
		b.skipped++
		b.tokens++ // give the source its token back
		return 0, false
	}
	s := b.skipped
	b.skipped = 0
	return s, true
}

// bucket is a token bucket.
type bucket struct {
	tokens  float64
	last    time.Time
	skipped int64
}

func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if !b.last.IsZero() {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
