package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Capacities of the kernel maps (see c/governor.c).
const (
	// MaxAgents is how many cgroups can be governed at once.
	MaxAgents = 4096
	// MaxPorts is how many ports one destination entry can list.
	MaxPorts = 16
	// MaxExecNameLen is the longest executable name or path an exec rule
	// can hold, in bytes.
	MaxExecNameLen = 127
	// ruleCapacity and execCapacity are the sizes of the shared rule maps.
	ruleCapacity = 65536
	execCapacity = 16384
	// DefaultMaxDestinations is the default per-agent destination limit.
	// Each agent holds two sets of entries while its rules are swapped.
	DefaultMaxDestinations = 1024
	// DefaultMaxExecRules is the default per-agent exec rule limit.
	DefaultMaxExecRules = 256
)

// ErrCapacity is matched (errors.Is) by every error that rejects a
// configuration because it does not fit the kernel maps.
var ErrCapacity = errors.New("over kernel map capacity")

// CapacityError says which limit a configuration exceeds.
type CapacityError struct {
	What string
	Have int
	Max  int
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("%s: %d, over the kernel map capacity of %d; split the agent's policy or raise the limit", e.What, e.Have, e.Max)
}

// Is makes CapacityError match ErrCapacity.
func (e *CapacityError) Is(target error) bool { return target == ErrCapacity }

// NetworkMode says what the kernel does with a connection no allowlist
// entry admits.
type NetworkMode uint8

// Network modes.
const (
	// NetworkDeny refuses it: connect() and sendmsg() fail with EPERM.
	NetworkDeny NetworkMode = iota
	// NetworkRedirect rewrites a TCP connect() to the local Envoy egress
	// listener (AgentConfig.Redirect) so L2 judges it; datagrams are denied.
	NetworkRedirect
	// NetworkObserve lets it through and reports it as VerdictObserveDeny.
	NetworkObserve
)

func (m NetworkMode) String() string {
	switch m {
	case NetworkDeny:
		return "deny"
	case NetworkRedirect:
		return "redirect"
	case NetworkObserve:
		return "observe"
	}
	return fmt.Sprintf("NetworkMode(%d)", uint8(m))
}

// ExecMode says what the kernel does with an exec that policy denies.
type ExecMode uint8

// Exec modes.
const (
	// ExecEnforce kills the new image with SIGKILL before it runs.
	ExecEnforce ExecMode = iota
	// ExecObserve lets it run and reports it as VerdictObserveDeny.
	ExecObserve
)

// Destination is an allowed egress destination.
type Destination struct {
	// Prefix is the allowed address range; a single address is a /32 or
	// /128. IPv4 prefixes also admit their v4-mapped IPv6 form.
	Prefix netip.Prefix
	// Ports restricts the destination to these ports; empty means any.
	Ports []uint16
	// ID is reported as Event.RuleID when this destination admits a
	// connection (for example an index into the caller's rule list).
	ID uint32
}

func (d Destination) String() string {
	if len(d.Ports) == 0 {
		return d.Prefix.String()
	}
	ps := make([]string, len(d.Ports))
	for i, p := range d.Ports {
		ps[i] = fmt.Sprint(p)
	}
	return d.Prefix.String() + " ports " + strings.Join(ps, ",")
}

// ExecRule is an exec allow or deny entry: a base name ("curl") or an
// absolute path ("/usr/bin/curl"), matched exactly.
type ExecRule struct {
	Name string
	// ID is reported as Event.RuleID when the rule decides an exec.
	ID uint32
}

// AgentConfig is what the kernel enforces for one governed cgroup.
type AgentConfig struct {
	// ID identifies the agent in events (Event.AgentID); the caller maps
	// it to the agent's identity.
	ID uint32
	// Network is the mode for connections no destination admits.
	Network NetworkMode
	// Egress lists the allowed destinations. Host-wide always-allowed
	// destinations (Options.Always) are added by the loader.
	Egress []Destination
	// Redirect is the local Envoy egress listener (IPv4) that NetworkRedirect
	// sends TCP connections to; Redirect6, when valid, is used for IPv6
	// destinations with Redirect's port. Without Redirect6 an IPv6
	// connection that is not admitted is denied.
	Redirect  netip.AddrPort
	Redirect6 netip.Addr
	// Exec is the mode for denied execs.
	Exec ExecMode
	// ExecDeny lists executables that are killed.
	ExecDeny []ExecRule
	// ExecAllow, when non-nil, is an allowlist: any other executable is
	// killed. Nil means every executable not in ExecDeny may run.
	ExecAllow []ExecRule
}

