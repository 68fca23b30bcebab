package verdicts_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/alerts"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
	"github.com/agent-assembly/agent-assembly/runtime/verdicts"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

// These privileged tests follow every kernel verdict end to end: the
// program's event → ring buffer → Pump → the runtime's durable buffer →
// AuditService.ReportEvents on a real gateway → its audit log, where each
// must be found with the kernel layer, the right verdict, action type,
// destination or file, and pid. They skip when not root or when the kernel
// lacks the program types.

func network(port int) bpf.Destination {
	return bpf.Destination{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Ports: []uint16{uint16(port)}, ID: 1}
}

func netWant(rule string, d v1.Decision, host string, port int, proto string, pid int) want {
	return want{rule: rule, decision: d, kind: v1.ActionType_NETWORK_CALL, host: host, port: port, proto: proto, pid: pid}
}

// TestNetworkVerdictsAudited: denied TCP v4, v6 and v4-mapped v6 connects
// and UDP sends (EPERM in the agent), an allowed connect (which works and
// is audited as allowed), a forked child's and a nested cgroup's denied
// connects: each is in the gateway's audit log. A process outside the
// cgroup is unaffected and leaves no record.
func TestNetworkVerdictsAudited(t *testing.T) {
	r := newRig(t, nil)
	allowed := listen(t, "tcp4", "127.0.0.1:0", "hello")
	other := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{network(allowed.Port)}}); err != nil {
		t.Fatalf("govern: %v", err)
	}
	r.startPump()
	v6 := true
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		v6 = false
		t.Logf("no IPv6 here (%v): the v6 cases are skipped", err)
	} else {
		l.Close()
	}

	type tc struct {
		name    string
		cg      string
		args    []string
		outcome string
		want    func(pid int) want
	}
	cases := []tc{
		{"tcp4 allowed", cg, []string{"dial", "tcp4", allowed.String()}, "ok:hello",
			func(pid int) want {
				return netWant("kernel/connect4", v1.Decision_ALLOW, "127.0.0.1", allowed.Port, "tcp", pid)
			}},
		{"tcp4 denied", cg, []string{"dial", "tcp4", other.String()}, "EPERM",
			func(pid int) want {
				return netWant("kernel/connect4", v1.Decision_DENY, "127.0.0.1", other.Port, "tcp", pid)
			}},
		{"v4-mapped v6 denied", cg, []string{"dial", "raw6", "[::ffff:192.0.2.2]:80"}, "EPERM",
			func(pid int) want {
				return netWant("kernel/connect6", v1.Decision_DENY, "::ffff:192.0.2.2", 80, "tcp", pid)
			}},
		{"udp4 denied", cg, []string{"send", "udp4", "192.0.2.1:53"}, "EPERM",
			func(pid int) want { return netWant("kernel/sendmsg4", v1.Decision_DENY, "192.0.2.1", 53, "udp", pid) }},
		{"forked child denied", cg, []string{"fork", "dial", "tcp4", "192.0.2.3:80"}, "EPERM",
			func(pid int) want { return netWant("kernel/connect4", v1.Decision_DENY, "192.0.2.3", 80, "tcp", pid) }},
	}
	if v6 {
		cases = append(cases,
			tc{"tcp6 denied", cg, []string{"dial", "tcp6", "[2001:db8::1]:80"}, "EPERM",
				func(pid int) want { return netWant("kernel/connect6", v1.Decision_DENY, "2001:db8::1", 80, "tcp", pid) }},
			tc{"udp6 denied", cg, []string{"send", "udp6", "[2001:db8::1]:53"}, "EPERM",
				func(pid int) want { return netWant("kernel/sendmsg6", v1.Decision_DENY, "2001:db8::1", 53, "udp", pid) }},
		)
	}
	nested := cgrouptest.New(t, cg)
	cases = append(cases, tc{"nested cgroup denied", nested, []string{"dial", "tcp4", "192.0.2.4:80"}, "EPERM",
		func(pid int) want { return netWant("kernel/connect4", v1.Decision_DENY, "192.0.2.4", 80, "tcp", pid) }})

	// Outside the cgroup first: the same denied destination works and the
	// kernel reports nothing. Verdicts reach the log in order, so once the
	// later inside verdicts are found, a record of this pid would be too.
	outsidePID, got := act(t, "", "dial", "tcp4", other.String())
	if got != "ok:hello" {
		t.Fatalf("outside the cgroup: %q, want ok:hello", got)
	}
	for _, c := range cases {
		pid, got := act(t, c.cg, c.args...)
		if got != c.outcome {
			t.Errorf("%s: %v = %q, want %q", c.name, c.args, got, c.outcome)
			continue
		}
		rec := r.expect(c.want(pid))
		t.Logf("%s: %s %q", c.name, rec.GetPayloadJson(), rec.GetReason())
	}
	if recs := r.byPID(outsidePID); len(recs) != 0 {
		t.Errorf("a process outside the cgroup left kernel records: %v", recs)
	}
}

