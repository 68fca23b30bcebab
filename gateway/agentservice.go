package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/storage"
)

// AgentServiceOptions configures an AgentService.
type AgentServiceOptions struct {
	// Registry keeps agents, nonces and revocations; pass the cached store so
	// status changes invalidate every replica's cache. Required.
	Registry storage.AgentRegistry
	// Issuer signs and verifies credential tokens. Required.
	Issuer *identity.Issuer
	// Events carries suspensions, resumptions, kills and policy changes to
	// ControlStreams and InvalidationService subscribers. Required.
	Events *Invalidations
	// Core audits every lifecycle change and names the serving policy.
	// Required.
	Core   *Core
	Logger *slog.Logger
	// ChallengeTTL is how long a nonce from RequestChallenge may be used
	// (default 60s).
	ChallengeTTL time.Duration
	// HeartbeatInterval is the interval the gateway asks agents to
	// heartbeat at (default 30s).
	HeartbeatInterval time.Duration
	// StaleAfter is how many missed heartbeats make an active agent stale
	// (default 3).
	StaleAfter int
	// MaxDepth bounds the delegation depth (default 8).
	MaxDepth int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Auth, when set, words, counts and audits every refused lifecycle
	// credential as AgentAuth does for the other agent surfaces (a generic
	// message; the cause only in metrics and the audit record). Lifecycle
	// calls verify their token whatever Auth's mode.
	Auth *AgentAuth
}

// AgentService implements agentassembly.v1.AgentLifecycleService: Ed25519
// challenge registration, credential tokens, heartbeats, control commands and
// the operator's suspend / resume / kill / mode switches.
type AgentService struct {
	v1.UnimplementedAgentLifecycleServiceServer
	opts AgentServiceOptions
	reg  storage.AgentRegistry
	log  *slog.Logger
}

var _ v1.AgentLifecycleServiceServer = (*AgentService)(nil)

// NewAgentService returns the lifecycle service.
func NewAgentService(o AgentServiceOptions) (*AgentService, error) {
	if o.Registry == nil || o.Issuer == nil || o.Events == nil || o.Core == nil {
		return nil, errors.New("new agent service: registry, issuer, events and core are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ChallengeTTL <= 0 {
		o.ChallengeTTL = time.Minute
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 3
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = 8
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &AgentService{opts: o, reg: o.Registry, log: o.Logger}, nil
}

// VerifyToken returns the agent a credential token was issued to, or an
// error when it is malformed, forged, expired, revoked or its agent killed.
func (s *AgentService) VerifyToken(ctx context.Context, token string) (action.AgentID, error) {
	return s.opts.Issuer.VerifyToken(ctx, token)
}

// nonceKey binds a challenge to the agent it was issued for.
func nonceKey(id action.AgentID, nonce []byte) string {
	return "register:" + id.String() + ":" + base64.RawURLEncoding.EncodeToString(nonce)
}

func agentIDFrom(field string, p *v1.AgentId) (action.AgentID, error) {
	id := action.AgentID{Org: p.GetOrgId(), Team: p.GetTeamId(), Agent: p.GetAgentId()}
	for _, f := range []struct{ name, v string }{{"org_id", id.Org}, {"team_id", id.Team}, {"agent_id", id.Agent}} {
		if err := checkID(field+"."+f.name, f.v, true); err != nil {
			return id, err
		}
		if strings.Contains(f.v, "/") {
			return id, badField(field+"."+f.name, "must not contain '/'")
		}
	}
	return id, nil
}

// ParseAgentPath parses "org/team/agent".
func ParseAgentPath(field, s string) (action.AgentID, error) {
	p := strings.Split(s, "/")
	if len(p) != 3 {
		return action.AgentID{}, badField(field, "%q is not org/team/agent", clipName(s))
	}
	return agentIDFrom(field, &v1.AgentId{OrgId: p[0], TeamId: p[1], AgentId: p[2]})
}

// RequestChallenge implements AgentLifecycleService.RequestChallenge.
func (s *AgentService) RequestChallenge(ctx context.Context, req *v1.RequestChallengeRequest) (*v1.RequestChallengeResponse, error) {
	id, err := agentIDFrom("agent", req.GetAgent())
	if err != nil {
		return nil, requestStatus(err)
	}
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return nil, status.Errorf(codes.Internal, "generate nonce: %v", err)
	}
	exp := s.opts.Now().Add(s.opts.ChallengeTTL)
	if err := s.reg.PutNonce(ctx, nonceKey(id, nonce), exp); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "store challenge", err)
	}
	return &v1.RequestChallengeResponse{Nonce: nonce, ExpiresAt: timestamppb.New(exp)}, nil
}