// Limits bound what one agent may put into the shared kernel maps.
type Limits struct {
	MaxDestinations int
	MaxExecRules    int
}

func (l Limits) withDefaults() Limits {
	if l.MaxDestinations <= 0 {
		l.MaxDestinations = DefaultMaxDestinations
	}
	if l.MaxExecRules <= 0 {
		l.MaxExecRules = DefaultMaxExecRules
	}
	return l
}

// validate checks the limits against the shared maps: with two rule sets
// per agent during a swap, MaxAgents agents cannot all use the maximum, but
// any single agent's maximum must fit.
func (l Limits) validate() error {
	if 2*l.MaxDestinations > ruleCapacity {
		return &CapacityError{What: "limits: max destinations per agent (twice, for the swap)", Have: 2 * l.MaxDestinations, Max: ruleCapacity}
	}
	if 2*l.MaxExecRules > execCapacity {
		return &CapacityError{What: "limits: max exec rules per agent (twice, for the swap)", Have: 2 * l.MaxExecRules, Max: execCapacity}
	}
	return nil
}

// entry is one LPM trie entry after merging.
type entry struct {
	prefix netip.Prefix
	ports  []uint16 // nil: any
	id     uint32
}

// compileEgress merges destinations into LPM entries: equal prefixes are
// joined, and every entry inherits the ports of the entries that cover it,
// so that the longest-prefix match alone gives the right answer.
func compileEgress(what string, dests []Destination, max int) ([]entry, error) {
	byPrefix := map[netip.Prefix]int{}
	var out []entry
	for i, d := range dests {
		if !d.Prefix.IsValid() {
			return nil, fmt.Errorf("%s[%d]: invalid prefix %q", what, i, d.Prefix)
		}
		p := canonical(d.Prefix)
		if len(d.Ports) > MaxPorts {
			return nil, &CapacityError{What: fmt.Sprintf("%s[%d] (%s): ports", what, i, p), Have: len(d.Ports), Max: MaxPorts}
		}
		for _, port := range d.Ports {
			if port == 0 {
				return nil, fmt.Errorf("%s[%d] (%s): port 0 is not a port; leave ports empty for any port", what, i, p)
			}
		}
		if j, ok := byPrefix[p]; ok {
			out[j].ports = unionPorts(out[j].ports, d.Ports)
			continue
		}
		byPrefix[p] = len(out)
		var ports []uint16
		if len(d.Ports) > 0 {
			ports = slices.Clone(d.Ports)
		}
		out = append(out, entry{prefix: p, ports: ports, id: d.ID})
	}
	if len(out) > max {
		return nil, &CapacityError{What: what + ": destinations", Have: len(out), Max: max}
	}
	merged := make([]entry, len(out))
	for i, e := range out {
		ports := e.ports
		for j, c := range out {
			if i != j && c.prefix.Bits() < e.prefix.Bits() && c.prefix.Contains(e.prefix.Addr()) {
				ports = unionPorts(ports, c.ports)
			}
		}
		if len(ports) > MaxPorts {
			return nil, &CapacityError{What: fmt.Sprintf("%s: %s: ports after merging the entries that cover it", what, e.prefix), Have: len(ports), Max: MaxPorts}
		}
		slices.Sort(ports)
		merged[i] = entry{prefix: e.prefix, ports: ports, id: e.id}
	}
	return merged, nil
}

