package bpf_test

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"github.com/prometheus/client_golang/prometheus"
)

func hostPort(host string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port)).String()
}

// TestNetworkDeny: a process in the governed cgroup reaches only what its
// allowlist admits, over TCP v4, v6 and v4-mapped v6 and UDP; a process
// outside is unaffected; children (fork, nested cgroup) are governed too;
// every verdict is reported.
func TestNetworkDeny(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	ev := collect(t, g)

	allowed4 := listen(t, "tcp4", "127.0.0.1:0", "hello")
	other4 := listen(t, "tcp4", "127.0.0.1:0", "hello")
	allowed6 := listen(t, "tcp6", "[::1]:0", "hello")
	other6 := listen(t, "tcp6", "[::1]:0", "hello")
	udp4 := listenUDP(t, "udp4", "127.0.0.1:0")
	udp6 := listenUDP(t, "udp6", "[::1]:0")

	cg := cgrouptest.New(t, "")
	cfg := bpf.AgentConfig{
		ID: 7,
		Egress: []bpf.Destination{
			{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Ports: []uint16{uint16(allowed4.Port), uint16(udp4.Port)}, ID: 1},
			{Prefix: netip.MustParsePrefix("::1/128"), Ports: []uint16{uint16(allowed6.Port), uint16(udp6.Port)}, ID: 2},
		},
	}
	if err := g.Govern(cg, cfg); err != nil {
		t.Fatalf("Govern: %v", err)
	}
	cgID, err := bpf.CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		args    []string
		inside  string
		outside string // "" when the outside result is not checked
	}{
		{"tcp4 allowed", []string{"dial", "tcp4", allowed4.String()}, "ok:hello", "ok:hello"},
		{"tcp4 port not allowed", []string{"dial", "tcp4", other4.String()}, "EPERM", "ok:hello"},
		{"tcp4 address not allowed", []string{"dial", "tcp4", "192.0.2.1:80"}, "EPERM", ""},
		{"tcp6 allowed", []string{"dial", "tcp6", allowed6.String()}, "ok:hello", "ok:hello"},
		{"tcp6 port not allowed", []string{"dial", "tcp6", other6.String()}, "EPERM", "ok:hello"},
		{"tcp6 address not allowed", []string{"dial", "tcp6", "[2001:db8::1]:80"}, "EPERM", ""},
		{"v4-mapped allowed", []string{"dial", "raw6", hostPort("::ffff:127.0.0.1", allowed4.Port)}, "ok:hello", "ok:hello"},
		{"v4-mapped port not allowed", []string{"dial", "raw6", hostPort("::ffff:127.0.0.1", other4.Port)}, "EPERM", "ok:hello"},
		{"v4-mapped address not allowed", []string{"dial", "raw6", "[::ffff:192.0.2.1]:80"}, "EPERM", ""},
		{"udp4 allowed", []string{"send", "udp4", udp4.String()}, "ok", "ok"},
		{"udp4 not allowed", []string{"send", "udp4", "192.0.2.1:53"}, "EPERM", ""},
		{"udp6 allowed", []string{"send", "udp6", udp6.String()}, "ok", "ok"},
		{"udp6 not allowed", []string{"send", "udp6", "[2001:db8::1]:53"}, "EPERM", ""},
		{"udp v4-mapped not allowed", []string{"send", "raw6", "[::ffff:192.0.2.1]:53"}, "EPERM", ""},
		{"forked child, tcp4 not allowed", []string{"fork", "dial", "tcp4", other4.String()}, "EPERM", "ok:hello"},
		{"forked child, tcp4 allowed", []string{"fork", "dial", "tcp4", allowed4.String()}, "ok:hello", "ok:hello"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := run(t, cg, c.args...); got != c.inside {
				t.Errorf("inside the governed cgroup: %v = %q, want %q", c.args, got, c.inside)
			}
			if c.outside != "" {
				if got := run(t, "", c.args...); got != c.outside {
					t.Errorf("outside: %v = %q, want %q", c.args, got, c.outside)
				}
			}
		})
	}

	t.Run("nested cgroup", func(t *testing.T) {
		nested := cgrouptest.New(t, cg)
		if got := run(t, nested, "dial", "tcp4", other4.String()); got != "EPERM" {
			t.Errorf("nested: denied dial = %q, want EPERM", got)
		}
		if got := run(t, nested, "dial", "tcp4", allowed4.String()); got != "ok:hello" {
			t.Errorf("nested: allowed dial = %q, want ok:hello", got)
		}
		nestedID, _ := bpf.CgroupID(nested)
		e := ev.wait(t, "deny from the nested cgroup", func(e bpf.Event) bool {
			return e.CgroupID == nestedID && e.Verdict == bpf.VerdictDeny
		})
		if e.AgentID != 7 {
			t.Errorf("nested event agent = %d, want 7", e.AgentID)
		}
	})

	t.Run("events", func(t *testing.T) {
		want := []struct {
			prog    bpf.Program
			verdict bpf.Verdict
			dst     string
			reason  bpf.Reason
			rule    uint32
		}{
			{bpf.ProgConnect4, bpf.VerdictAllow, allowed4.String(), bpf.ReasonRule, 1},
			{bpf.ProgConnect4, bpf.VerdictDeny, other4.String(), bpf.ReasonPort, 1},
			{bpf.ProgConnect4, bpf.VerdictDeny, "192.0.2.1:80", bpf.ReasonNoRule, 0},
			{bpf.ProgConnect6, bpf.VerdictDeny, "[2001:db8::1]:80", bpf.ReasonNoRule, 0},
			{bpf.ProgConnect6, bpf.VerdictDeny, "[::ffff:192.0.2.1]:80", bpf.ReasonNoRule, 0},
			{bpf.ProgSendmsg4, bpf.VerdictDeny, "192.0.2.1:53", bpf.ReasonNoRule, 0},
			{bpf.ProgSendmsg6, bpf.VerdictDeny, "[2001:db8::1]:53", bpf.ReasonNoRule, 0},
		}
		for _, w := range want {
			e := ev.wait(t, fmt.Sprintf("%s %s %s", w.prog, w.verdict, w.dst), func(e bpf.Event) bool {
				return e.CgroupID == cgID && e.Program == w.prog && e.Verdict == w.verdict && e.Destination.String() == w.dst
			})
			if e.Reason != w.reason || e.RuleID != w.rule || e.AgentID != 7 || e.PID == 0 {
				t.Errorf("event %s %s: reason %q rule %d agent %d pid %d; want reason %q rule %d agent 7", w.prog, w.dst, e.Reason, e.RuleID, e.AgentID, e.PID, w.reason, w.rule)
			}
		}
		st, err := g.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Events == 0 || st.Drops != 0 {
			t.Errorf("stats = %+v, want events and no drops", st)
		}
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(bpf.NewCollector(g))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				got[mf.GetName()] = c.GetValue()
			} else {
				got[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
		if got["aa_bpf_events_total"] < float64(len(want)) || got["aa_bpf_ringbuf_drops_total"] != 0 || got["aa_bpf_governed_cgroups"] != 1 {
			t.Errorf("metrics = %v", got)
		}
	})
}

