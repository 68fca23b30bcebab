package bpf_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/bpf"
)

// TestEventLayout guards the hand-written decoder against the C structs.
func TestEventLayout(t *testing.T) {
	for _, c := range []struct {
		name     string
		gen, dec int
	}{
		{"event size", bpf.EventSize, bpf.DecoderEventSize},
		{"exec event size", bpf.ExecEventSize, bpf.DecoderExecSize},
		{"comm offset", bpf.OffComm, bpf.DecoderOffComm},
		{"filename offset", bpf.OffFilename, bpf.DecoderOffFilename},
		{"args offset", bpf.OffArgs, bpf.DecoderOffArgs},
		{"ppid offset", bpf.OffPpid, 64},
		{"addr offset", bpf.OffAddr, 44},
	} {
		if c.gen != c.dec {
			t.Errorf("%s: generated %d, decoder %d", c.name, c.gen, c.dec)
		}
	}
}

func TestDecodeEvent(t *testing.T) {
	raw := bpf.EncodeTestEvent(bpf.Event{
		CgroupID: 42, AgentID: 7, PID: 100, TID: 101, UID: 1000, RuleID: 3,
		Program: bpf.ProgConnect6, Verdict: bpf.VerdictDeny, Reason: bpf.ReasonPort,
		Destination: netip.MustParseAddrPort("[::ffff:192.0.2.1]:443"),
	})
	var ev bpf.Event
	if err := bpf.DecodeTestEvent(raw, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.CgroupID != 42 || ev.AgentID != 7 || ev.PID != 100 || ev.RuleID != 3 || ev.Verdict != bpf.VerdictDeny ||
		ev.Reason != bpf.ReasonPort || ev.Destination.String() != "[::ffff:192.0.2.1]:443" {
		t.Errorf("decoded %+v", ev)
	}
	if err := bpf.DecodeTestEvent(raw[:10], &ev); !errors.Is(err, bpf.ErrShortEvent) {
		t.Errorf("short record: %v", err)
	}
}

func TestCompileEgressPortInheritance(t *testing.T) {
	// 10.0.0.0/8 any port covers 10.1.2.3/32 port 443: the /32 must admit
	// any port too, or the longest match would narrow what the /8 allows.
	got, err := bpf.CompileEgressForTest([]bpf.Destination{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("10.1.2.3/32"), Ports: []uint16{443}},
		{Prefix: netip.MustParsePrefix("192.168.0.0/16"), Ports: []uint16{80}},
		{Prefix: netip.MustParsePrefix("192.168.1.0/24"), Ports: []uint16{443}},
		{Prefix: netip.MustParsePrefix("::ffff:172.16.0.1/128"), Ports: []uint16{22}},
		{Prefix: netip.MustParsePrefix("192.168.1.0/24"), Ports: []uint16{8443}},
	}, 16)
	if err != nil {
		t.Fatal(err)
	}
	want := "10.0.0.0/8 | 10.1.2.3/32 | 192.168.0.0/16 ports 80 | 192.168.1.0/24 ports 80,443,8443 | 172.16.0.1/32 ports 22"
	if strings.Join(got, " | ") != want {
		t.Errorf("entries:\n got %s\nwant %s", strings.Join(got, " | "), want)
	}
}

