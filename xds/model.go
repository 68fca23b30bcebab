package xds

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Destination is one (host, port) an agent may reach through its sidecar.
type Destination struct {
	// Host is a lower-case host name, an IP literal, or "*.suffix" (any
	// subdomain of suffix).
	Host string
	// Port is the destination port.
	Port uint32
}

// Wildcard reports whether the destination names a domain suffix.
func (d Destination) Wildcard() bool { return strings.HasPrefix(d.Host, "*.") }

// IP reports whether the host is an IP literal.
func (d Destination) IP() bool {
	_, err := netip.ParseAddr(d.Host)
	return err == nil
}

// TLS reports whether the sidecar originates TLS to the destination (port 443).
func (d Destination) TLS() bool { return d.Port == 443 }

// String renders host:port.
func (d Destination) String() string {
	if strings.Contains(d.Host, ":") { // IPv6 literal
		return "[" + d.Host + "]:" + itoa(d.Port)
	}
	return d.Host + ":" + itoa(d.Port)
}

// anyPortDefaults are the ports an allowlist entry without ports is routed on.
var anyPortDefaults = []uint32{80, 443}

// hostEntry is one host allowlist entry with its ports (nil: any port).
type hostEntry struct {
	host  string
	ports []uint32
}

// Destinations returns the destinations agent may reach under snap, sorted by
// host and port. A destination must be allowed by every enforce-mode document
// with a network allowlist that applies to the agent (the cascade's most
// restrictive result); when none applies, observe-mode allowlists are used so
// that an observed roll-out still routes. CIDR entries and the "*" host are
// not routable by name and are left to the kernel layer and ext_authz; an
// entry without ports is routed on ports 80 and 443.
//
// The routes only decide what Envoy can reach at all: every request still
// goes through ext_authz, which applies the full policy (rules, schedule,
// budgets, approvals).
func Destinations(snap *policy.Snapshot, agent action.AgentID) []Destination {
	if snap == nil {
		return nil
	}
	return destinationsOf(constraining(applicable(snap, agent)))
}

// applicable returns the documents that apply to agent, without disabled
// ones (as in policy.Settings).
func applicable(snap *policy.Snapshot, agent action.AgentID) []*policy.Document {
	docs := snap.ApplicableDocuments(agent)
	out := docs[:0]
	for _, d := range docs {
		if d.Spec.EnforcementMode != action.ModeDisabled {
			out = append(out, d)
		}
	}
	return out
}

// constraining returns the documents whose allowlists decide the agent's
// destinations.
func constraining(docs []*policy.Document) []*policy.Document {
	var enforce, observe []*policy.Document
	for _, d := range docs {
		if d.Spec.Network == nil || d.Spec.Network.Allowlist == nil {
			continue
		}
		switch d.Spec.EnforcementMode {
		case action.ModeEnforce:
			enforce = append(enforce, d)
		case action.ModeObserve:
			observe = append(observe, d)
		}
	}
	if len(enforce) > 0 {
		return enforce
	}
	return observe
}

// destinationsOf intersects the allowlists of docs (all must allow) when
// there are enforce documents; observe-only documents are united.
func destinationsOf(docs []*policy.Document) []Destination {
	if len(docs) == 0 {
		return nil
	}
	union := docs[0].Spec.EnforcementMode == action.ModeObserve
	var cands []hostEntry
	for i, d := range docs {
		entries := hostEntries(d.Spec.Network.Allowlist)
		if i == 0 || union {
			cands = append(cands, entries...)
			continue
		}
		var next []hostEntry
		for _, c := range cands {
			for _, e := range entries {
				if m, ok := meet(c, e); ok {
					next = append(next, m)
				}
			}
		}
		cands = next
	}
	var out []Destination
	for _, c := range cands {
		if c.host == "*" {
			continue
		}
		ports := c.ports
		if ports == nil {
			ports = anyPortDefaults
		}
		for _, p := range ports {
			out = append(out, Destination{Host: c.host, Port: p})
		}
	}
	slices.SortFunc(out, func(a, b Destination) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Port, b.Port))
	})
	return slices.Compact(out)
}

func hostEntries(list []policy.NetworkEntry) []hostEntry {
	out := make([]hostEntry, 0, len(list))
	for _, e := range list {
		if e.Host == "" {
			continue // CIDR entry
		}
		he := hostEntry{host: strings.ToLower(e.Host)}
		if len(e.Ports) > 0 {
			he.ports = make([]uint32, len(e.Ports))
			for i, p := range e.Ports {
				he.ports[i] = uint32(p)
			}
		}
		out = append(out, he)
	}
	return out
}

// meet is the intersection of two entries: the narrower host when one
// covers the other, and the common ports.
func meet(a, b hostEntry) (hostEntry, bool) {
	var host string
	switch {
	case covers(a.host, b.host):
		host = b.host
	case covers(b.host, a.host):
		host = a.host
	default:
		return hostEntry{}, false
	}
	switch {
	case a.ports == nil:
		return hostEntry{host, b.ports}, true
	case b.ports == nil:
		return hostEntry{host, a.ports}, true
	}
	var ports []uint32
	for _, p := range a.ports {
		if slices.Contains(b.ports, p) {
			ports = append(ports, p)
		}
	}
	return hostEntry{host, ports}, len(ports) > 0
}

// covers reports whether pattern allows every host that h allows.
func covers(pattern, h string) bool {
	switch {
	case pattern == h || pattern == "*":
		return true
	case h == "*":
		return false
	case strings.HasPrefix(pattern, "*."):
		suffix := pattern[1:] // ".example.com"
		return strings.HasSuffix(h, suffix) && len(h) > len(suffix)
	}
	return false
}

func itoa(p uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + p%10)
		p /= 10
		if p == 0 {
			return string(b[i:])
		}
	}
}
