package egress_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
	"github.com/agent-assembly/agent-assembly/policy"
)

func snapshot(t *testing.T, docs ...string) *policy.Snapshot {
	t.Helper()
	var ds []*policy.Document
	for i, y := range docs {
		d, err := policy.Parse(fmt.Sprintf("doc%d.yaml", i), []byte(y))
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		ds = append(ds, d)
	}
	s, err := policy.Compile(ds, "v1")
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	return s
}

const teamDoc = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: team}
spec:
  scope: {level: team, org: acme, team: eng}
  network:
    enforcement: %s
    allowlist:
      - host: api.example.com
        ports: [443]
      - cidr: 10.0.0.0/8
      - host: "*.github.com"
      - host: 192.0.2.7
  process:
    deny: [curl, "wget*"]
    allow: [sh, git, python3]
`

const orgDoc = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: org}
spec:
  scope: {level: org, org: acme}
  default: allow
  network:
    allowlist:
      - cidr: 10.1.0.0/16
        ports: [443, 8443]
      - host: api.example.com
`

var agentID = action.AgentID{Org: "acme", Team: "eng", Agent: "a1"}

// fakeGov records what Govern was asked; the kernel side is tested with
// the real governor in the bpf package and in TestKernelApply.
type fakeGov struct {
	mu   sync.Mutex
	cfgs []bpf.AgentConfig
}

func (f *fakeGov) Govern(_ string, cfg bpf.AgentConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfgs = append(f.cfgs, cfg)
	return nil
}

func (f *fakeGov) last() bpf.AgentConfig { return f.cfgs[len(f.cfgs)-1] }

// fakeDNS answers from a table that tests change.
type fakeDNS struct {
	mu    sync.Mutex
	table map[string][]netip.Addr
	ttl   time.Duration
	calls int
}

func (d *fakeDNS) Resolve(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	a, ok := d.table[host]
	if !ok {
		return nil, 0, errors.New("no such host")
	}
	return a, d.ttl, nil
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

func destStrings(ds []bpf.Destination) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	slices.Sort(out)
	return out
}

func TestCompileAndIntersect(t *testing.T) {
	snap := snapshot(t, fmt.Sprintf(teamDoc, "redirect"), orgDoc)
	plan, err := egress.Compile(snap, agentID, egress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The org document's network section defaults to deny, and any deny wins.
	if plan.Network != bpf.NetworkDeny {
		t.Errorf("network = %v, want deny", plan.Network)
	}
	if p, _ := egress.Compile(snapshot(t, fmt.Sprintf(teamDoc, "redirect")), agentID, egress.Options{}); p.Network != bpf.NetworkRedirect {
		t.Errorf("team document alone: network = %v, want redirect", p.Network)
	}
	if len(plan.Sets) != 2 {
		t.Fatalf("sets = %d, want one per document", len(plan.Sets))
	}
	if !slices.Equal(plan.ExecDeny, []string{"curl"}) || !slices.Equal(plan.ExecAllow, []string{"sh", "git", "python3"}) {
		t.Errorf("exec deny %q allow %q", plan.ExecDeny, plan.ExecAllow)
	}
	un := strings.Join(plan.Unenforced, "\n")
	for _, want := range []string{`"wget*": a glob`, `"*.github.com": wildcard hosts`} {
		if !strings.Contains(un, want) {
			t.Errorf("unenforced lacks %q:\n%s", want, un)
		}
	}

	gov := &fakeGov{}
	dns := &fakeDNS{table: map[string][]netip.Addr{"api.example.com": addrs("203.0.113.5", "2001:db8::5")}, ttl: time.Minute}
	now := time.Unix(1000, 0)
	a := egress.NewAgent(gov, "/cg", egress.Config{Base: bpf.AgentConfig{ID: 3}, Resolver: dns, Now: func() time.Time { return now }})
	if err := a.Apply(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	cfg := gov.last()
	// org ∩ team: api.example.com on 443 only (team narrows the org's any
	// port), 10.1.0.0/16 on 443 and 8443 (inside the team's 10/8).
	want := []string{"10.1.0.0/16 ports 443,8443", "2001:db8::5/128 ports 443", "203.0.113.5/32 ports 443"}
	if got := destStrings(cfg.Egress); !slices.Equal(got, want) {
		t.Errorf("egress = %q, want %q", got, want)
	}
	if cfg.ID != 3 || cfg.Network != bpf.NetworkDeny || len(cfg.ExecAllow) != 3 {
		t.Errorf("config = %+v", cfg)
	}
	r, ok := a.RuleFor(cfg.Egress[0].ID)
	if !ok || !strings.HasPrefix(r.Source, "team/network.allowlist[") {
		t.Errorf("RuleFor(%d) = %+v", cfg.Egress[0].ID, r)
	}
	res := a.Resolved()
	if len(res) != 1 || res[0].Host != "api.example.com" || len(res[0].Addrs) != 2 || !res[0].Expires.Equal(now.Add(time.Minute)) {
		t.Errorf("resolved = %+v", res)
	}

	// Before the TTL runs out nothing is asked again.
	calls := dns.calls
	now = now.Add(30 * time.Second)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if dns.calls != calls || len(gov.cfgs) != 1 {
		t.Errorf("refresh before expiry resolved or re-applied")
	}
	// After it, a changed address is applied.
	dns.table["api.example.com"] = addrs("203.0.113.9")
	now = now.Add(time.Minute)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := destStrings(gov.last().Egress); !slices.Contains(got, "203.0.113.9/32 ports 443") || slices.Contains(got, "203.0.113.5/32 ports 443") {
		t.Errorf("after refresh egress = %q", got)
	}
	// A host that stops resolving contributes nothing (fail closed).
	delete(dns.table, "api.example.com")
	now = now.Add(2 * time.Minute)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := destStrings(gov.last().Egress); !slices.Equal(got, []string{"10.1.0.0/16 ports 443,8443"}) {
		t.Errorf("after a failed resolution egress = %q", got)
	}
	if res := a.Resolved(); res[0].Err == nil {
		t.Errorf("resolution error not recorded")
	}
}

func TestCompileDefaults(t *testing.T) {
	const noNet = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: n}
spec:
  scope: {level: team, org: acme, team: eng}
  default: %s
`
	for _, c := range []struct {
		def  string
		want []string
	}{{"deny", nil}, {"allow", []string{"0.0.0.0/0", "::/0"}}} {
		plan, err := egress.Compile(snapshot(t, fmt.Sprintf(noNet, c.def)), agentID, egress.Options{})
		if err != nil {
			t.Fatal(err)
		}
		gov := &fakeGov{}
		a := egress.NewAgent(gov, "/cg", egress.Config{Resolver: &fakeDNS{}})
		if err := a.Apply(context.Background(), plan); err != nil {
			t.Fatal(err)
		}
		if got := destStrings(gov.last().Egress); !slices.Equal(got, c.want) {
			t.Errorf("default %s: egress = %q, want %q", c.def, got, c.want)
		}
	}
}

func TestCompileRejectsOverCapacity(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: big}\nspec:\n  scope: {level: team, org: acme, team: eng}\n  network:\n    allowlist:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "      - cidr: 10.0.%d.0/24\n", i)
	}
	_, err := egress.Compile(snapshot(t, b.String()), agentID, egress.Options{MaxDestinations: 16})
	if !errors.Is(err, bpf.ErrCapacity) || !strings.Contains(err.Error(), "network allowlist entries: 20, over the kernel map capacity of 16") {
		t.Fatalf("Compile = %v, want a capacity error", err)
	}
}
