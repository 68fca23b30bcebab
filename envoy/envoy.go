// Package envoy holds the Envoy sidecar configurations (the xDS bootstrap
// and the static fallback) and renders them for an agent.
package envoy

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"

	"github.com/agent-assembly/agent-assembly/action"
)

// BootstrapYAML is the xDS bootstrap template (bootstrap.yaml).
//
//go:embed bootstrap.yaml
var BootstrapYAML []byte

// StaticYAML is the static fallback template (static.yaml).
//
//go:embed static.yaml
var StaticYAML []byte

// Vars fill a template's placeholders; sidecar.sh takes the same values
// from the environment.
type Vars struct {
	// Agent is the node id (required).
	Agent action.AgentID
	// Gateway is the gateway's gRPC host:port (default 127.0.0.1:50051).
	Gateway string
	// AdminPort is Envoy's admin port on 127.0.0.1 (default 9901).
	AdminPort int
	// EgressPort is the egress listener's port on 127.0.0.1 (default
	// 15001): the static config binds it, the xDS bootstrap asks the
	// gateway for it in node metadata aa_egress_addr.
	EgressPort int
	// Token is the agent's credential token, presented on the ADS stream
	// (bootstrap) or on ext_authz and ext_proc calls (static config) as
	// x-aa-credential-token; empty when Envoy presents an agent client
	// certificate instead.
	Token string
}

var placeholder = regexp.MustCompile(`\$\{([A-Z_]+)\}`)

// tokenChars are the characters of a credential token (base64url and dots),
// so one can be put in YAML and a sed expression as is.
var tokenChars = regexp.MustCompile(`^[A-Za-z0-9._-]*$`)

// Render fills the ${...} placeholders of template from v. An unknown
// placeholder or a bad value is an error naming it.
func Render(template []byte, v Vars) ([]byte, error) {
	if v.Agent.Org == "" || v.Agent.Team == "" || v.Agent.Agent == "" {
		return nil, fmt.Errorf("render envoy config: agent id %q is not org/team/agent", v.Agent.String())
	}
	if v.Gateway == "" {
		v.Gateway = "127.0.0.1:50051"
	}
	host, port, err := net.SplitHostPort(v.Gateway)
	if err != nil || host == "" {
		return nil, fmt.Errorf("render envoy config: gateway %q is not host:port", v.Gateway)
	}
	if v.AdminPort == 0 {
		v.AdminPort = 9901
	}
	if v.EgressPort == 0 {
		v.EgressPort = 15001
	}
	vals := map[string]string{
		"AA_AGENT_ID": v.Agent.String(), "AA_ORG": v.Agent.Org, "AA_TEAM": v.Agent.Team, "AA_AGENT": v.Agent.Agent,
		"AA_GATEWAY_HOST": host, "AA_GATEWAY_PORT": port,
		"AA_ENVOY_ADMIN_PORT": strconv.Itoa(v.AdminPort), "AA_EGRESS_PORT": strconv.Itoa(v.EgressPort),
		"AA_CREDENTIAL_TOKEN": v.Token,
	}
	if !tokenChars.MatchString(v.Token) {
		return nil, errors.New("render envoy config: the credential token has characters a token never has (want the aa1. token Register returned)")
	}
	var errs []error
	out := placeholder.ReplaceAllFunc(template, func(m []byte) []byte {
		name := string(m[2 : len(m)-1])
		val, ok := vals[name]
		if !ok {
			errs = append(errs, fmt.Errorf("render envoy config: unknown placeholder ${%s}", name))
			return m
		}
		return []byte(val)
	})
	return out, errors.Join(errs...)
}