func TestCompileEgressRejects(t *testing.T) {
	many := make([]uint16, bpf.MaxPorts+1)
	for i := range many {
		many[i] = uint16(i + 1)
	}
	for _, c := range []struct {
		name string
		in   []bpf.Destination
		want string
	}{
		{"invalid prefix", []bpf.Destination{{}}, "egress[0]: invalid prefix"},
		{"port 0", []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: []uint16{0}}}, "port 0 is not a port"},
		{"too many ports", []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: many}}, "ports: 17, over the kernel map capacity of 16"},
		{"too many destinations", []bpf.Destination{{Prefix: netip.MustParsePrefix("10.0.0.1/32")}, {Prefix: netip.MustParsePrefix("10.0.0.2/32")}, {Prefix: netip.MustParsePrefix("10.0.0.3/32")}}, "destinations: 3, over the kernel map capacity of 2"},
	} {
		_, err := bpf.CompileEgressForTest(c.in, 2)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestExecRuleValidation(t *testing.T) {
	for name, want := range map[string]string{
		"":                       "empty executable name",
		"python3*":               "globs cannot be matched in the kernel",
		"bin/sh":                 "a path must be absolute",
		strings.Repeat("x", 128): "longer than 127",
	} {
		err := bpf.ValidateExecNameForTest(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", name, err, want)
		}
	}
	for _, ok := range []string{"curl", "/usr/bin/curl"} {
		if err := bpf.ValidateExecNameForTest(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	const in = `25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/bpf rw - bpf bpf rw,mode=700
37 25 0:32 / /mnt/with\040space rw - tmpfs tmpfs rw
`
	got, err := bpf.ParseMountinfoForTest(in)
	if err != nil {
		t.Fatal(err)
	}
	want := "/sys sysfs|/sys/fs/cgroup/unified cgroup2|/sys/fs/bpf bpf|/mnt/with space tmpfs"
	if got != want {
		t.Errorf("mounts = %q, want %q", got, want)
	}
}

func TestEventAction(t *testing.T) {
	id := action.AgentID{Org: "o", Team: "t", Agent: "a"}
	net := bpf.Event{Program: bpf.ProgConnect6, Verdict: bpf.VerdictDeny, SockType: 1, Destination: netip.MustParseAddrPort("[::ffff:192.0.2.1]:443")}
	a := net.Action(id)
	if a.Kind != action.KindNetworkCall || a.Network.Host != "192.0.2.1" || a.Network.Port != 443 || a.Network.Protocol != "tcp" || a.Agent != id {
		t.Errorf("network action = %+v", a)
	}
	if net.Decision() != action.Deny || net.Mode() != action.ModeEnforce {
		t.Errorf("deny: %v %v", net.Decision(), net.Mode())
	}
	ex := bpf.Event{Program: bpf.ProgExec, Verdict: bpf.VerdictObserveDeny, Filename: "/usr/bin/curl", Args: []string{"curl", "-s", "x"}}
	a = ex.Action(id)
	if a.Kind != action.KindProcessExec || a.Exec.Command != "/usr/bin/curl" || !slices.Equal(a.Exec.Args, []string{"-s", "x"}) {
		t.Errorf("exec action = %+v", a)
	}
	if ex.Decision() != action.Deny || ex.Mode() != action.ModeObserve {
		t.Errorf("observe-deny: %v %v", ex.Decision(), ex.Mode())
	}
	udp := bpf.Event{Program: bpf.ProgSendmsg4, Verdict: bpf.VerdictRedirect, SockType: 2, Destination: netip.MustParseAddrPort("10.0.0.1:53")}
	if a := udp.Action(id); a.Network.Protocol != "udp" || udp.Decision() != action.Allow {
		t.Errorf("udp action = %+v %v", a, udp.Decision())
	}
}

// TestAgentConfigValidate: the kernel-free check refuses what Govern would
// (too many destinations or exec rules, bad exec names, redirect without a
// target) and accepts a configuration that fits.
func TestAgentConfigValidate(t *testing.T) {
	dests := func(n int) []bpf.Destination {
		out := make([]bpf.Destination, n)
		for i := range out {
			out[i] = bpf.Destination{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32)}
		}
		return out
	}
	ok := bpf.AgentConfig{Egress: dests(bpf.DefaultMaxDestinations), ExecDeny: []bpf.ExecRule{{Name: "curl"}}}
	if err := ok.Validate(bpf.Limits{}); err != nil {
		t.Errorf("a configuration at the default limit: %v", err)
	}
	for _, c := range []struct {
		name   string
		cfg    bpf.AgentConfig
		limits bpf.Limits
		want   string
	}{
		{"destinations over the default", bpf.AgentConfig{Egress: dests(bpf.DefaultMaxDestinations + 1)}, bpf.Limits{},
			"egress: destinations: 1025, over the kernel map capacity of 1024"},
		{"destinations over a set limit", bpf.AgentConfig{Egress: dests(3)}, bpf.Limits{MaxDestinations: 2},
			"destinations: 3, over the kernel map capacity of 2"},
		{"exec rules", bpf.AgentConfig{ExecDeny: []bpf.ExecRule{{Name: "a"}, {Name: "b"}}}, bpf.Limits{MaxExecRules: 1},
			"exec rules: 2, over the kernel map capacity of 1"},
		{"relative exec path", bpf.AgentConfig{ExecDeny: []bpf.ExecRule{{Name: "bin/curl"}}}, bpf.Limits{}, "bin/curl"},
		{"redirect without target", bpf.AgentConfig{Network: bpf.NetworkRedirect}, bpf.Limits{}, "Redirect must be an IPv4 address"},
	} {
		err := c.cfg.Validate(c.limits)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
