package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/runtime/cgroup"
)

// build compiles a package of this module into dir.
func build(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func needCgroups(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to create cgroups (running as uid %d)", os.Geteuid())
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	// One root per test: runs of this package side by side (or a leftover
	// of a crashed run) never see each other's agent cgroups.
	root := filepath.Join(mount, fmt.Sprintf("agent-assembly-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	if err := cgroup.Available(root); err != nil {
		t.Skipf("cgroup v2 not writable here: %v", err)
	}
	t.Cleanup(func() { os.Remove(root) })
	return root
}

type execRun struct {
	out, log string
	code     int
}

// runExec runs aa-runtime exec and returns its output and exit status; it is
// safe to call from a goroutine.
func runExec(t *testing.T, bin, gw, cgRoot string, extra []string, argv ...string) execRun {
	dir := t.TempDir()
	args := append([]string{"exec", "--agent", "acme/eng/a1", "--gateway", gw, "--buffer", filepath.Join(dir, "events.db"),
		"--socket-dir", dir, "--cgroup-root", cgRoot}, extra...)
	args = append(append(args, "--"), argv...)
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Error(err) // may run on a goroutine other than the test's: no Fatal
		code = -1
	}
	return execRun{out: stdout.String(), log: stderr.String(), code: code}
}

// TestExecCgroupEnvAndExitStatus: the agent starts inside its own cgroup
// with the socket in its environment, its exit status is aa-runtime's, and
// the cgroup is gone afterwards.
func TestExecCgroupEnvAndExitStatus(t *testing.T) {
	cgRoot := needCgroups(t)
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)

	r := runExec(t, bin, gw, cgRoot, nil, "sh", "-c", `cat /proc/self/cgroup; echo "socket=$AA_RUNTIME_SOCKET agent=$AA_AGENT_ID"; test -S "$AA_RUNTIME_SOCKET" && echo socket-ok; exit 7`)
	if r.code != 7 {
		t.Fatalf("exit status %d, want the agent's 7\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.log)
	}
	mount, _ := cgroup.Mount()
	rel := "0::" + strings.TrimPrefix(cgRoot, mount) + "/acme.eng.a1-"
	if !strings.Contains(r.out, rel) {
		t.Errorf("agent not in its own cgroup (want a line starting %q):\n%s", rel, r.out)
	}
	if !strings.Contains(r.out, "agent=acme/eng/a1") || !strings.Contains(r.out, "socket-ok") {
		t.Errorf("socket or agent id missing from the agent's environment:\n%s", r.out)
	}
	left, _ := filepath.Glob(filepath.Join(cgRoot, "acme.eng.a1-*"))
	if len(left) != 0 {
		t.Errorf("cgroups left after the agent exited: %v", left)
	}
}

// TestExecExampleAgent runs examples/agent under aa-runtime exec against a
// real gateway: SDK → socket (peer in the agent's cgroup) → runtime → gateway.
func TestExecExampleAgent(t *testing.T) {
	cgRoot := needCgroups(t)
	dir := t.TempDir()
	bin := build(t, dir, "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	agent := build(t, dir, "github.com/agent-assembly/agent-assembly/examples/agent")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)

	r := runExec(t, bin, gw, cgRoot, []string{"--ebpf", "observe"}, agent)
	if r.code != 0 {
		t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.log)
	}
	for _, want := range []string{
		"agent acme/eng/a1 connected",
		`tool echo: "HELLO" allowed`,
		"tool rm_rf: denied",
		"exec curl: denied",
		"runtime: gateway_reachable=true",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("agent output lacks %q:\n%s\nstderr:\n%s", want, r.out, r.log)
		}
	}
	// Kernel enforcement is attached or its absence is said loudly.
	for _, l := range strings.Split(r.log, "\n") {
		if strings.Contains(l, "eBPF") {
			t.Log(l)
		}
	}
	if !strings.Contains(r.log, "eBPF programs attached") && !strings.Contains(r.log, "eBPF UNAVAILABLE") && !strings.Contains(r.log, "eBPF attach FAILED") {
		t.Errorf("--ebpf observe left no trace in the log:\n%s", r.log)
	}
}

