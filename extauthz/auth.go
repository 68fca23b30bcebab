package extauthz

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// Authenticator proves the agent of a Check. *gateway.AgentAuth satisfies it.
type Authenticator interface {
	// Enabled reports whether agents must authenticate.
	Enabled() bool
	// Authenticate verifies token (or, when empty, the call's
	// x-aa-credential-token metadata, then its agent client certificate)
	// and that it belongs to named when named is set.
	Authenticate(ctx context.Context, surface, token string, named action.AgentID) (action.AgentID, error)
	// PeerAgent returns the agent named by the connection's verified
	// client certificate.
	PeerAgent(ctx context.Context) (action.AgentID, bool)
	// Refuse counts and audits a refusal decided here.
	Refuse(ctx context.Context, surface, cause string, named action.AgentID) error
}

var _ Authenticator = (*gateway.AgentAuth)(nil)

// surface names ext_authz in agent authentication metrics and audit.
const surface = "ext_authz"

// Reasons of identity denials: the same whatever the cause, so a caller
// learns nothing about the credential; the audit record says more.
const (
	reasonUnauthenticated = "agent not authenticated"
	reasonMismatch        = "agent credential does not match the request's agent"
)

// authenticate returns the agent of m when Options.Auth requires proof. The
// agent is trusted only when corroborated, in this order:
//
//   - a credential token: the x-aa-credential-token metadata of the Check
//     call (Envoy's grpc_service initial_metadata), the aa_credential_token
//     context extension (ExtToken: the gateway's xDS writes the token the
//     node's ADS stream presented into the node's route), or the
//     x-aa-credential-token request header (removed before the request
//     goes upstream); it must belong to
//     the agent the principal, context extensions or x-aa-agent-id name,
//     when one does, and names the agent otherwise;
//   - a verified client certificate on the Envoy-to-gateway connection whose
//     SPIFFE URI SAN spiffe://<trust-domain>/agent/<org>/<team>/<agent>
//     names the agent (Envoy's own identity);
//   - attributes.source.principal (a SPIFFE id, see identify) when the
//     Envoy-to-gateway connection itself is mTLS-verified: a mesh proxy
//     vouches for its downstream peer.
//
// Anything else, including a bare x-aa-agent-id header or context
// extensions on an unauthenticated connection, is refused.
func (s *Server) authenticate(ctx context.Context, m *mapped) (action.AgentID, error) {
	a := s.o.Auth
	named := m.actions[0].Agent
	if m.source == "none" {
		named = action.AgentID{}
	}
	tok := gateway.TokenFromMetadata(ctx)
	if tok == "" {
		tok = m.extToken
	}
	if tok == "" {
		tok = m.token
	}
	if tok != "" {
		return a.Authenticate(ctx, surface, tok, named)
	}
	if _, ok := a.PeerAgent(ctx); ok {
		return a.Authenticate(ctx, surface, "", named) // checks the certificate's agent against named
	}
	if m.source == "principal" && gateway.PeerVerified(ctx) {
		return named, nil
	}
	return action.AgentID{}, a.Refuse(ctx, surface, "missing", named)
}

// authDenial is the verdict for a refused identity.
func authDenial(err error) verdict {
	reason := reasonUnauthenticated
	st := 403
	switch status.Code(err) {
	case codes.PermissionDenied:
		reason = reasonMismatch
	case codes.Unavailable:
		reason, st = "agent credential cannot be checked now: failing closed", 503
	}
	return verdict{Outcome: gateway.Outcome{Decision: action.Deny, RuleID: "agent-auth", Reason: reason}, status: st}
}

// authenticated is authenticate when Options.Auth is enabled, and the
// mapped agent otherwise.
func (s *Server) authenticated(ctx context.Context, m *mapped) (action.AgentID, error) {
	if s.o.Auth == nil || !s.o.Auth.Enabled() {
		return m.actions[0].Agent, nil
	}
	return s.authenticate(ctx, m)
}