// TestNetworkRedirect: in redirect mode a TCP connection that no entry
// admits lands on the local listener standing in for Envoy; datagrams
// are denied; always-allowed destinations go straight through.
func TestNetworkRedirect(t *testing.T) {
	envoy := listen(t, "tcp4", "127.0.0.1:0", "envoy")
	direct := listen(t, "tcp4", "127.0.0.1:0", "direct")
	g, _ := openGovernor(t, bpf.Options{Always: []bpf.Destination{
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Ports: []uint16{uint16(direct.Port)}},
	}})
	requireNetwork(t, g)
	ev := collect(t, g)
	cg := cgrouptest.New(t, "")
	err := g.Govern(cg, bpf.AgentConfig{
		ID:       9,
		Network:  bpf.NetworkRedirect,
		Redirect: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(envoy.Port)),
	})
	if err != nil {
		t.Fatalf("Govern: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dial", "tcp4", "192.0.2.1:80"}, "ok:envoy"},
		{[]string{"dial", "raw6", "[::ffff:192.0.2.1]:443"}, "ok:envoy"},
		{[]string{"dial", "tcp6", "[2001:db8::1]:443"}, "EPERM"}, // no IPv6 listener configured
		{[]string{"dial", "tcp4", direct.String()}, "ok:direct"},
		{[]string{"send", "udp4", "192.0.2.1:53"}, "EPERM"},
	} {
		if got := run(t, cg, c.args...); got != c.want {
			t.Errorf("%v = %q, want %q", c.args, got, c.want)
		}
	}
	e := ev.wait(t, "redirect event", func(e bpf.Event) bool { return e.Verdict == bpf.VerdictRedirect })
	if e.Destination.String() != "192.0.2.1:80" || e.RedirectPort != uint16(envoy.Port) || e.AgentID != 9 {
		t.Errorf("redirect event = %+v, want original destination 192.0.2.1:80 and port %d", e, envoy.Port)
	}
	e = ev.wait(t, "always-allowed event", func(e bpf.Event) bool { return e.Reason == bpf.ReasonAlways })
	if e.Verdict != bpf.VerdictAllow || e.Destination.Port() != uint16(direct.Port) {
		t.Errorf("always event = %+v", e)
	}
	e = ev.wait(t, "udp deny in redirect mode", func(e bpf.Event) bool { return e.Program == bpf.ProgSendmsg4 })
	if e.Verdict != bpf.VerdictDeny || e.Reason != bpf.ReasonUDPRedirect {
		t.Errorf("udp event = %+v", e)
	}
}

