package bpf_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
	"github.com/agent-assembly/agent-assembly/policy"
)

type tableDNS struct {
	mu    sync.Mutex
	table map[string]string
}

func (d *tableDNS) set(host, addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.table[host] = addr
}

func (d *tableDNS) Resolve(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.table[host]
	if !ok {
		return nil, 0, fmt.Errorf("no such host %s", host)
	}
	return []netip.Addr{netip.MustParseAddr(a)}, time.Minute, nil
}

func compilePolicy(t *testing.T, yaml string) *policy.Snapshot {
	t.Helper()
	d, err := policy.Parse("agent.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	s, err := policy.Compile([]*policy.Document{d}, "v")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPolicyToKernel: a compiled policy's allowlist host, resolved through
// the runtime's resolver, becomes the kernel rule; when DNS moves the
// host after its TTL, the refresh moves the rule while the agent runs; a
// new policy version without the host denies it; exec deny comes from
// process.deny.
func TestPolicyToKernel(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	ev := collect(t, g)
	target := listen(t, "tcp4", "127.0.0.1:0", "svc")
	const doc = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: agent}
spec:
  scope: {level: agent, agent: a1}
  network:
    allowlist:
      - host: %s
        ports: [%d]
  process:
    deny: [echo]
`
	id := action.AgentID{Org: "acme", Team: "eng", Agent: "a1"}
	plan, err := egress.Compile(compilePolicy(t, fmt.Sprintf(doc, "svc.internal", target.Port)), id, egress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dns := &tableDNS{table: map[string]string{"svc.internal": "127.0.0.1"}}
	now := time.Now()
	log, _ := newTestLogger(t)
	cg := cgrouptest.New(t, "")
	cgID, _ := bpf.CgroupID(cg)
	a := egress.NewAgent(g, cg, egress.Config{Base: bpf.AgentConfig{ID: 21}, Resolver: dns, Logger: log, Now: func() time.Time { return now }})
	if err := a.Apply(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	agent := newAgent(t, cg)
	req := "dial tcp4 " + target.String()
	if got := agent.do(req); got != "ok:svc" {
		t.Fatalf("resolved host: %q, want ok:svc", got)
	}
	e := ev.wait(t, "allow by the host entry", func(e bpf.Event) bool {
		return e.CgroupID == cgID && e.Program == bpf.ProgConnect4 && e.Verdict == bpf.VerdictAllow
	})
	if r, ok := a.RuleFor(e.RuleID); !ok || r.Host != "svc.internal" || r.Source != "agent/network.allowlist[0]" {
		t.Errorf("RuleFor(%d) = %+v, %v", e.RuleID, r, ok)
	}
	if res := a.Resolved(); len(res) != 1 || res[0].Addrs[0].String() != "127.0.0.1" {
		t.Errorf("recorded resolutions = %+v", res)
	}

	dns.set("svc.internal", "127.0.0.2")
	now = now.Add(2 * time.Minute)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := agent.do(req); got != "EPERM" {
		t.Fatalf("after DNS moved the host: %q, want EPERM", got)
	}

	// A new policy version: the agent may reach the listener's address
	// directly; the host entry is gone.
	plan2, err := egress.Compile(compilePolicy(t, fmt.Sprintf(doc, "127.0.0.1", target.Port)), id, egress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(context.Background(), plan2); err != nil {
		t.Fatal(err)
	}
	if got := agent.do(req); got != "ok:svc" {
		t.Fatalf("after the policy change: %q, want ok:svc", got)
	}
	if res := a.Resolved(); len(res) != 0 {
		t.Errorf("resolutions of a host no longer in the policy are kept: %+v", res)
	}

	if g.Features().Status(bpf.CapExec) == bpf.Enforced {
		err := cgrouptest.Command(t, cg, "/bin/echo", "x").Run()
		if err == nil {
			t.Errorf("process.deny [echo]: echo ran")
		}
	}
}
