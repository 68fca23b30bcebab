package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
)

// Resolver resolves a host name to addresses and how long they hold.
type Resolver interface {
	Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error)
}

// NetResolver adapts a *net.Resolver, which does not report TTLs, with a
// fixed TTL. DNSResolver reports the records' own TTLs.
type NetResolver struct {
	Resolver *net.Resolver
	TTL      time.Duration
}

// Resolve implements Resolver.
func (r NetResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	res := r.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	addrs, err := res.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, 0, fmt.Errorf("resolve %s: %w", host, err)
	}
	return addrs, r.TTL, nil
}

var _ Resolver = NetResolver{}

// Resolution records what a host resolved to.
type Resolution struct {
	Host    string
	Addrs   []netip.Addr
	Expires time.Time
	// Err is the last resolution error; the host then contributes no
	// address (fail closed) until a retry succeeds.
	Err error
}

// Governor is the part of *bpf.Governor an Agent needs.
type Governor interface {
	Govern(path string, cfg bpf.AgentConfig) error
}

var _ Governor = (*bpf.Governor)(nil)

// Config configures an Agent.
type Config struct {
	// Base is the configuration the plan's destinations and exec rules
	// are added to: ID, Redirect, Redirect6, Exec mode.
	Base     bpf.AgentConfig
	Resolver Resolver
	Logger   *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// MinTTL and RetryAfter bound refreshes: a TTL shorter than MinTTL is
	// raised to it, and a failed resolution is retried after RetryAfter.
	MinTTL     time.Duration
	RetryAfter time.Duration
}

// Agent keeps one governed cgroup's kernel rules in step with its plan and
// with DNS.
type Agent struct {
	gov  Governor
	path string
	cfg  Config

	// update serializes Apply and Refresh; it is held while hosts are
	// resolved, mu is not, so that Resolved and RuleFor (asked for every
	// kernel event) never wait on DNS.
	update sync.Mutex

	mu       sync.Mutex // guards the fields below
	plan     Plan
	resolved map[string]Resolution
	applied  []bpf.Destination
	rules    []Rule
}

// Rule maps an Event.RuleID back to the policy entry it came from.
type Rule struct {
	Source string
	Host   string
}

// NewAgent returns an Agent for the cgroup at path.
func NewAgent(gov Governor, path string, cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = 5 * time.Second
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 5 * time.Second
	}
	return &Agent{gov: gov, path: path, cfg: cfg, resolved: map[string]Resolution{}}
}

// Apply installs plan: hosts are resolved (cached results that have not
// expired are reused), the destinations are computed and the governor
// updates the kernel in one swap.
func (a *Agent) Apply(ctx context.Context, plan Plan) error {
	a.update.Lock()
	defer a.update.Unlock()
	a.mu.Lock()
	a.plan = plan
	a.mu.Unlock()
	for _, u := range plan.Unenforced {
		a.cfg.Logger.Warn("ebpf: policy entry not enforced in the kernel", "cgroup", a.path, "entry", u)
	}
	return a.refresh(ctx, true)
}

// Refresh re-resolves the hosts whose TTL has run out and updates the
// kernel when an address changed. Run calls it; tests call it directly.
func (a *Agent) Refresh(ctx context.Context) error {
	a.update.Lock()
	defer a.update.Unlock()
	return a.refresh(ctx, false)
}

// refresh runs with a.update held and takes a.mu only around the shared
// fields, never while resolving.
func (a *Agent) refresh(ctx context.Context, force bool) error {
	now := a.cfg.Now()
	a.mu.Lock()
	hosts := a.hostsLocked()
	for h := range a.resolved {
		if !slices.Contains(hosts, h) {
			delete(a.resolved, h)
		}
	}
	var due []string
	for _, host := range hosts {
		if r, ok := a.resolved[host]; !ok || !now.Before(r.Expires) {
			due = append(due, host)
		}
	}
	a.mu.Unlock()

	fresh := make([]Resolution, 0, len(due))
	for _, host := range due {
		var r Resolution
		addrs, ttl, err := a.cfg.Resolver.Resolve(ctx, host)
		if err != nil {
			a.cfg.Logger.Warn("ebpf: cannot resolve an allowlisted host; it is unreachable until it resolves", "host", host, "err", err)
			r = Resolution{Host: host, Err: err, Expires: now.Add(a.cfg.RetryAfter), Addrs: nil}
		} else {
			ttl = max(ttl, a.cfg.MinTTL)
			slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
			addrs = slices.Compact(addrs)
			r = Resolution{Host: host, Addrs: addrs, Expires: now.Add(ttl)}
			a.cfg.Logger.Debug("ebpf: allowlisted host resolved", "host", host, "addrs", addrs, "ttl", ttl.String())
		}
		fresh = append(fresh, r)
	}

	a.mu.Lock()
	for _, r := range fresh {
		a.resolved[r.Host] = r
	}
	dests, rules := a.destinationsLocked()
	unchanged := !force && slices.EqualFunc(dests, a.applied, equalDest)
	plan := a.plan
	a.mu.Unlock()
	if unchanged {
		return nil
	}
	cfg := a.cfg.Base
	cfg.Network = plan.Network
	cfg.Egress = dests
	cfg.ExecDeny = names(plan.ExecDeny)
	if plan.ExecAllow != nil {
		cfg.ExecAllow = names(plan.ExecAllow)
	}
	if err := a.gov.Govern(a.path, cfg); err != nil {
		return fmt.Errorf("apply egress: %w", err)
	}
	a.mu.Lock()
	a.applied = dests
	a.rules = rules
	a.mu.Unlock()
	return nil
}