// TestPolicyChange: while the agent process runs, a new configuration
// flips a destination from allowed to denied and back, without detaching.
func TestPolicyChange(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	allow := bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{{Prefix: netip.MustParsePrefix("127.0.0.0/8")}}}
	deny := bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}
	if err := g.Govern(cg, allow); err != nil {
		t.Fatal(err)
	}
	agent := newAgent(t, cg)
	req := "dial tcp4 " + target.String()
	if got := agent.do(req); got != "ok:hello" {
		t.Fatalf("before the change: %q, want ok:hello", got)
	}
	for i, step := range []struct {
		cfg  bpf.AgentConfig
		want string
	}{{deny, "EPERM"}, {allow, "ok:hello"}, {deny, "EPERM"}} {
		if err := g.Govern(cg, step.cfg); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		if got := agent.do(req); got != step.want {
			t.Fatalf("after change %d: %q, want %q", i, got, step.want)
		}
	}
	if n := len(g.Governed()); n != 1 {
		t.Errorf("governed cgroups = %d, want 1", n)
	}
	// Old slots are cleared after each swap.
	if n := g.RuleEntries(); n != 1 {
		t.Errorf("rule entries after three swaps = %d, want 1", n)
	}
}

// TestPrune: a governed cgroup removed without Release is released by
// Prune, and its rules leave the maps.
func TestPrune(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	keep := cgrouptest.New(t, "")
	gone := cgrouptest.New(t, "")
	for _, cg := range []string{keep, gone} {
		if err := g.Govern(cg, bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}); err != nil {
			t.Fatal(err)
		}
	}
	goneID, _ := bpf.CgroupID(gone)
	if n := g.RuleEntries(); n != 2 {
		t.Fatalf("rule entries = %d, want 2", n)
	}
	if err := os.Remove(gone); err != nil {
		t.Fatalf("remove cgroup: %v", err)
	}
	ids, err := g.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != goneID {
		t.Errorf("pruned %v, want [%d]", ids, goneID)
	}
	if n := len(g.Governed()); n != 1 {
		t.Errorf("governed after prune = %d, want 1", n)
	}
	if n := g.RuleEntries(); n != 1 {
		t.Errorf("rule entries after prune = %d, want 1", n)
	}
}

// TestRedirectIPv6: with Redirect6 set, IPv6 TCP connections land on the
// IPv6 address of the Envoy listener (one dual-stack port).
func TestRedirectIPv6(t *testing.T) {
	envoy := listen(t, "tcp", "[::]:0", "envoy6")
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	cg := cgrouptest.New(t, "")
	err := g.Govern(cg, bpf.AgentConfig{
		ID:        10,
		Network:   bpf.NetworkRedirect,
		Redirect:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(envoy.Port)),
		Redirect6: netip.MustParseAddr("::1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"dial", "tcp6", "[2001:db8::1]:443"},
		{"dial", "tcp4", "192.0.2.1:443"},
		{"dial", "raw6", "[::ffff:192.0.2.1]:443"},
	} {
		if got := run(t, cg, args...); got != "ok:envoy6" {
			t.Errorf("%v = %q, want ok:envoy6", args, got)
		}
	}
}

// TestObserveModes: in observe mode nothing is enforced and every would-be
// denial is reported as observe-deny.
func TestObserveModes(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	requireExec(t, g)
	ev := collect(t, g)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	cgID, _ := bpf.CgroupID(cg)
	err := g.Govern(cg, bpf.AgentConfig{ID: 2, Network: bpf.NetworkObserve, Exec: bpf.ExecObserve, ExecDeny: []bpf.ExecRule{{Name: "echo"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, cg, "dial", "tcp4", target.String()); got != "ok:hello" {
		t.Errorf("observe: dial = %q, want ok:hello", got)
	}
	out, err := cgrouptest.Command(t, cg, "/bin/echo", "ran").Output()
	if err != nil || string(out) != "ran\n" {
		t.Errorf("observe: echo = %q, %v", out, err)
	}
	e := ev.wait(t, "observed connect", func(e bpf.Event) bool { return e.CgroupID == cgID && e.Program == bpf.ProgConnect4 })
	if e.Verdict != bpf.VerdictObserveDeny || e.Reason != bpf.ReasonNoRule {
		t.Errorf("connect event = %v %v, want observe-deny", e.Verdict, e.Reason)
	}
	e = ev.wait(t, "observed exec", func(e bpf.Event) bool { return e.CgroupID == cgID && e.Filename == "/bin/echo" })
	if e.Verdict != bpf.VerdictObserveDeny || e.Reason != bpf.ReasonExecDeny {
		t.Errorf("exec event = %v %v, want observe-deny", e.Verdict, e.Reason)
	}
}