// TestExecVerdictsAudited: an allowed exec runs and is audited as allowed;
// a denied one is killed before it runs and audited as denied.
func TestExecVerdictsAudited(t *testing.T) {
	r := newRig(t, nil)
	r.requireExec()
	dir := t.TempDir()
	denied := filepath.Join(dir, "aa-denied")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skipf("needs /bin/true to copy: %v", err)
	}
	if err := os.WriteFile(denied, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cg := cgrouptest.New(t, "")
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1, Exec: bpf.ExecEnforce, ExecDeny: []bpf.ExecRule{{Name: "aa-denied", ID: 1}}}); err != nil {
		t.Fatalf("govern: %v", err)
	}
	r.startPump()

	pid, got := act(t, cg, "exec", "/bin/true")
	if got != "exited 0" {
		t.Fatalf("allowed exec: %q, want exited 0", got)
	}
	r.expect(want{rule: "kernel/exec", decision: v1.Decision_ALLOW, kind: v1.ActionType_PROCESS_EXEC, command: "/bin/true", pid: pid})

	pid, got = act(t, cg, "exec", denied)
	if got != "killed" {
		t.Fatalf("denied exec: %q, want killed", got)
	}
	rec := r.expect(want{rule: "kernel/exec", decision: v1.Decision_DENY, kind: v1.ActionType_PROCESS_EXEC, command: denied, pid: pid, reason: "kill"})
	t.Logf("denied exec: %s %q", rec.GetPayloadJson(), rec.GetReason())
}

// TestPolicyChangeAudited: while the agent process runs, its rules change
// (the maps are swapped, nothing re-attached): the same destination goes
// from allowed to denied, and the log shows both verdicts for its pid.
func TestPolicyChangeAudited(t *testing.T) {
	r := newRig(t, nil)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{network(target.Port)}}); err != nil {
		t.Fatalf("govern: %v", err)
	}
	r.startPump()
	agent := startAgent(t, cg)
	pid, got := agent.do("dial tcp4 " + target.String())
	if got != "ok:hello" {
		t.Fatalf("before the change: %q, want ok:hello", got)
	}
	r.expect(netWant("kernel/connect4", v1.Decision_ALLOW, "127.0.0.1", target.Port, "tcp", pid))
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{network(target.Port + 1)}}); err != nil {
		t.Fatalf("change rules: %v", err)
	}
	pid2, got := agent.do("dial tcp4 " + target.String())
	if got != "EPERM" || pid2 != pid {
		t.Fatalf("after the change: pid %d %q, want pid %d EPERM", pid2, got, pid)
	}
	r.expect(netWant("kernel/connect4", v1.Decision_DENY, "127.0.0.1", target.Port, "tcp", pid))
}

