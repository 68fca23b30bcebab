package server

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/xds"
)

// xdsGatewayAddr is the gateway address written into xDS resources: the
// advertised address, else the gRPC listen address when it is host:port.
func (c *Config) xdsGatewayAddr() (string, bool) {
	if c.XDSAdvertiseAddr != "" {
		return c.XDSAdvertiseAddr, true
	}
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err == nil {
		return c.GRPCAddr, true
	}
	return "", false
}

// buildXDS creates the xDS control plane (ADS and XdsService on the gRPC
// server) and hooks it to policy reloads. Without a host:port address for
// sidecars to reach, xDS is off and the gateway says so.
func (s *Server) buildXDS() error {
	addr, ok := s.cfg.xdsGatewayAddr()
	if !ok {
		s.log.Warn("xDS control plane off: --grpc-addr is a unix socket; set --xds-advertise-addr to the host:port sidecars reach the gateway at")
		return nil
	}
	x, err := xds.New(s.core, xds.Options{
		GatewayAddr:    addr,
		EgressAddr:     s.cfg.XDSEgressAddr,
		DisableExtProc: !s.cfg.XDSExtProc,
		Agents:         registeredAgents(s.store),
		Authenticate:   s.adsAuth(),
		Logger:         s.log,
		Registry:       s.reg,
		OnNack:         s.core.AlertXDSNack,
	})
	if err != nil {
		return fmt.Errorf("xDS control plane: %w", err)
	}
	s.xds = x
	x.Register(s.grpc)
	v1.RegisterXdsServiceServer(s.grpc, xds.NewStatusService(x))
	prev := s.reloader.OnApply
	s.reloader.OnApply = func(docs []*policy.Document, snap *policy.Snapshot) {
		if prev != nil {
			prev(docs, snap)
		}
		x.Notify()
	}
	return nil
}

// registerXDSREST serves GET /v1/xds/status.
func (s *Server) registerXDSREST(ctx context.Context, gw *runtime.ServeMux) error {
	if s.xds == nil {
		return nil
	}
	if err := v1.RegisterXdsServiceHandlerServer(ctx, gw, xds.NewStatusService(s.xds)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	return nil
}

// runXDS recomputes snapshots on policy changes until ctx ends.
func (s *Server) runXDS(ctx context.Context, wg *sync.WaitGroup) {
	if s.xds == nil {
		return
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := s.xds.Run(ctx); err != nil {
			s.log.Error("xDS control plane stopped", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		s.followRegistrations(ctx)
	}()
}

// followRegistrations prepares the snapshot of each agent that registers
// (on any replica) and recomputes on policy events, until ctx ends.
func (s *Server) followRegistrations(ctx context.Context) {
	if s.events == nil {
		return
	}
	after := s.events.Head()
	for {
		evs, err := s.events.Next(ctx, after, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("xDS: stopped following agent registrations", "err", err)
			}
			return
		}
		for _, ev := range evs {
			after = ev.Seq
			switch ev.Type {
			case storage.InvalidateRegistered:
				if err := s.xds.AddAgent(ctx, ev.Agent); err != nil {
					s.log.Warn("xDS: snapshot for registered agent", "agent", ev.Agent.String(), "err", err)
				}
			case storage.InvalidatePolicy, gateway.InvalidateResync:
				s.xds.Notify()
			}
		}
	}
}

// XDS returns the xDS control plane, nil when it is off.
func (s *Server) XDS() *xds.Server { return s.xds }

// registeredAgents lists the registry's active agents for xDS.
func registeredAgents(reg storage.AgentRegistry) xds.AgentLister {
	return func(ctx context.Context) ([]action.AgentID, error) {
		agents, err := reg.ListAgents(ctx, storage.AgentFilter{Status: storage.AgentActive})
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
		ids := make([]action.AgentID, len(agents))
		for i, a := range agents {
			ids[i] = a.ID
		}
		return ids, nil
	}
}
