package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// SecretSource resolves the secrets that injected headers reference.
// storage.Secrets satisfies it.
type SecretSource interface {
	// GetSecret returns the value of name, or an error wrapping
	// storage.ErrNotFound when it is not set.
	GetSecret(ctx context.Context, name string) ([]byte, error)
}

var _ SecretSource = (storage.Secrets)(nil)

// injectionError denies an allowed request whose credential cannot be added.
// Its message names the secret, never its value.
type injectionError struct {
	status int
	rule   string
	reason string
}

func (e *injectionError) Error() string { return e.reason }

// inject resolves the headers that the agent's allowlist entries matching
// the request's destination ask for. It returns nil when injection is not
// configured or nothing matches. The secret lookups share one
// Options.Timeout, started only when an entry matches (most requests need
// no lookup, and so no timer).
func (s *Server) inject(ctx context.Context, n *action.Action) ([]*corev3.HeaderValueOption, error) {
	if s.o.Secrets == nil || s.o.Injections == nil || n.Kind != action.KindNetworkCall {
		return nil, nil
	}
	var todo []policy.Injection
	var headers []string
	for _, inj := range s.o.Injections(n.Agent) {
		e := inj.Entry
		if e.Inject == nil || !entryMatches(e, n.Network.Host, n.Network.Port) {
			continue
		}
		header := lower(e.Inject.Header)
		if slices.Contains(headers, header) {
			continue // the first matching entry wins, in policy order
		}
		headers = append(headers, header)
		todo = append(todo, inj)
	}
	if len(todo) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	out := make([]*corev3.HeaderValueOption, 0, len(todo))
	for i, inj := range todo {
		value, err := s.expand(ctx, inj.Policy, inj.Entry.Inject.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, setHeader(headers[i], value))
	}
	return out, nil
}

// expand replaces every ${NAME} in tmpl with the secret NAME, in one pass,
// so a secret value that contains ${...} is never expanded again.
func (s *Server) expand(ctx context.Context, pol, tmpl string) (string, error) {
	var b strings.Builder
	rest := tmpl
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			b.WriteString(rest)
			return b.String(), nil
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			b.WriteString(rest)
			return b.String(), nil
		}
		name := rest[i+2 : i+j]
		b.WriteString(rest[:i])
		v, err := s.o.Secrets.GetSecret(ctx, name)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return "", &injectionError{status: 403, rule: pol + "/network.allowlist.inject",
				reason: fmt.Sprintf("secret ${%s} is not set (aasm secret set %s)", name, name)}
		case err != nil:
			s.log.Error("ext_authz secret lookup failed", "secret", name, "err", err)
			return "", &injectionError{status: 503, rule: "secrets",
				reason: fmt.Sprintf("secret %s could not be read: failing closed", name)}
		}
		if strings.ContainsAny(string(v), "\r\n\x00") {
			return "", &injectionError{status: 403, rule: pol + "/network.allowlist.inject",
				reason: fmt.Sprintf("secret %s contains a line break or NUL and cannot be sent in a header (aasm secret set %s)", name, name)}
		}
		b.Write(v)
		rest = rest[i+j+1:]
	}
}

// entryMatches reports whether an allowlist entry covers host:port, with the
// rules the policy's network allowlist uses: "*" is any host, "*.suffix" any
// subdomain of suffix (not suffix itself), a CIDR any address inside it.
func entryMatches(e policy.NetworkEntry, host string, port uint32) bool {
	if len(e.Ports) > 0 && !slices.ContainsFunc(e.Ports, func(p uint16) bool { return uint32(p) == port }) {
		return false
	}
	host = strings.TrimSuffix(lower(host), ".")
	switch {
	case e.CIDR.IsValid():
		a, err := netip.ParseAddr(strings.Trim(host, "[]"))
		return err == nil && e.CIDR.Contains(a.Unmap())
	case e.Host == "*":
		return true
	case strings.HasPrefix(e.Host, "*."):
		return strings.HasSuffix(host, e.Host[1:]) && len(host) > len(e.Host)-1
	case e.Host != "":
		if a, err := netip.ParseAddr(e.Host); err == nil {
			b, err := netip.ParseAddr(strings.Trim(host, "[]"))
			return err == nil && a == b.Unmap()
		}
		return host == e.Host
	}
	return false
}