// TestExecRefusesWithoutCommand: bad invocations fail with usage errors.
func TestExecRefusesWithoutCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"exec", "--agent", "acme/eng/a1"}, "--agent and a command after -- are required"},
		{[]string{"exec", "--agent", "acme/a1", "--", "true"}, `agent id "acme/a1" must be org/team/agent`},
		{[]string{"exec", "--agent", "acme/eng/a1", "--ebpf", "loud", "--", "true"}, `--ebpf "loud" must be off, observe or enforce`},
		{[]string{"serve", "--agent", "acme/eng/a1,color=red"}, `unknown setting "color"`},
	} {
		stderr := captureStderr(t, func() {
			if code := run(tc.args); code != 2 {
				t.Errorf("%v: exit %d, want 2", tc.args, code)
			}
		})
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: stderr %q, want %q", tc.args, stderr, tc.want)
		}
	}
}

func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	f()
	os.Stderr = old
	w.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(r)
	return b.String()
}

// TestExecKilledByGateway: the runtime registers the agent; an operator's
// kill reaches it (on the control stream, or at the next registration if
// the stream was not up yet) and ends the agent's whole cgroup.
func TestExecKilledByGateway(t *testing.T) {
	cgRoot := needCgroups(t)
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	life := v1.NewAgentLifecycleServiceClient(cc)
	done := make(chan execRun, 1)
	go func() { done <- runExec(t, bin, gw, cgRoot, nil, "sh", "-c", "sleep 300 & sleep 300") }()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ag, err := life.GetAgent(ctx, &v1.GetAgentRequest{Id: "acme/eng/a1"})
		if err == nil && ag.GetStatus() == v1.AgentStatus_AGENT_STATUS_ACTIVE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent never registered")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := life.KillAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/a1", Reason: "runaway"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.code != 137 || !strings.Contains(r.log, "agent killed by the gateway") {
			t.Fatalf("exit %d, want 137 (SIGKILL)\nstderr:\n%s", r.code, r.log)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the agent was not killed within 60s")
	}
}