// unionPorts joins two port sets where nil means any port.
func unionPorts(a, b []uint16) []uint16 {
	if a == nil || b == nil {
		return nil
	}
	out := slices.Clone(a)
	for _, p := range b {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// canonical masks the prefix and turns a v4-mapped IPv6 prefix of at least
// /96 into its IPv4 form.
func canonical(p netip.Prefix) netip.Prefix {
	a := p.Addr().WithZone("")
	if a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return netip.PrefixFrom(a, p.Bits()).Masked()
}

// trieKey encodes prefix into an LPM key of slot.
func trieKey(slot uint32, p netip.Prefix) governorRuleKey {
	a := p.Addr()
	bits := p.Bits()
	if a.Is4() {
		bits += 96
	}
	b := a.As16()
	k := governorRuleKey{Prefixlen: uint32(32 + bits), Slot: slot}
	for i := range 4 {
		k.Addr[i] = nativeFromBE(b[i*4 : i*4+4])
	}
	return k
}

func trieValue(e entry) governorRule {
	v := governorRule{Id: e.id, Nports: uint16(len(e.ports))}
	copy(v.Ports[:], e.ports)
	return v
}

// execEntry is one exec rule map entry.
type execEntry struct {
	key  governorExecKey
	rule governorExecRule
}

const (
	execAllow    = 1
	execDeny     = 2
	execBasename = 1
	execPath     = 2
)

func compileExec(cfg *AgentConfig, slot uint32, max int) ([]execEntry, error) {
	n := len(cfg.ExecDeny) + len(cfg.ExecAllow)
	if n > max {
		return nil, &CapacityError{What: "exec rules", Have: n, Max: max}
	}
	seen := map[governorExecKey]bool{}
	var out []execEntry
	add := func(list string, rules []ExecRule, action uint32) error {
		for i, r := range rules {
			k, err := execKey(slot, r.Name)
			if err != nil {
				return fmt.Errorf("%s[%d]: %w", list, i, err)
			}
			if seen[k] {
				// Deny is added first and wins over a duplicate allow.
				continue
			}
			seen[k] = true
			out = append(out, execEntry{key: k, rule: governorExecRule{Id: r.ID, Action: action}})
		}
		return nil
	}
	if err := add("exec deny", cfg.ExecDeny, execDeny); err != nil {
		return nil, err
	}
	if err := add("exec allow", cfg.ExecAllow, execAllow); err != nil {
		return nil, err
	}
	return out, nil
}

func execKey(slot uint32, name string) (governorExecKey, error) {
	k := governorExecKey{Slot: slot, Kind: execBasename}
	switch {
	case name == "":
		return k, errors.New("empty executable name")
	case len(name) > MaxExecNameLen:
		return k, fmt.Errorf("executable %q: %d bytes, longer than %d", name, len(name), MaxExecNameLen)
	case strings.ContainsRune(name, 0):
		return k, fmt.Errorf("executable %q: contains NUL", name)
	case strings.ContainsAny(name, "*?["):
		return k, fmt.Errorf("executable %q: globs cannot be matched in the kernel; list exact names", name)
	case strings.Contains(name, "/"):
		if !strings.HasPrefix(name, "/") {
			return k, fmt.Errorf("executable %q: a path must be absolute", name)
		}
		k.Kind = execPath
	}
	for i := 0; i < len(name); i++ {
		k.Name[i] = int8(name[i])
	}
	return k, nil
}

// validateConfig checks everything that does not depend on the slot.
func validateConfig(cfg *AgentConfig) error {
	switch cfg.Network {
	case NetworkDeny, NetworkObserve:
	case NetworkRedirect:
		if !cfg.Redirect.IsValid() || !cfg.Redirect.Addr().Unmap().Is4() || cfg.Redirect.Port() == 0 {
			return fmt.Errorf("redirect mode: Redirect must be an IPv4 address and a non-zero port, have %q", cfg.Redirect)
		}
		if cfg.Redirect6.IsValid() && !cfg.Redirect6.Is6() {
			return fmt.Errorf("redirect mode: Redirect6 must be an IPv6 address, have %q", cfg.Redirect6)
		}
	default:
		return fmt.Errorf("unknown network mode %d", cfg.Network)
	}
	if cfg.Exec != ExecEnforce && cfg.Exec != ExecObserve {
		return fmt.Errorf("unknown exec mode %d", cfg.Exec)
	}
	return nil
}

// Validate checks cfg as Govern would (modes, destinations, ports, exec
// names) against limits (zero fields: the defaults), without a kernel:
// bad input is refused before anything is loaded. The always-allowed
// destinations of Options are checked by Open.
func (cfg AgentConfig) Validate(limits Limits) error {
	l := limits.withDefaults()
	if err := validateConfig(&cfg); err != nil {
		return fmt.Errorf("validate agent config: %w", err)
	}
	if _, err := compileEgress("egress", cfg.Egress, l.MaxDestinations); err != nil {
		return fmt.Errorf("validate agent config: %w", err)
	}
	if _, err := compileExec(&cfg, 0, l.MaxExecRules); err != nil {
		return fmt.Errorf("validate agent config: %w", err)
	}
	return nil
}
