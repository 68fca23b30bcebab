// Package egress translates an agent's compiled policy into the kernel
// layer's configuration (bpf.AgentConfig): allowlist hosts are resolved
// through the runtime's resolver, refreshed when their TTL runs out, and
// the resolved addresses are recorded.
package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Entry is one allowlist entry of one document.
type Entry struct {
	// Source names the entry: "<document>/network.allowlist[i]".
	Source string
	// Host is set for host entries (lower case), Prefix for CIDR entries.
	Host   string
	Prefix netip.Prefix
	Ports  []uint16
}

// Plan is the kernel's share of an agent's policy, before host names are
// resolved. Sets holds one allowlist per document that constrains the
// agent; the agent may reach what every set admits (the cascade's most
// restrictive wins).
type Plan struct {
	Network bpf.NetworkMode
	Sets    [][]Entry
	// Exec rules: exact names only (globs cannot be matched in the kernel).
	ExecDeny  []string
	ExecAllow []string // nil: no allowlist
	// Unenforced lists what the kernel cannot enforce, for the log and
	// the operator; the gateway and Envoy still judge it.
	Unenforced []string
}

// Options shape a compiled Plan.
type Options struct {
	// MaxDestinations is the per-agent limit of the kernel maps
	// (bpf.DefaultMaxDestinations when 0). A plan whose entries already
	// exceed it is rejected before anything is resolved or loaded.
	MaxDestinations int
}

// Compile builds the plan for agent from snap. Only enforce documents
// constrain the kernel; when none has a network section but observe
// documents do, the plan observes (reports would-be denials) instead.
func Compile(snap *policy.Snapshot, agent action.AgentID, opts Options) (Plan, error) {
	max := opts.MaxDestinations
	if max <= 0 {
		max = bpf.DefaultMaxDestinations
	}
	st := snap.Settings(agent)
	var p Plan
	var observeSets [][]Entry
	allDefaultAllow := len(st.Documents) > 0
	anyEnforce := false
	for _, d := range st.Documents {
		sp := &d.Spec
		name := d.Metadata.Name
		enforce := sp.EnforcementMode == action.ModeEnforce
		if enforce {
			anyEnforce = true
			if sp.Default != action.Allow {
				allDefaultAllow = false
			}
		}
		if sp.Capabilities != nil && enforce {
			if !slices.Contains(sp.Capabilities, action.KindNetworkCall) {
				p.Sets = append(p.Sets, []Entry{})
			}
			if !slices.Contains(sp.Capabilities, action.KindProcessExec) {
				p.ExecAllow = intersectNames(p.ExecAllow, []string{})
			}
		}
		if n := sp.Network; n != nil {
			set := make([]Entry, 0, len(n.Allowlist))
			for i, e := range n.Allowlist {
				set = append(set, Entry{Source: fmt.Sprintf("%s/network.allowlist[%d]", name, i), Host: e.Host, Prefix: e.CIDR, Ports: e.Ports})
			}
			if enforce {
				p.Sets = append(p.Sets, set)
			} else {
				observeSets = append(observeSets, set)
			}
		}
		if pr := sp.Process; pr != nil && enforce {
			for _, g := range pr.Deny {
				if isGlob(g) {
					p.Unenforced = append(p.Unenforced, fmt.Sprintf("%s/process.deny %q: a glob; the kernel matches exact names only", name, g))
					continue
				}
				p.ExecDeny = append(p.ExecDeny, g)
			}
			if pr.Allow != nil {
				if slices.ContainsFunc(pr.Allow, isGlob) {
					p.Unenforced = append(p.Unenforced, fmt.Sprintf("%s/process.allow: has globs; the kernel does not enforce this allowlist", name))
				} else {
					p.ExecAllow = intersectNames(p.ExecAllow, pr.Allow)
				}
			}
		}
	}
	switch {
	case len(p.Sets) > 0:
		p.Network = bpf.NetworkDeny
		if st.NetworkEnforcement == policy.NetworkRedirect {
			p.Network = bpf.NetworkRedirect
		}
	case len(observeSets) > 0 && !anyEnforce:
		p.Network = bpf.NetworkObserve
		p.Sets = observeSets
	case anyEnforce && allDefaultAllow:
		p.Sets = [][]Entry{{{Source: "default: allow", Prefix: netip.MustParsePrefix("::/0")}, {Source: "default: allow", Prefix: netip.MustParsePrefix("0.0.0.0/0")}}}
	default:
		// No document admits any network call: deny all (fail closed).
		p.Sets = [][]Entry{{}}
	}
	for _, set := range p.Sets {
		if len(set) > max {
			return Plan{}, fmt.Errorf("compile egress for %s: %w", agent, &bpf.CapacityError{What: "network allowlist entries", Have: len(set), Max: max})
		}
		for _, e := range set {
			if strings.HasPrefix(e.Host, "*.") {
				p.Unenforced = append(p.Unenforced, fmt.Sprintf("%s %q: wildcard hosts cannot be resolved; the kernel denies them (use network.enforcement: redirect so Envoy judges them)", e.Source, e.Host))
			}
		}
	}
	return p, nil
}

func isGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// intersectNames intersects allowlists; nil is "no allowlist".
func intersectNames(a, b []string) []string {
	if a == nil {
		return slices.Clone(b)
	}
	out := []string{}
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