// TestExecKernelDenialAudited: with --ebpf enforce and no allowed
// destination, the agent's connect fails in the kernel, and the verdict
// reaches the gateway's audit log as a kernel-layer event.
func TestExecKernelDenialAudited(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	r := runExec(t, bin, gw, cgRoot, []string{"--ebpf", "enforce"}, "bash", "-c", "exec 3<>/dev/tcp/203.0.113.7/443 && echo connected || echo refused")
	if strings.Contains(r.log, "eBPF UNAVAILABLE") || strings.Contains(r.log, "eBPF attach FAILED") {
		t.Skipf("eBPF not available here:\n%s", r.log)
	}
	if r.code != 0 || !strings.Contains(r.out, "refused") {
		t.Fatalf("exit %d, out %q: want the connect refused\nstderr:\n%s", r.code, r.out, r.log)
	}
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// aa-runtime flushed its buffer before exiting, but the forwarder may
	// still have been waiting on the gateway; poll.
	audit := v1.NewAuditServiceClient(cc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{AgentId: "a1"}, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range resp.GetRecords() {
			if rec.GetRuleId() == "kernel/connect4" && rec.GetDecision() == v1.Decision_DENY && strings.Contains(rec.GetPayloadJson(), "203.0.113.7") {
				t.Logf("kernel record: %s %s", rec.GetReason(), rec.GetPayloadJson())
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kernel/connect4 deny record among %d records\nstderr:\n%s", len(resp.GetRecords()), r.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestExecAgentDiesWithRuntime: an agent must not outlive a runtime killed
// with SIGKILL (its unpinned eBPF programs are gone with it): the agent's
// process is killed too.
func TestExecAgentDiesWithRuntime(t *testing.T) {
	cgRoot := needCgroups(t)
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "agent.pid")
	cmd := exec.Command(bin, "exec", "--agent", "acme/eng/a1", "--gateway", gw, "--buffer", filepath.Join(dir, "events.db"),
		"--socket-dir", dir, "--cgroup-root", cgRoot, "--", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range mustGlob(t, filepath.Join(cgRoot, "acme.eng.a1-*")) {
			_ = os.Remove(d) // the runtime died before removing its cgroup
		}
	})
	var pid int
	deadline := time.Now().Add(30 * time.Second)
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			fmt.Sscan(string(b), &pid)
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("the agent never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for {
		// Signal 0 probes; a zombie (no parent reaps it once init adopts it
		// and reaps it) also ends the loop through ESRCH.
		if err := syscall.Kill(pid, 0); err != nil {
			break
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("agent %d outlived its runtime", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustGlob(t *testing.T, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestExecPinnedAfterRuntimeKill: aa-runtime exec pins its programs per
// cgroup, so when the runtime is killed with SIGKILL (and the agent with
// it), a process the agent left in its cgroup is still denied in the
// kernel. The next exec removes the pins and the empty cgroup.
func TestExecPinnedAfterRuntimeKill(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "left.pid")
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// stderr goes to a file, not a pipe: the process left behind keeps its
	// copy open, and Wait would wait for it.
	stderr, err := os.Create(filepath.Join(dir, "runtime.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	// The process left behind is a subshell (a fork of bash, which the
	// policy's process.allow permits; an exec of sleep would be killed)
	// blocked reading a FIFO nobody writes; the agent waits for it, so the
	// runtime is still running (not tearing down) when it is killed.
	cmd := exec.Command(bin, "exec", "--agent", "acme/eng/a1", "--gateway", gw, "--buffer", filepath.Join(dir, "events.db"),
		"--socket-dir", dir, "--cgroup-root", cgRoot, "--ebpf", "enforce", "--",
		"bash", "-c", "( read -r line <> "+fifo+" ) & echo $! > "+pidFile+"; wait")
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	readLog := func() string { b, _ := os.ReadFile(stderr.Name()); return string(b) }
	var left int
	t.Cleanup(func() {
		if left > 0 {
			_ = syscall.Kill(left, syscall.SIGKILL)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for left == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			fmt.Sscan(string(b), &left)
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("the agent never started\nstderr:\n%s", readLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	log := readLog()
	if strings.Contains(log, "eBPF UNAVAILABLE") || strings.Contains(log, "eBPF attach FAILED") {
		t.Skipf("eBPF not available here:\n%s", log)
	}
	if strings.Contains(log, "eBPF pinning unavailable") {
		t.Skipf("bpffs pinning not available here:\n%s", log)
	}
	groups := mustGlob(t, filepath.Join(cgRoot, "acme.eng.a1-*"))
	if len(groups) != 1 {
		t.Fatalf("agent cgroups %v, want the one the dead runtime left", groups)
	}
	cg := groups[0]
	pin, err := execPinDir(cg)
	if err != nil {
		t.Fatal(err)
	}
	// A process joins the dead runtime's cgroup and connects: the pinned
	// programs still judge it (EPERM, not a network error).
	probe := exec.Command("bash", "-c", "echo $$ > "+filepath.Join(cg, "cgroup.procs")+" && exec 3<>/dev/tcp/203.0.113.7/443")
	out, err := probe.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Operation not permitted") {
		t.Fatalf("connect from the dead runtime's cgroup: %v %s, want Operation not permitted\nruntime stderr:\n%s", err, out, log)
	}
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("pin directory %s: %v", pin, err)
	}
	// Once the cgroup is empty, the next exec under the same root sweeps.
	_ = syscall.Kill(left, syscall.SIGKILL)
	for !cgroupEmpty(cg) {
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("cgroup %s never emptied", cg)
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := runExec(t, bin, gw, cgRoot, []string{"--ebpf", "enforce", "--agent", "acme/eng/a2"}, "true") // another agent: a1 is registered with the first runtime's key
	if r.code != 0 {
		t.Fatalf("second exec: exit %d\nstderr:\n%s", r.code, r.log)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Errorf("pins of the dead runtime still at %s (%v)\nstderr:\n%s", pin, err, r.log)
	}
	if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Errorf("empty cgroup of the dead runtime still at %s (%v)", cg, err)
	}
}