// Register implements AgentLifecycleService.Register.
func (s *AgentService) Register(ctx context.Context, req *v1.RegisterRequest) (*v1.RegisterResponse, error) {
	id, err := agentIDFrom("agent", req.GetAgent())
	if err != nil {
		return nil, requestStatus(err)
	}
	switch {
	case len(req.GetPublicKey()) != ed25519.PublicKeySize:
		return nil, requestStatus(badField("public_key", "is %d bytes, want a raw %d-byte Ed25519 public key", len(req.GetPublicKey()), ed25519.PublicKeySize))
	case len(req.GetNonce()) != 32:
		return nil, requestStatus(badField("nonce", "is %d bytes, want the 32-byte nonce from RequestChallenge", len(req.GetNonce())))
	case len(req.GetSignature()) != ed25519.SignatureSize:
		return nil, requestStatus(badField("signature", "is %d bytes, want a %d-byte Ed25519 signature over the nonce", len(req.GetSignature()), ed25519.SignatureSize))
	case len(req.GetLabels()) > 64:
		return nil, requestStatus(badField("labels", "has %d entries, over the limit of 64", len(req.GetLabels())))
	}
	for k, v := range req.GetLabels() {
		if err := checkID("labels."+clipName(k), k, true); err != nil {
			return nil, requestStatus(err)
		}
		if err := checkID("labels."+clipName(k), v, false); err != nil {
			return nil, requestStatus(err)
		}
	}
	// The nonce is spent whatever happens next: a failed attempt needs a new
	// challenge, so signatures cannot be tried against one nonce at leisure.
	if err := s.reg.ConsumeNonce(ctx, nonceKey(id, req.GetNonce()), s.opts.Now()); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			s.auditAgent(ctx, id, "agent.register.rejected", "registration rejected: nonce unknown, expired or already used", nil)
			return nil, status.Error(codes.Unauthenticated, "register: the nonce is unknown, expired or already used: call RequestChallenge for this agent and sign the new nonce")
		}
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "consume challenge", err)
	}
	if !ed25519.Verify(ed25519.PublicKey(req.GetPublicKey()), req.GetNonce(), req.GetSignature()) {
		s.auditAgent(ctx, id, "agent.register.rejected", "registration rejected: signature does not verify", nil)
		return nil, status.Error(codes.Unauthenticated, "register: the signature does not verify with public_key over the nonce")
	}
	now := s.opts.Now()
	ag := &storage.Agent{ID: id, Labels: req.GetLabels(), PublicKey: req.GetPublicKey(), Status: storage.AgentActive,
		StatusReason: "registered", RegisteredAt: now, LastSeen: now}
	if p := req.GetParent(); p != nil && (p.GetOrgId() != "" || p.GetTeamId() != "" || p.GetAgentId() != "") {
		if err := s.delegate(ctx, ag, req); err != nil {
			return nil, err
		}
	}
	old, err := s.reg.GetAgent(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "read agent", err)
	case old.Status == storage.AgentKilled:
		return nil, status.Errorf(codes.PermissionDenied, "register: agent %s was killed (%s); use a new agent id", id, old.StatusReason)
	case string(old.PublicKey) != string(ag.PublicKey) && old.StatusReason != reasonDeregistered:
		return nil, status.Errorf(codes.PermissionDenied, "register: agent %s is registered with another public key; deregister it with its credential first", id)
	default:
		// Re-registration keeps what operators set.
		ag.RegisteredAt, ag.Mode = old.RegisteredAt, old.Mode
		if old.Status == storage.AgentSuspended {
			ag.Status, ag.StatusReason = old.Status, old.StatusReason
		}
	}
	if err := s.reg.PutAgent(ctx, ag); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "store agent", err)
	}
	tok, claims, err := s.opts.Issuer.Issue(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "register: %v", err)
	}
	if _, err := s.opts.Events.Publish(ctx, AgentEvent(storage.InvalidateRegistered, id, "registered")); err != nil {
		s.log.WarnContext(ctx, "publish registration", "agent", id.String(), "err", err)
	}
	s.auditAgent(ctx, id, "agent.register", "agent registered", map[string]any{"token_id": claims.TokenID,
		"parent": ag.Parent.String(), "depth": ag.Depth, "public_key": base64.StdEncoding.EncodeToString(ag.PublicKey)})
	return &v1.RegisterResponse{CredentialToken: tok, ExpiresAt: timestamppb.New(claims.ExpiresAt),
		PolicyVersion: s.policyVersion(), HeartbeatInterval: durationpb.New(s.opts.HeartbeatInterval)}, nil
}

