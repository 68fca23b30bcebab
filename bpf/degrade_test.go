package bpf_test

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
)

// TestDegradeExecToReporting: on a kernel that refuses bpf_send_signal
// the exec tracer still loads, reports a denied exec, does not kill it,
// and says so loudly (WARN, "observed only").
func TestDegradeExecToReporting(t *testing.T) {
	var o bpf.Options
	bpf.AssumeMissing(&o, "send_signal")
	g, tl := openGovernor(t, o)
	f := g.Features()
	if st := f.Status(bpf.CapExec); st != bpf.ObservedOnly {
		t.Fatalf("exec status = %v, want observed only", st)
	}
	if !strings.Contains(tl.String(), `level=WARN msg="ebpf capability" capability="exec control (tp_btf/sched_process_exec)" status="observed only"`) {
		t.Errorf("no WARN capability line for exec in:\n%s", tl)
	}
	ev := collect(t, g)
	cg := cgrouptest.New(t, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1, ExecDeny: []bpf.ExecRule{{Name: "echo"}}}); err != nil {
		t.Fatal(err)
	}
	out, err := cgrouptest.Command(t, cg, "/bin/echo", "still-runs").Output()
	if err != nil || strings.TrimSpace(string(out)) != "still-runs" {
		t.Fatalf("echo under observe-only: %q, %v", out, err)
	}
	e := ev.wait(t, "observed exec", func(e bpf.Event) bool { return e.Filename == "/bin/echo" })
	if e.Verdict != bpf.VerdictObserveDeny || e.Verdict.Enforced() {
		t.Errorf("verdict = %v, want observe-deny", e.Verdict)
	}
}

// TestDegradeNetworkUnavailable: without cgroup sock_addr programs the
// governor still opens, reports network egress as unavailable at ERROR,
// and warns for every agent it governs without it.
func TestDegradeNetworkUnavailable(t *testing.T) {
	var o bpf.Options
	bpf.AssumeMissing(&o, "cgroup_sock_addr")
	g, tl := openGovernor(t, o)
	if st := g.Features().Status(bpf.CapNetwork); st != bpf.Unavailable {
		t.Fatalf("network status = %v, want unavailable", st)
	}
	if !strings.Contains(tl.String(), `level=ERROR msg="ebpf capability" capability="network egress`) {
		t.Errorf("no ERROR capability line for network in:\n%s", tl)
	}
	cg := cgrouptest.New(t, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tl.String(), "agent governed without kernel network enforcement") {
		t.Errorf("Govern did not warn about the missing network enforcement")
	}
	if got := run(t, cg, "dial", "tcp4", "192.0.2.1:80"); got == "EPERM" {
		t.Errorf("EPERM without network programs?")
	}
}

// TestCapacityRejectedBeforeLoading: a configuration with more
// destinations than the per-agent capacity is rejected with a clear error
// and nothing of it reaches the kernel.
func TestCapacityRejectedBeforeLoading(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{Limits: bpf.Limits{MaxDestinations: 8}})
	cg := cgrouptest.New(t, "")
	var dests []bpf.Destination
	for i := range 9 {
		dests = append(dests, bpf.Destination{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)})
	}
	err := g.Govern(cg, bpf.AgentConfig{ID: 1, Egress: dests})
	if !errors.Is(err, bpf.ErrCapacity) {
		t.Fatalf("Govern = %v, want ErrCapacity", err)
	}
	if !strings.Contains(err.Error(), "egress: destinations: 9, over the kernel map capacity of 8") {
		t.Errorf("error = %q", err)
	}
	if n := len(g.Governed()); n != 0 {
		t.Errorf("governed = %d after a rejected configuration, want 0", n)
	}
	// Nothing was attached: a process in the cgroup is free.
	if got := run(t, cg, "dial", "tcp4", "192.0.2.1:80"); got == "EPERM" {
		t.Errorf("rejected configuration was enforced")
	}
	// Open rejects over-capacity always-allowed lists before loading.
	_, err = bpf.Open(bpf.Options{NoPin: true, Limits: bpf.Limits{MaxDestinations: 1}, Always: dests[:2]})
	if !errors.Is(err, bpf.ErrCapacity) {
		t.Errorf("Open = %v, want ErrCapacity", err)
	}
}

