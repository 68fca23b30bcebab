package verdicts_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
	"github.com/agent-assembly/agent-assembly/runtime/verdicts"
)

// TestEvent: each kind of verdict becomes the audit event the gateway
// expects: the layer, decision, rule, action and, for network calls, the
// resolved host names.
func TestEvent(t *testing.T) {
	agent := &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "a1"}
	at := time.Date(2026, 11, 26, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		ev       bpf.Event
		hosts    []string
		decision v1.Decision
		rule     string
		host     string
		proto    string
		command  string
		reason   string
		hostsOut []string
	}{
		{"tcp4 deny", bpf.Event{Time: at, Program: bpf.ProgConnect4, Verdict: bpf.VerdictDeny, Reason: bpf.ReasonNoRule, PID: 7, UID: 1000,
			Destination: netip.MustParseAddrPort("192.0.2.1:443")}, []string{"api.example.com"},
			v1.Decision_DENY, "kernel/connect4", "192.0.2.1", "tcp", "", "deny: no allowlist entry covers the address (pid 7, uid 1000)", []string{"api.example.com"}},
		{"udp6 observe", bpf.Event{Time: at, Program: bpf.ProgSendmsg6, Verdict: bpf.VerdictObserveDeny, Reason: bpf.ReasonNoRule, PID: 8,
			Destination: netip.MustParseAddrPort("[2001:db8::1]:53")}, nil,
			v1.Decision_ALLOW, "kernel/sendmsg6", "2001:db8::1", "udp", "", "(pid 8, uid 0)", nil},
		{"redirect", bpf.Event{Time: at, Program: bpf.ProgConnect4, Verdict: bpf.VerdictRedirect, Reason: bpf.ReasonNoRule, PID: 9, RedirectPort: 15001,
			Destination: netip.MustParseAddrPort("192.0.2.2:80")}, nil,
			v1.Decision_ALLOW, "kernel/connect4", "192.0.2.2", "tcp", "", "sent to the Envoy egress listener on port 15001 (pid 9", nil},
		{"exec kill ignores hosts", bpf.Event{Time: at, Program: bpf.ProgExec, Verdict: bpf.VerdictKill, PID: 10, Comm: "curl", Filename: "/usr/bin/curl", Args: []string{"curl", "-s"}},
			[]string{"x.example.com"}, v1.Decision_DENY, "kernel/exec", "", "", "/usr/bin/curl", "(pid 10, uid 0, comm curl)", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := verdicts.Event(agent, &tc.ev, tc.hosts)
			if got.GetLayer() != v1.Layer_LAYER_KERNEL || got.GetDecision() != tc.decision || got.GetRuleId() != tc.rule || !got.GetTime().AsTime().Equal(at) {
				t.Fatalf("event %v", got)
			}
			if !contains(got.GetReason(), tc.reason) {
				t.Errorf("reason %q lacks %q", got.GetReason(), tc.reason)
			}
			if !slices.Equal(got.GetResolvedHosts(), tc.hostsOut) {
				t.Errorf("resolved hosts %v, want %v", got.GetResolvedHosts(), tc.hostsOut)
			}
			if tc.command != "" {
				if got.GetAction().GetProcessExec().GetCommand() != tc.command || got.GetAction().GetActionType() != v1.ActionType_PROCESS_EXEC {
					t.Errorf("exec action %v", got.GetAction())
				}
				return
			}
			nc := got.GetAction().GetNetworkCall()
			if nc.GetHost() != tc.host || nc.GetPort() != uint32(tc.ev.Destination.Port()) || nc.GetProtocol() != tc.proto || got.GetAction().GetActionType() != v1.ActionType_NETWORK_CALL {
				t.Errorf("network action %v", nc)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestHostIndex: an address maps to every host that resolved to it (a
// v4-mapped address as its IPv4 form), and names the gateway would refuse
// are left out.
func TestHostIndex(t *testing.T) {
	res := []egress.Resolution{
		{Host: "api.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}},
		{Host: "cdn.example.com", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{Host: "bad host", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		{Host: "down.example.com", Err: errTest},
	}
	idx := verdicts.HostIndex(func() []egress.Resolution { return res })
	for _, tc := range []struct {
		addr string
		want []string
	}{
		{"192.0.2.1", []string{"api.example.com", "cdn.example.com"}},
		{"2001:db8::1", []string{"api.example.com"}},
		{"192.0.2.9", nil},
	} {
		if got := idx(netip.MustParseAddr(tc.addr)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.addr, got, tc.want)
		}
	}
}

var errTest = errors.New("no such host")

type fakeStats struct {
	st  bpf.Stats
	err error
}

func (f *fakeStats) Stats() (bpf.Stats, error) { return f.st, f.err }

// TestDrops: the count follows the kernel's; an unreadable counter keeps
// the last count instead of reporting zero.
func TestDrops(t *testing.T) {
	f := &fakeStats{st: bpf.Stats{Drops: 5}}
	drops := verdicts.Drops(f, nil)
	if got := drops(); got != 5 {
		t.Fatalf("drops = %d, want 5", got)
	}
	f.err = errors.New("map gone")
	if got := drops(); got != 5 {
		t.Fatalf("drops while unreadable = %d, want the last count 5", got)
	}
	f.err, f.st.Drops = nil, 9
	if got := drops(); got != 9 {
		t.Fatalf("drops = %d, want 9", got)
	}
}
