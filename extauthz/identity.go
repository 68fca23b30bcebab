package extauthz

import (
	"strings"

	"github.com/agent-assembly/agent-assembly/action"
)

// Context extension keys that name the agent, set per route or virtual host
// in the Envoy configuration (typed_per_filter_config of the ext_authz filter).
const (
	ExtOrg   = "aa_org"
	ExtTeam  = "aa_team"
	ExtAgent = "aa_agent"
	// ExtToken carries the node's credential token; the gateway's xDS
	// writes it (xds.ContextExtToken) for a node whose ADS stream
	// presented one. It corroborates the agent like the token header.
	ExtToken = "aa_credential_token"
)

// Unattributed is the agent name given to requests no source identifies; the
// policy's `unattributed` treatment applies to it (deny in the examples).
const Unattributed = "unattributed"

// identify finds the agent of a request, in order of trust:
//
//  1. the mTLS peer principal (attributes.source.principal), when it is a
//     SPIFFE id of one of these forms:
//     spiffe://<trust-domain>/org/<org>/team/<team>/agent/<agent>
//     spiffe://<trust-domain>/ns/<org>/sa/<agent> (Istio; the team comes
//     from the aa_team context extension when set, else it is empty);
//     a principal of another form is ignored;
//  2. the context extensions aa_org, aa_team and aa_agent (all three set);
//  3. the configured header (default x-aa-agent-id) as org/team/agent;
//  4. otherwise the agent is Unattributed, with an empty org and team.
//
// The header is the weakest source: anything the agent sends can be forged,
// so deployments should set identity through mTLS or the route.
func identify(principal string, ext map[string]string, header string) (action.AgentID, string) {
	if id, ok := parseSPIFFE(principal, ext[ExtTeam]); ok {
		return id, "principal"
	}
	if o, t, a := ext[ExtOrg], ext[ExtTeam], ext[ExtAgent]; o != "" && t != "" && a != "" {
		return action.AgentID{Org: o, Team: t, Agent: a}, "context_extensions"
	}
	if id, ok := parseAgentID(header); ok {
		return id, "header"
	}
	return action.AgentID{Agent: Unattributed}, "none"
}

// parseSPIFFE reads an agent id from a SPIFFE id; team fills the team of the
// Istio ns/sa form.
func parseSPIFFE(p, team string) (action.AgentID, bool) {
	rest, ok := strings.CutPrefix(p, "spiffe://")
	if !ok {
		return action.AgentID{}, false
	}
	_, path, ok := strings.Cut(rest, "/") // drop the trust domain
	if !ok {
		return action.AgentID{}, false
	}
	n := strings.Count(path, "/") + 1
	if n != 4 && n != 6 {
		return action.AgentID{}, false
	}
	var seg [6]string // split by hand: strings.Split allocates per request
	for i := range n - 1 {
		seg[i], path, _ = strings.Cut(path, "/")
	}
	seg[n-1] = path
	switch {
	case n == 6 && seg[0] == "org" && seg[2] == "team" && seg[4] == "agent" &&
		seg[1] != "" && seg[3] != "" && seg[5] != "":
		return action.AgentID{Org: seg[1], Team: seg[3], Agent: seg[5]}, true
	case n == 4 && seg[0] == "ns" && seg[2] == "sa" && seg[1] != "" && seg[3] != "":
		return action.AgentID{Org: seg[1], Team: team, Agent: seg[3]}, true
	}
	return action.AgentID{}, false
}

// parseAgentID reads org/team/agent with three non-empty parts.
func parseAgentID(s string) (action.AgentID, bool) {
	s = strings.TrimSpace(s)
	o, rest, ok1 := strings.Cut(s, "/")
	t, a, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || o == "" || t == "" || a == "" || strings.Contains(a, "/") {
		return action.AgentID{}, false
	}
	return action.AgentID{Org: o, Team: t, Agent: a}, true
}