// TestRestartAudited: the runtime (governor, pump and runtime process)
// goes away while its agent runs. The pinned programs keep denying; the
// verdict made meanwhile waits in the pinned ring buffer, and the next
// runtime, on the same pins and event buffer, delivers it and the ones
// after it to the audit log.
func TestRestartAudited(t *testing.T) {
	r := newRig(t, nil)
	cg := cgrouptest.New(t, "")
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1, Egress: []bpf.Destination{network(1)}}); err != nil {
		t.Fatalf("govern: %v", err)
	}
	r.startPump()
	agent := startAgent(t, cg)
	pid, got := agent.do("dial tcp4 192.0.2.10:80")
	if got != "EPERM" {
		t.Fatalf("before the restart: %q, want EPERM", got)
	}
	r.expect(netWant("kernel/connect4", v1.Decision_DENY, "192.0.2.10", 80, "tcp", pid))

	// The runtime exits: pump, governor handles and runtime all gone.
	r.pump.Stop()
	r.pump = nil
	if err := r.gov.Close(); err != nil {
		t.Fatalf("close governor: %v", err)
	}
	r.gov = nil
	r.stop()

	if _, got := agent.do("dial tcp4 192.0.2.11:80"); got != "EPERM" {
		t.Fatalf("with no runtime: %q, want EPERM (pinned enforcement)", got)
	}

	r.startRuntime()
	r.openGovernor()
	if ids := r.gov.Governed(); len(ids) != 1 {
		t.Fatalf("the new governor took over %v, want the agent's cgroup", ids)
	}
	r.startPump()
	r.expect(netWant("kernel/connect4", v1.Decision_DENY, "192.0.2.11", 80, "tcp", pid))
	if _, got := agent.do("dial tcp4 192.0.2.12:80"); got != "EPERM" {
		t.Fatalf("after the restart: %q, want EPERM", got)
	}
	r.expect(netWant("kernel/connect4", v1.Decision_DENY, "192.0.2.12", 80, "tcp", pid))
}

// TestRedirectAudited: in redirect mode a connection no rule admits lands
// on the local listener standing in for Envoy, and the log shows the
// kernel's redirect (allowed, to be judged by L2) for that destination.
func TestRedirectAudited(t *testing.T) {
	r := newRig(t, nil)
	envoy := listen(t, "tcp4", "127.0.0.1:0", "envoy")
	cg := cgrouptest.New(t, "")
	cfg := bpf.AgentConfig{ID: 1, Network: bpf.NetworkRedirect,
		Redirect: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(envoy.Port))}
	if err := r.gov.Govern(cg, cfg); err != nil {
		t.Fatalf("govern: %v", err)
	}
	r.startPump()
	pid, got := act(t, cg, "dial", "tcp4", "192.0.2.30:443")
	if got != "ok:envoy" {
		t.Fatalf("redirected dial: %q, want ok:envoy (the stand-in Envoy's banner)", got)
	}
	w := netWant("kernel/connect4", v1.Decision_ALLOW, "192.0.2.30", 443, "tcp", pid)
	w.reason = "redirect"
	rec := r.expect(w)
	t.Logf("redirect: %s %q", rec.GetPayloadJson(), rec.GetReason())
}

// fixedResolver resolves every host to the same addresses.
type fixedResolver []netip.Addr

func (f fixedResolver) Resolve(context.Context, string) ([]netip.Addr, time.Duration, error) {
	return f, time.Minute, nil
}