// TestDropsCounted: when nobody reads and the ring buffer fills, verdicts
// are still enforced and the lost events are counted (the
// aa_bpf_ringbuf_drops_total metric).
func TestDropsCounted(t *testing.T) {
	g, _ := openGovernor(t, bpf.Options{})
	requireNetwork(t, g)
	cg := cgrouptest.New(t, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
		t.Fatal(err)
	}
	// 4 MiB of 80-byte records holds about 52,000 events.
	const n = 80000
	if got := run(t, cg, "flood", strconv.Itoa(n), "192.0.2.1:53"); got != strconv.Itoa(n) {
		t.Fatalf("denied sends = %s, want all %d (enforcement does not depend on the ring buffer)", got, n)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Drops == 0 || st.Events+st.Drops < n {
		t.Errorf("stats = %+v after %d verdicts with no reader, want drops counted", st, n)
	}
}

// TestOpenWithoutPrivilege: an unprivileged process gets a clear error that
// says what it needs, and the report marks everything unavailable.
func TestOpenWithoutPrivilege(t *testing.T) {
	cgrouptest.Root(t)
	// The test binary's build directory is private to root: run a copy.
	dir := t.TempDir()
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "bpf.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "open")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v (%s)", err, out)
	}
	got := string(out)
	for _, want := range []string{
		"open failed: open governor: load maps (loading eBPF needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
		`level=ERROR msg="ebpf capability" capability="network egress`,
		`level=ERROR msg="ebpf capability" capability="exec control`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
}

// TestMapFullFailsClosed: when the shared rule map is full, a new agent is
// refused with ErrCapacity, and a running agent whose policy change cannot
// be written is failed closed instead of keeping its old rules.
func TestMapFullFailsClosed(t *testing.T) {
	const per = 16384 // four agents fill the 65,536-entry trie
	g, _ := openGovernor(t, bpf.Options{Limits: bpf.Limits{MaxDestinations: per}})
	requireNetwork(t, g)
	target := listen(t, "tcp4", "127.0.0.1:0", "hello")
	dests := func(seed byte, extra ...bpf.Destination) []bpf.Destination {
		out := append([]bpf.Destination{}, extra...)
		for i := len(out); i < per; i++ {
			out = append(out, bpf.Destination{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, seed, byte(i >> 8), byte(i)}), 32)})
		}
		return out
	}
	allowTarget := bpf.Destination{Prefix: netip.MustParsePrefix("127.0.0.1/32")}
	var cgs []string
	for i := range 4 {
		cg := cgrouptest.New(t, "")
		if err := g.Govern(cg, bpf.AgentConfig{ID: uint32(i + 1), Egress: dests(byte(i), allowTarget)}); err != nil {
			t.Fatalf("agent %d: %v", i, err)
		}
		cgs = append(cgs, cg)
	}
	agent := newAgent(t, cgs[0])
	if got := agent.do("dial tcp4 " + target.String()); got != "ok:hello" {
		t.Fatalf("before: %q", got)
	}
	extra := cgrouptest.New(t, "")
	err := g.Govern(extra, bpf.AgentConfig{ID: 9, Egress: dests(9)})
	if !errors.Is(err, bpf.ErrCapacity) {
		t.Fatalf("fifth agent: %v, want ErrCapacity", err)
	}
	// A policy change for a running agent that does not fit: failed closed.
	err = g.Govern(cgs[0], bpf.AgentConfig{ID: 1, Egress: dests(7, allowTarget)})
	if !errors.Is(err, bpf.ErrCapacity) || !strings.Contains(err.Error(), "agent failed closed") {
		t.Fatalf("change: %v, want a capacity error that says the agent failed closed", err)
	}
	if got := agent.do("dial tcp4 " + target.String()); got != "EPERM" {
		t.Fatalf("after a failed change: %q, want EPERM (failed closed)", got)
	}
	// The other agents are untouched, and once there is room the change
	// goes through.
	if err := g.Release(cgs[3]); err != nil {
		t.Fatal(err)
	}
	if err := g.Govern(cgs[0], bpf.AgentConfig{ID: 1, Egress: dests(7, allowTarget)}); err != nil {
		t.Fatalf("change with room: %v", err)
	}
	if got := agent.do("dial tcp4 " + target.String()); got != "ok:hello" {
		t.Fatalf("after the change: %q", got)
	}
}