func names(list []string) []bpf.ExecRule {
	out := make([]bpf.ExecRule, len(list))
	for i, n := range list {
		out[i] = bpf.ExecRule{Name: n, ID: uint32(i + 1)}
	}
	return out
}

func equalDest(x, y bpf.Destination) bool {
	return x.Prefix == y.Prefix && x.ID == y.ID && slices.Equal(x.Ports, y.Ports)
}

func (a *Agent) hostsLocked() []string {
	var out []string
	for _, set := range a.plan.Sets {
		for _, e := range set {
			if e.Host == "" || e.Host == "*" || e.Host[0] == '*' {
				continue
			}
			if _, err := netip.ParseAddr(e.Host); err == nil {
				continue
			}
			if !slices.Contains(out, e.Host) {
				out = append(out, e.Host)
			}
		}
	}
	return out
}

// destinationsLocked turns every set into prefixes and intersects them.
func (a *Agent) destinationsLocked() ([]bpf.Destination, []Rule) {
	var rules []Rule
	var cur []bpf.Destination
	for i, set := range a.plan.Sets {
		var ds []bpf.Destination
		for _, e := range set {
			id := uint32(len(rules) + 1)
			rules = append(rules, Rule{Source: e.Source, Host: e.Host})
			for _, p := range a.prefixes(e) {
				ds = append(ds, bpf.Destination{Prefix: p, Ports: slices.Clone(e.Ports), ID: id})
			}
		}
		if i == 0 {
			cur = ds
		} else {
			cur = intersect(cur, ds)
		}
	}
	return cur, rules
}

func (a *Agent) prefixes(e Entry) []netip.Prefix {
	switch {
	case e.Prefix.IsValid():
		return []netip.Prefix{e.Prefix}
	case e.Host == "*":
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	case e.Host == "" || e.Host[0] == '*':
		return nil
	}
	if ip, err := netip.ParseAddr(e.Host); err == nil {
		return []netip.Prefix{netip.PrefixFrom(ip, ip.BitLen())}
	}
	var out []netip.Prefix
	for _, ip := range a.resolved[e.Host].Addrs {
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out
}

// intersect keeps what both lists admit: overlapping prefixes become the
// narrower one with the common ports, reported as the entry of ys (the
// more specific document's).
func intersect(xs, ys []bpf.Destination) []bpf.Destination {
	var out []bpf.Destination
	for _, x := range xs {
		for _, y := range ys {
			if !x.Prefix.Overlaps(y.Prefix) {
				continue
			}
			p := x.Prefix
			if y.Prefix.Bits() > p.Bits() {
				p = y.Prefix
			}
			ports, ok := intersectPorts(x.Ports, y.Ports)
			if !ok {
				continue
			}
			out = append(out, bpf.Destination{Prefix: p, Ports: ports, ID: y.ID})
		}
	}
	return out
}

// intersectPorts: an empty list is any port; ok is false when nothing is
// left.
func intersectPorts(a, b []uint16) ([]uint16, bool) {
	switch {
	case len(a) == 0:
		return slices.Clone(b), true
	case len(b) == 0:
		return slices.Clone(a), true
	}
	var out []uint16
	for _, p := range a {
		if slices.Contains(b, p) {
			out = append(out, p)
		}
	}
	return out, len(out) > 0
}

// Resolved returns what every host resolved to, sorted by host.
func (a *Agent) Resolved() []Resolution {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Resolution, 0, len(a.resolved))
	for _, r := range a.resolved {
		out = append(out, r)
	}
	slices.SortFunc(out, func(x, y Resolution) int {
		if x.Host < y.Host {
			return -1
		}
		if x.Host > y.Host {
			return 1
		}
		return 0
	})
	return out
}

// RuleFor maps an Event.RuleID of this agent's network events to its
// policy entry.
func (a *Agent) RuleFor(id uint32) (Rule, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id == 0 || int(id) > len(a.rules) {
		return Rule{}, false
	}
	return a.rules[id-1], true
}

// NextRefresh is when the earliest resolution expires (zero when no host
// needs resolving).
func (a *Agent) NextRefresh() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	var next time.Time
	for _, r := range a.resolved {
		if next.IsZero() || r.Expires.Before(next) {
			next = r.Expires
		}
	}
	return next
}

// Run refreshes on TTL expiry until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	for {
		wait := time.Minute
		if next := a.NextRefresh(); !next.IsZero() {
			wait = max(next.Sub(a.cfg.Now()), 100*time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := a.Refresh(ctx); err != nil && !errors.Is(err, context.Canceled) {
			a.cfg.Logger.Error("ebpf: refresh egress rules", "cgroup", a.path, "err", err)
		}
	}
}