// TestResolvedHostCorrelates: the SDK checked a connection by host name;
// the kernel saw the address the runtime's resolver gave for that name.
// The kernel's record carries the name and is linked to the SDK decision
// (its reason names it, it joins the SDK's trace).
func TestResolvedHostCorrelates(t *testing.T) {
	r := newRig(t, nil)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	cg := cgrouptest.New(t, "")
	ea := egress.NewAgent(r.gov, cg, egress.Config{Base: bpf.AgentConfig{ID: 1}, Logger: r.log,
		Resolver: fixedResolver{netip.MustParseAddr("127.0.0.1")}})
	plan := egress.Plan{Network: bpf.NetworkDeny, Sets: [][]egress.Entry{{{Source: "test/network.allowlist[0]", Host: "api.example.test", Ports: []uint16{uint16(target.Port)}}}}}
	if err := ea.Apply(context.Background(), plan); err != nil {
		t.Fatalf("apply plan: %v", err)
	}
	r.hosts = verdicts.HostIndex(ea.Resolved)
	r.startPump()

	// The agent's SDK checks the connection by name, through its runtime.
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Socket: r.sock, Agent: "acme/eng/a1"})
	if err != nil {
		t.Fatalf("dial the runtime: %v", err)
	}
	defer c.Close()
	sdk, err := c.Check(context.Background(), &v1.CheckActionRequest{TraceId: "trace-host-1",
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "api.example.test", Port: uint32(target.Port), Protocol: "https"}}})
	var se *sdkclient.Error
	if errors.As(err, &se) && se.Decision != nil {
		sdk, err = se.Decision, nil // the test policy denies it: a decision all the same
	}
	if err != nil {
		t.Fatalf("SDK check: %v", err)
	}
	if sdk.DecisionID == "" {
		t.Fatalf("SDK check has no gateway decision id: %+v", sdk)
	}
	pid, got := act(t, cg, "dial", "tcp4", target.String())
	if got != "ok:hello" {
		t.Fatalf("dial the resolved address: %q, want ok:hello", got)
	}
	w := netWant("kernel/connect4", v1.Decision_ALLOW, "127.0.0.1", target.Port, "tcp", pid)
	w.reason = "address resolved from api.example.test"
	rec := r.expect(w)
	if !strings.Contains(rec.GetReason(), "for host api.example.test") || !strings.Contains(rec.GetReason(), "decision "+sdk.DecisionID) || rec.GetTraceId() != "trace-host-1" {
		t.Errorf("kernel record not linked to the SDK decision %s: reason %q trace %q", sdk.DecisionID, rec.GetReason(), rec.GetTraceId())
	}
}

// TestKernelDropsAlerted: verdicts made while nobody reads the ring buffer
// overflow it; the kernel counts the loss, the runtime reports the count
// with its next ReportEvents, and the gateway raises an ebpf_drops alert
// naming the runtime.
func TestKernelDropsAlerted(t *testing.T) {
	r := newRig(t, nil)
	cg := cgrouptest.New(t, "")
	if err := r.gov.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
		t.Fatalf("govern: %v", err)
	}
	const n = 80000 // the 4 MiB ring buffer holds about 52,000 network verdicts
	if _, got := act(t, cg, "connects", strconv.Itoa(n), "192.0.2.1:80"); got != strconv.Itoa(n) {
		t.Fatalf("%d connects: %s denied, want all", n, got)
	}
	st, err := r.gov.Stats()
	if err != nil || st.Drops == 0 {
		t.Fatalf("no drops counted after %d verdicts with no reader: %+v %v", n, st, err)
	}
	r.rt.ReportKernelDrops(verdicts.Drops(r.gov, r.log))
	r.startPump()
	ac := v1.NewAlertServiceClient(r.cc)
	deadline := time.Now().Add(30 * time.Second) // hang guard
	for {
		resp, err := ac.ListAlerts(context.Background(), &v1.ListAlertsRequest{Kind: alerts.KindEBPFDrops})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAlerts()) > 0 {
			a := resp.GetAlerts()[0]
			if !strings.Contains(a.GetSummary(), fmt.Sprintf("lost %d kernel events", st.Drops)) || !strings.Contains(a.GetSummary(), "runtime/") {
				t.Fatalf("alert %q, want the runtime and its %d drops", a.GetSummary(), st.Drops)
			}
			t.Logf("alert: %s", a.GetSummary())
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ebpf_drops alert after %d drops", st.Drops)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