// withInjected applies the injections of an allowed verdict; a failure turns
// it into a denial that names the missing secret, recorded in the audit log
// as a governance event that references the allowed decision. A budget
// reservation the request made is released when the answer is a denial.
func (s *Server) withInjected(ctx context.Context, m *mapped, v verdict) verdict {
	if !allowed(v) {
		s.release(ctx, m.actions[0].Agent, v)
		return v
	}
	n := &m.actions[0]
	hs, err := s.inject(ctx, n)
	if err != nil {
		var ie *injectionError
		if !errors.As(err, &ie) {
			ie = &injectionError{status: 503, rule: "secrets", reason: "credential injection failed: failing closed"}
		}
		s.o.Metrics.InjectionFailures.Inc()
		s.log.Warn("ext_authz credential injection denied an allowed request",
			"agent", n.Agent.String(), "host", n.Network.Host, "decision_id", v.DecisionID, "reason", ie.reason)
		denied := verdict{Outcome: gateway.Outcome{
			Decision: action.Deny, RuleID: ie.rule, Reason: ie.reason, DecisionID: v.DecisionID,
		}, status: ie.status, note: v.note, usageID: v.usageID}
		s.auditInjectionDenial(ctx, n, denied)
		s.release(ctx, m.actions[0].Agent, denied)
		return denied
	}
	v.inject = hs
	return v
}

// allowed reports whether a verdict lets the request through.
func allowed(v verdict) bool { return v.Decision == action.Allow || v.Decision == action.Redact }

// GovernanceAuditor records a governance event. *gateway.Core satisfies it;
// when the Decider also implements it, a request denied after its decision
// (a credential that cannot be injected) is recorded too.
type GovernanceAuditor interface {
	AuditGovernance(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error
}

// UsageSettler settles a budget reservation. *gateway.Core satisfies it;
// when the Decider also implements it, the reservation of an LLM call whose
// request is finally denied (another action of the same request, or a
// failed injection) is released instead of being charged.
type UsageSettler interface {
	ReconcileUsage(ctx context.Context, decisionID string, agent *action.AgentID, promptTokens, completionTokens int64) (gateway.Usage, error)
}

var (
	_ GovernanceAuditor = (*gateway.Core)(nil)
	_ UsageSettler      = (*gateway.Core)(nil)
)

// auditInjectionDenial records that an allowed decision was answered with a
// denial because its credential could not be injected. The record names the
// secret (in the reason), never its value.
func (s *Server) auditInjectionDenial(ctx context.Context, n *action.Action, v verdict) {
	ga, ok := s.d.(GovernanceAuditor)
	if !ok {
		return
	}
	payload, _ := json.Marshal(struct {
		DecisionID string `json:"decision_id"`
		Host       string `json:"host"`
		Port       uint32 `json:"port"`
		Status     int    `json:"status"`
	}{v.DecisionID, n.Network.Host, n.Network.Port, v.status})
	if err := ga.AuditGovernance(context.WithoutCancel(ctx), n.Agent, "extauthz.inject", "allowed request denied: "+v.Reason, payload); err != nil {
		s.log.Error("ext_authz audit of an injection denial failed", "decision_id", v.DecisionID, "err", err)
	}
}

// release settles the budget reservation of a denied request at zero.
func (s *Server) release(ctx context.Context, agent action.AgentID, v verdict) {
	if v.usageID == "" {
		return
	}
	us, ok := s.d.(UsageSettler)
	if !ok {
		return
	}
	if _, err := us.ReconcileUsage(context.WithoutCancel(ctx), v.usageID, &agent, 0, 0); err != nil {
		s.log.Warn("ext_authz could not release the budget reservation of a denied request", "decision_id", v.usageID, "err", err)
	}
}

// withoutInjected drops injected headers from the removal list: the
// injection itself replaces whatever the agent sent, and a removal would
// take the injected value away again.
func withoutInjected(gone []string, inject []*corev3.HeaderValueOption) []string {
	out := make([]string, 0, len(gone))
	for _, h := range gone {
		if !slices.ContainsFunc(inject, func(o *corev3.HeaderValueOption) bool { return o.GetHeader().GetKey() == h }) {
			out = append(out, h)
		}
	}
	return out
}
