package server

import (
	"context"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// startLifecycle builds the agent lifecycle and invalidation services and
// starts their background loops (log follower, approval follower, stale
// sweeper) for the server's lifetime.
func (s *Server) startLifecycle(ctx context.Context) error {
	if err := s.newIssuer(ctx); err != nil {
		return err
	}
	issuer := s.issuer
	mode, _ := gateway.ParseAgentAuthMode(s.cfg.AgentAuth) // validated
	var err error
	s.agentAuth, err = gateway.NewAgentAuth(gateway.AgentAuthOptions{Mode: mode, Issuer: issuer,
		TrustDomain: s.cfg.AgentSPIFFETrustDomain, Core: s.core, Logger: s.log, Registry: s.reg})
	if err != nil {
		return err
	}
	s.events, err = gateway.NewInvalidations(gateway.InvalidationsOptions{
		Log: s.store, Notifier: s.store, Logger: s.log,
		// Drop the agent from this replica's registry cache before any
		// ControlStream here delivers the event, so the agent's next check
		// sees the new status or mode.
		OnEvent: func(ev *storage.InvalidationEvent) {
			if ev.Agent != (action.AgentID{}) {
				s.cached.Agents.Invalidate(ev.Agent)
				s.agentAuth.OnInvalidation(ev) // after the registry cache: re-verification reads the new state
			}
		},
	})
	if err != nil {
		return err
	}
	s.agents, err = gateway.NewAgentService(gateway.AgentServiceOptions{
		Registry: s.agentAuth.Registry(s.cached), Issuer: issuer, Events: s.events, Core: s.core, Logger: s.log,
		Auth: s.agentAuth,
	})
	if err != nil {
		return err
	}
	go func() {
		if err := s.events.Run(s.life); err != nil {
			s.log.Error("invalidation log follower stopped", "err", err)
		}
	}()
	if err := s.events.FollowApprovals(s.life, s.store, s.store); err != nil {
		s.log.Warn("approval resolutions will not reach InvalidationService subscribers", "err", err)
	}
	go s.agents.RunSweeper(s.life)

	var mu sync.Mutex
	current := ""
	if snap := s.core.Snapshot(); snap != nil {
		current = snap.Version()
	}
	prev := s.reloader.OnApply
	s.reloader.OnApply = func(docs []*policy.Document, snap *policy.Snapshot) {
		if prev != nil {
			prev(docs, snap)
		}
		mu.Lock()
		from := current
		current = snap.Version()
		mu.Unlock()
		pctx, cancel := context.WithTimeout(s.life, 5*time.Second)
		defer cancel()
		s.events.PolicyApplied(pctx, from, snap.Version())
	}
	return nil
}

// Agents returns the agent lifecycle service (VerifyToken for other
// services that authenticate agents by their credential token).
func (s *Server) Agents() *gateway.AgentService { return s.agents }

// agentStatuses is the registry the decision core reads (the cached store)
// and writes when a budget with action_on_exceed: suspend suspends an agent;
// such a suspension is also published as an invalidation event, so the
// agent's ControlStream gets SUSPEND like an operator's.
type agentStatuses struct{ s *Server }

var _ gateway.AgentStatuses = agentStatuses{}

// GetAgent reads through the registry cache.
func (a agentStatuses) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	return a.s.cached.GetAgent(ctx, id)
}

// PeekAgent answers from the registry cache only, without a copy.
func (a agentStatuses) PeekAgent(id action.AgentID) (*storage.Agent, bool) {
	return a.s.cached.PeekAgent(id)
}

// SetAgentStatus writes through the cache and publishes the change.
func (a agentStatuses) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	if err := a.s.cached.SetAgentStatus(ctx, id, st, reason); err != nil {
		return err
	}
	typ := storage.InvalidateResumed
	switch st {
	case storage.AgentSuspended:
		typ = storage.InvalidateSuspended
	case storage.AgentKilled:
		typ = storage.InvalidateKilled
	}
	if a.s.events != nil {
		if _, err := a.s.events.Publish(ctx, gateway.AgentEvent(typ, id, reason)); err != nil {
			a.s.log.WarnContext(ctx, "publish agent status change", "agent", id.String(), "status", string(st), "err", err)
		}
	}
	return nil
}