// delegate checks the parent's credential and sets the delegation fields.
func (s *AgentService) delegate(ctx context.Context, ag *storage.Agent, req *v1.RegisterRequest) error {
	pid, err := agentIDFrom("parent", req.GetParent())
	if err != nil {
		return requestStatus(err)
	}
	if pid == ag.ID {
		return requestStatus(badField("parent", "an agent cannot be its own parent"))
	}
	if req.GetParentCredentialToken() == "" {
		return requestStatus(badField("parent_credential_token", "is required with parent: the spawning agent's credential token"))
	}
	got, err := s.opts.Issuer.VerifyToken(ctx, req.GetParentCredentialToken())
	if err != nil {
		if s.opts.Auth != nil {
			return s.opts.Auth.refuse(ctx, "register_parent", tokenCause(err), pid, err)
		}
		return tokenStatus("parent_credential_token", err)
	}
	if got != pid {
		if s.opts.Auth != nil {
			return s.opts.Auth.refuse(ctx, "register_parent", "mismatch", pid, fmt.Errorf("credential of %s", got))
		}
		return status.Errorf(codes.PermissionDenied, "register: parent_credential_token belongs to %s, not parent %s", got, pid)
	}
	parent, err := s.reg.GetAgent(ctx, pid)
	if err != nil {
		return s.opts.Core.metrics.storeStatus(storeOpRegistry, "read parent agent", err)
	}
	if parent.Status != storage.AgentActive && parent.Status != storage.AgentStale {
		return status.Errorf(codes.FailedPrecondition, "register: parent %s is %s and cannot spawn agents", pid, parent.Status)
	}
	if parent.Depth+1 > s.opts.MaxDepth {
		return status.Errorf(codes.FailedPrecondition, "register: delegation depth %d is over the limit of %d", parent.Depth+1, s.opts.MaxDepth)
	}
	ag.Parent, ag.Depth = pid, parent.Depth+1
	return nil
}

// reasonDeregistered is the status reason of a deregistered agent; such an
// agent may register again with a new key.
const reasonDeregistered = "deregistered"

// authenticate verifies token and that it belongs to the agent the request
// names (when it names one).
func (s *AgentService) authenticate(ctx context.Context, surface, token string, named *v1.AgentId) (identity.Claims, error) {
	id := action.AgentID{Org: named.GetOrgId(), Team: named.GetTeamId(), Agent: named.GetAgentId()}
	if token == "" {
		if s.opts.Auth != nil {
			return identity.Claims{}, s.opts.Auth.refuse(ctx, surface, "missing", id, nil)
		}
		return identity.Claims{}, status.Error(codes.Unauthenticated, "credential_token is required: the token Register returned")
	}
	c, err := s.opts.Issuer.Verify(ctx, token)
	if err != nil {
		if s.opts.Auth != nil {
			return identity.Claims{}, s.opts.Auth.refuse(ctx, surface, tokenCause(err), id, err)
		}
		return identity.Claims{}, tokenStatus("credential_token", err)
	}
	if !id.IsZero() && id != c.Agent {
		if s.opts.Auth != nil {
			return identity.Claims{}, s.opts.Auth.refuse(ctx, surface, "mismatch", id, fmt.Errorf("credential of %s", c.Agent))
		}
		return identity.Claims{}, status.Errorf(codes.PermissionDenied, "credential_token was issued to %s, not %s", c.Agent, id)
	}
	return c, nil
}

