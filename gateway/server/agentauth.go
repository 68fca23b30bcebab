package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// validateAgentAuth checks --agent-auth and --agent-spiffe-trust-domain:
// authentication may be off only while every listener is loopback (or a
// unix socket), whatever --allow-remote says.
func (c *Config) validateAgentAuth() []error {
	var errs []error
	mode, err := gateway.ParseAgentAuthMode(c.AgentAuth)
	if err != nil {
		errs = append(errs, fmt.Errorf("--agent-auth: must be token or off, not %q", c.AgentAuth))
	}
	if mode == gateway.AgentAuthOff {
		for _, a := range []struct{ flag, addr string }{{"grpc-addr", c.GRPCAddr}, {"api-addr", c.APIAddr}} {
			if a.addr != "" && !localAddr(a.addr) {
				errs = append(errs, fmt.Errorf("--agent-auth: off is for development on loopback only, and --%s %q is not loopback: use --agent-auth token", a.flag, a.addr))
			}
		}
	}
	td := c.AgentSPIFFETrustDomain
	if td == "" || strings.ContainsAny(td, "/:@?#% ") || strings.ToLower(td) != td {
		errs = append(errs, errors.New("--agent-spiffe-trust-domain: must be a lower-case SPIFFE trust domain such as agent-assembly or example.org"))
	}
	return errs
}

// localAddr reports whether addr is a unix socket or a loopback host:port.
func localAddr(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// AgentAuth returns the agent authenticator (nil before New finishes).
func (s *Server) AgentAuth() *gateway.AgentAuth { return s.agentAuth }

// adsAuth proves the agent of each ADS stream (nil with agent
// authentication off: every node is served).
func (s *Server) adsAuth() func(context.Context) (action.AgentID, string, error) {
	if !s.agentAuth.Enabled() {
		return nil
	}
	return func(ctx context.Context) (action.AgentID, string, error) {
		return s.agentAuth.AuthenticateStream(ctx, "ADS")
	}
}