// tokenStatus maps a verification error to UNAUTHENTICATED (or UNAVAILABLE
// when the registry could not answer: fail closed, but say why).
func tokenStatus(field string, err error) error {
	switch {
	case errors.Is(err, identity.ErrExpired):
		return status.Errorf(codes.Unauthenticated, "%s: %v: register again", field, err)
	case errors.Is(err, identity.ErrRevoked):
		return status.Errorf(codes.Unauthenticated, "%s: %v", field, err)
	case errors.Is(err, identity.ErrMalformed), errors.Is(err, identity.ErrBadSignature):
		return status.Errorf(codes.Unauthenticated, "%s: %v", field, err)
	}
	return storeStatus("verify "+field, err)
}

// Heartbeat implements AgentLifecycleService.Heartbeat.
func (s *AgentService) Heartbeat(ctx context.Context, req *v1.HeartbeatRequest) (*v1.HeartbeatResponse, error) {
	c, err := s.authenticate(ctx, "heartbeat", req.GetCredentialToken(), req.GetAgent())
	if err != nil {
		return nil, err
	}
	if err := s.reg.TouchAgent(ctx, c.Agent, s.opts.Now()); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "record heartbeat", err)
	}
	ag, err := s.reg.GetAgent(ctx, c.Agent)
	if err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "read agent", err)
	}
	if ag.Status == storage.AgentStale && ag.StatusReason != reasonDeregistered {
		if err := s.reg.SetAgentStatus(ctx, c.Agent, storage.AgentActive, "heartbeat resumed"); err != nil {
			return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "reactivate agent", err)
		}
		ag.Status = storage.AgentActive
	}
	return &v1.HeartbeatResponse{Status: agentStatusTo(ag.Status), NextInterval: durationpb.New(s.opts.HeartbeatInterval),
		PolicyVersion: s.policyVersion()}, nil
}

// Deregister implements AgentLifecycleService.Deregister.
func (s *AgentService) Deregister(ctx context.Context, req *v1.DeregisterRequest) (*v1.DeregisterResponse, error) {
	c, err := s.authenticate(ctx, "deregister", req.GetCredentialToken(), req.GetAgent())
	if err != nil {
		return nil, err
	}
	if err := s.reg.RevokeCredential(ctx, c.TokenID, c.ExpiresAt); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "revoke credential", err)
	}
	if err := s.reg.SetAgentStatus(ctx, c.Agent, storage.AgentStale, reasonDeregistered); err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "deregister agent", err)
	}
	if _, err := s.opts.Events.Publish(ctx, AgentEvent(storage.InvalidateRevoked, c.Agent, reasonDeregistered)); err != nil {
		s.log.WarnContext(ctx, "publish deregistration", "agent", c.Agent.String(), "err", err)
	}
	s.auditAgent(ctx, c.Agent, "agent.deregister", "agent deregistered; credential revoked", map[string]any{"token_id": c.TokenID})
	return &v1.DeregisterResponse{}, nil
}

// ControlStream implements AgentLifecycleService.ControlStream: it sends the
// agent's current state (SUSPEND when it is suspended), then a command for
// every suspension, resumption, kill and policy change, in order. A KILL or
// the agent's deregistration ends the stream.
func (s *AgentService) ControlStream(req *v1.ControlStreamRequest, stream grpc.ServerStreamingServer[v1.ControlCommand]) error {
	ctx := stream.Context()
	c, err := s.authenticate(ctx, "control_stream", req.GetCredentialToken(), req.GetAgent())
	if err != nil {
		return err
	}
	select {
	case <-s.opts.Events.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	// Read the position before the state, so a change made in between is
	// delivered as an event rather than lost.
	after := s.opts.Events.Head()
	ag, err := s.reg.GetAgent(ctx, c.Agent)
	if err != nil {
		return s.opts.Core.metrics.storeStatus(storeOpRegistry, "read agent", err)
	}
	if ag.Status == storage.AgentSuspended {
		if err := stream.Send(&v1.ControlCommand{Type: v1.ControlCommand_TYPE_SUSPEND, Agent: agentIDTo(c.Agent),
			Reason: ag.StatusReason, PolicyVersion: s.policyVersion(), IssuedAt: timestamppb.New(s.opts.Now())}); err != nil {
			return err
		}
	}
	for {
		evs, err := s.opts.Events.Next(ctx, after, 256)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return s.opts.Core.metrics.storeStatus(storeOpRegistry, "read control commands", err)
		}
		for _, ev := range evs {
			after = ev.Seq
			if ev.Type == storage.InvalidateRevoked && ev.Agent == c.Agent {
				return nil // deregistered: a runtime still running it reconnects with its current token
			}
			cmd := controlCommand(ev, c.Agent)
			if cmd == nil {
				continue
			}
			if err := stream.Send(cmd); err != nil {
				return err
			}
			if cmd.Type == v1.ControlCommand_TYPE_KILL {
				return nil
			}
		}
	}
}

// controlCommand maps an event to the command agent must receive, or nil.
func controlCommand(ev *storage.InvalidationEvent, agent action.AgentID) *v1.ControlCommand {
	var t v1.ControlCommand_Type
	switch {
	case ev.Type == storage.InvalidatePolicy && (ev.Agent == action.AgentID{} || ev.Agent == agent):
		t = v1.ControlCommand_TYPE_POLICY_UPDATE
	case ev.Agent != agent:
		return nil
	case ev.Type == storage.InvalidateSuspended:
		t = v1.ControlCommand_TYPE_SUSPEND
	case ev.Type == storage.InvalidateResumed:
		t = v1.ControlCommand_TYPE_RESUME
	case ev.Type == storage.InvalidateKilled:
		t = v1.ControlCommand_TYPE_KILL
	default:
		return nil
	}
	return &v1.ControlCommand{Type: t, Agent: agentIDTo(agent), Reason: ev.Reason, PolicyVersion: ev.PolicyVersion, IssuedAt: timestamppb.New(ev.Time)}
}

// ListAgents implements AgentLifecycleService.ListAgents.
func (s *AgentService) ListAgents(ctx context.Context, req *v1.ListAgentsRequest) (*v1.ListAgentsResponse, error) {
	f := storage.AgentFilter{Org: req.GetOrgId(), Team: req.GetTeamId()}
	if req.GetStatus() != v1.AgentStatus_AGENT_STATUS_UNSPECIFIED {
		if f.Status = agentStatusFrom(req.GetStatus()); f.Status == "" {
			return nil, requestStatus(badField("status", "unknown value %d", req.GetStatus()))
		}
	}
	list, err := s.reg.ListAgents(ctx, f)
	if err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "list agents", err)
	}
	out := &v1.ListAgentsResponse{Agents: make([]*v1.AgentInfo, len(list))}
	for i, a := range list {
		out.Agents[i] = AgentToProto(a)
	}
	return out, nil
}

// GetAgent implements AgentLifecycleService.GetAgent.
func (s *AgentService) GetAgent(ctx context.Context, req *v1.GetAgentRequest) (*v1.AgentInfo, error) {
	id, err := ParseAgentPath("id", req.GetId())
	if err != nil {
		return nil, requestStatus(err)
	}
	a, err := s.reg.GetAgent(ctx, id)
	if err != nil {
		return nil, s.registryStatus(id, err)
	}
	return AgentToProto(a), nil
}

// SuspendAgent implements AgentLifecycleService.SuspendAgent.
func (s *AgentService) SuspendAgent(ctx context.Context, req *v1.AgentControlRequest) (*v1.AgentInfo, error) {
	return s.setStatus(ctx, req, storage.AgentSuspended, storage.InvalidateSuspended, "agent.suspend")
}

// ResumeAgent implements AgentLifecycleService.ResumeAgent.
func (s *AgentService) ResumeAgent(ctx context.Context, req *v1.AgentControlRequest) (*v1.AgentInfo, error) {
	return s.setStatus(ctx, req, storage.AgentActive, storage.InvalidateResumed, "agent.resume")
}

// KillAgent implements AgentLifecycleService.KillAgent.
func (s *AgentService) KillAgent(ctx context.Context, req *v1.AgentControlRequest) (*v1.AgentInfo, error) {
	return s.setStatus(ctx, req, storage.AgentKilled, storage.InvalidateKilled, "agent.kill")
}

// setStatus changes an agent's status, publishes the event and audits it.
// The store write comes first, so any replica that delivers the event reads
// the new status.
func (s *AgentService) setStatus(ctx context.Context, req *v1.AgentControlRequest, st storage.AgentStatus, ev storage.InvalidationType, rule string) (*v1.AgentInfo, error) {
	id, err := ParseAgentPath("id", req.GetId())
	if err != nil {
		return nil, requestStatus(err)
	}
	if err := checkID("reason", req.GetReason(), false); err != nil {
		return nil, requestStatus(err)
	}
	cur, err := s.reg.GetAgent(ctx, id)
	if err != nil {
		return nil, s.registryStatus(id, err)
	}
	if cur.Status == storage.AgentKilled && st != storage.AgentKilled {
		return nil, status.Errorf(codes.FailedPrecondition, "agent %s was killed (%s); a killed agent cannot be resumed or suspended", id, cur.StatusReason)
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "by operator"
	}
	if err := s.reg.SetAgentStatus(ctx, id, st, reason); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "set agent status", err)
	}
	if _, err := s.opts.Events.Publish(ctx, AgentEvent(ev, id, reason)); err != nil {
		// The status is stored and every replica's cache was told; only the
		// push to ControlStreams is late (until the next successful publish).
		s.log.ErrorContext(ctx, "publish agent status change", "agent", id.String(), "status", string(st), "err", err)
	}
	s.auditAgent(ctx, id, rule, fmt.Sprintf("agent %s: %s", st, reason), map[string]any{"previous": string(cur.Status)})
	s.opts.Core.AlertAgentStatus(ctx, id, st, cur.Status, reason)
	a, err := s.reg.GetAgent(ctx, id)
	if err != nil {
		return nil, s.registryStatus(id, err)
	}
	return AgentToProto(a), nil
}

// SetAgentMode implements AgentLifecycleService.SetAgentMode.
func (s *AgentService) SetAgentMode(ctx context.Context, req *v1.SetAgentModeRequest) (*v1.AgentInfo, error) {
	id, err := ParseAgentPath("id", req.GetId())
	if err != nil {
		return nil, requestStatus(err)
	}
	if err := checkID("reason", req.GetReason(), false); err != nil {
		return nil, requestStatus(err)
	}
	m := action.Mode(req.GetMode())
	if _, ok := v1.EnforcementMode_name[int32(req.GetMode())]; !ok || storage.ValidAgentMode(m) != nil {
		return nil, requestStatus(badField("mode", "unknown value %d: want ENFORCE, OBSERVE, DISABLED or ENFORCEMENT_MODE_UNSPECIFIED (clear)", req.GetMode()))
	}
	cur, err := s.reg.GetAgent(ctx, id)
	if err != nil {
		return nil, s.registryStatus(id, err)
	}
	if err := s.reg.SetAgentMode(ctx, id, m); err != nil {
		return nil, s.opts.Core.metrics.storeStatus(storeOpRegistry, "set agent mode", err)
	}
	name := storage.AgentModeName(m)
	if name == "" {
		name = "policy"
	}
	if _, err := s.opts.Events.Publish(ctx, AgentEvent(storage.InvalidateAgentMode, id, name)); err != nil {
		s.log.ErrorContext(ctx, "publish agent mode change", "agent", id.String(), "err", err)
	}
	prev := storage.AgentModeName(cur.Mode)
	if prev == "" {
		prev = "policy"
	}
	reason := fmt.Sprintf("enforcement mode override %s -> %s", prev, name)
	if req.GetReason() != "" {
		reason += ": " + req.GetReason()
	}
	s.auditAgent(ctx, id, "agent.mode", reason, map[string]any{"previous": prev, "mode": name})
	a, err := s.reg.GetAgent(ctx, id)
	if err != nil {
		return nil, s.registryStatus(id, err)
	}
	return AgentToProto(a), nil
}

// auditAgent writes a governance record about an agent. A failure is logged
// by the core; the change itself already happened.
func (s *AgentService) auditAgent(ctx context.Context, id action.AgentID, rule, reason string, fields map[string]any) {
	var payload []byte
	if fields != nil {
		payload, _ = json.Marshal(fields)
	}
	_ = s.opts.Core.AuditGovernance(ctx, id, rule, reason, payload)
}

func (s *AgentService) policyVersion() string {
	if snap := s.opts.Core.Snapshot(); snap != nil {
		return snap.Version()
	}
	return ""
}

// Sweep marks active agents whose last heartbeat is older than StaleAfter
// intervals as stale, and returns how many it marked. Every replica may
// sweep; the writes are idempotent.
func (s *AgentService) Sweep(ctx context.Context) (int, error) {
	list, err := s.reg.ListAgents(ctx, storage.AgentFilter{Status: storage.AgentActive})
	if err != nil {
		return 0, fmt.Errorf("sweep stale agents: %w", err)
	}
	limit := time.Duration(s.opts.StaleAfter) * s.opts.HeartbeatInterval
	cutoff := s.opts.Now().Add(-limit)
	n := 0
	for _, a := range list {
		if a.LastSeen.IsZero() || !a.LastSeen.Before(cutoff) {
			continue
		}
		reason := fmt.Sprintf("no heartbeat for %s (%d missed intervals)", s.opts.Now().Sub(a.LastSeen).Round(time.Second), s.opts.StaleAfter)
		if err := s.reg.SetAgentStatus(ctx, a.ID, storage.AgentStale, reason); err != nil {
			return n, fmt.Errorf("mark agent %s stale: %w", a.ID, err)
		}
		n++
	}
	return n, nil
}

// RunSweeper sweeps every heartbeat interval until ctx ends.
func (s *AgentService) RunSweeper(ctx context.Context) {
	t := time.NewTicker(s.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("sweep stale agents", "err", err)
			} else if n > 0 {
				s.log.Info("agents marked stale", "count", n)
			}
		}
	}
}

// AgentToProto renders an agent on the wire (never its public key).
func AgentToProto(a *storage.Agent) *v1.AgentInfo {
	out := &v1.AgentInfo{Agent: agentIDTo(a.ID), Status: agentStatusTo(a.Status), StatusReason: a.StatusReason,
		Labels: a.Labels, Depth: int32(a.Depth), RegisteredAt: ts(a.RegisteredAt), LastSeen: ts(a.LastSeen),
		ModeOverride: modeToProto(a.Mode)}
	if a.Parent != (action.AgentID{}) {
		out.Parent = agentIDTo(a.Parent)
	}
	return out
}

func agentIDTo(id action.AgentID) *v1.AgentId {
	return &v1.AgentId{OrgId: id.Org, TeamId: id.Team, AgentId: id.Agent}
}

func agentStatusTo(s storage.AgentStatus) v1.AgentStatus {
	switch s {
	case storage.AgentActive:
		return v1.AgentStatus_AGENT_STATUS_ACTIVE
	case storage.AgentSuspended:
		return v1.AgentStatus_AGENT_STATUS_SUSPENDED
	case storage.AgentKilled:
		return v1.AgentStatus_AGENT_STATUS_KILLED
	case storage.AgentStale:
		return v1.AgentStatus_AGENT_STATUS_STALE
	}
	return v1.AgentStatus_AGENT_STATUS_UNSPECIFIED
}

func agentStatusFrom(s v1.AgentStatus) storage.AgentStatus {
	switch s {
	case v1.AgentStatus_AGENT_STATUS_ACTIVE:
		return storage.AgentActive
	case v1.AgentStatus_AGENT_STATUS_SUSPENDED:
		return storage.AgentSuspended
	case v1.AgentStatus_AGENT_STATUS_KILLED:
		return storage.AgentKilled
	case v1.AgentStatus_AGENT_STATUS_STALE:
		return storage.AgentStale
	}
	return ""
}

// agentStatus renders an error reading a registered agent; an unknown agent
// gets a message that says how agents become known.
// registryStatus is agentStatus counting a store fault in
// aa_store_errors_total{op="registry"}.
func (s *AgentService) registryStatus(id action.AgentID, err error) error {
	s.opts.Core.metrics.storeError(storeOpRegistry, err)
	return agentStatus(id, err)
}

func agentStatus(id action.AgentID, err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return status.Errorf(codes.NotFound, "agent %s is not registered: agents register when they start under aa-runtime or call Register (sdkclient); `aasm agent list` shows the registered ones", id)
	}
	return storeStatus("get agent "+id.String(), err)
}
