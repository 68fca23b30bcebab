package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// agentPolicy is the agent's own document: one allowlisted host and port.
const agentPolicy = `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: a1-egress}
spec:
  scope: {level: agent, agent: a1}
  network:
    allowlist:
      - host: localhost
        ports: [%d]
`

// TestExecPolicyChangeFlipsKernelVerdict runs the product path: aa-runtime
// exec derives the kernel rules from the gateway's active policy (the
// allowlist host "localhost" resolved by the runtime's resolver), the
// agent's connects to it work; a new policy version applied at the gateway
// while the agent runs makes the same connect fail with EPERM. The audit
// log shows the agent's connect ALLOW, annotated with the host name the
// address came from, then DENY, same pid.
func TestExecPolicyChangeFlipsKernelVerdict(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	bin, gw, team, port := kernelRig(t, func(port int) string { return fmt.Sprintf(agentPolicy, port) })
	agent, okPID := startProbingAgent(t, bin, gw, cgRoot, port)
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := v1.NewPolicyServiceClient(cc).ApplyPolicy(context.Background(), &v1.ApplyPolicyRequest{Message: "move a1's port", Documents: []*v1.PolicyDocumentSource{
		{Name: "runtime-test.yaml", Yaml: string(team)}, {Name: "a1.yaml", Yaml: fmt.Sprintf(agentPolicy, port+1)},
	}}); err != nil {
		t.Fatalf("apply policy: %v", err)
	}
	refusedPID, err := agent.waitRefused()
	if err != nil || refusedPID != okPID {
		t.Fatalf("the agent (pid %s) was not refused after the policy change (%q): %v\nstderr:\n%s", okPID, refusedPID, err, agent.stderr.String())
	}
	if !strings.Contains(agent.stderr.String(), "kernel rules follow the new policy") {
		t.Errorf("the runtime did not log the policy follow:\n%s", agent.stderr.String())
	}

	audit := v1.NewAuditServiceClient(cc)
	find := func(d v1.Decision, pid string, extra string) *v1.AuditRecord {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // hang guard, not a timing check
		for {
			resp, err := audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{AgentId: "a1"}, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			for _, rec := range resp.GetRecords() {
				if rec.GetRuleId() == "kernel/connect4" && rec.GetDecision() == d && rec.GetActionType() == v1.ActionType_NETWORK_CALL &&
					strings.Contains(rec.GetPayloadJson(), fmt.Sprintf(`"host":"127.0.0.1","port":%d`, port)) &&
					strings.Contains(rec.GetReason(), "(pid "+pid+",") && strings.Contains(rec.GetReason(), extra) {
					return rec
				}
			}
			if time.Now().After(deadline) {
				for _, rec := range resp.GetRecords() {
					t.Logf("audit: %s %s %s %q", rec.GetRuleId(), rec.GetDecision(), rec.GetPayloadJson(), rec.GetReason())
				}
				t.Fatalf("no kernel/connect4 %s record for pid %s\nstderr:\n%s", d, pid, agent.stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	allow := find(v1.Decision_ALLOW, okPID, "address resolved from localhost")
	deny := find(v1.Decision_DENY, refusedPID, "")
	t.Logf("before: %q\nafter: %q", allow.GetReason(), deny.GetReason())
}

// TestExecPolicyOverCapacityFailsClosed: a new policy version whose
// allowlist does not fit the kernel maps (1,025 entries, the listener among
// them) must not leave the agent on the previous version's rules: the
// runtime says so and fails the agent closed, so the same process's next
// connect to the listener is refused.
func TestExecPolicyOverCapacityFailsClosed(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	bin, gw, team, port := kernelRig(t, func(port int) string { return fmt.Sprintf(agentPolicy, port) })

	agent, okPID := startProbingAgent(t, bin, gw, cgRoot, port)

	var big strings.Builder
	fmt.Fprintf(&big, "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: a1-egress}\nspec:\n  scope: {level: agent, agent: a1}\n  network:\n    allowlist:\n      - cidr: 127.0.0.1/32\n        ports: [%d]\n", port)
	for i := range 1024 {
		fmt.Fprintf(&big, "      - cidr: 10.%d.%d.1/32\n", i>>8, i&255)
	}
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := v1.NewPolicyServiceClient(cc).ApplyPolicy(context.Background(), &v1.ApplyPolicyRequest{Message: "too many destinations", Documents: []*v1.PolicyDocumentSource{
		{Name: "runtime-test.yaml", Yaml: string(team)}, {Name: "a1.yaml", Yaml: big.String()},
	}}); err != nil {
		t.Fatalf("apply policy: %v", err)
	}
	refusedPID, err := agent.waitRefused()
	if err != nil || refusedPID != okPID {
		t.Fatalf("the agent (pid %s) kept the previous rules after a policy over capacity (%q): %v\nstderr:\n%s", okPID, refusedPID, err, agent.stderr.String())
	}
	for _, want := range []string{"do not fit the kernel maps: the agent is failed closed", "over the kernel map capacity of 1024"} {
		if !strings.Contains(agent.stderr.String(), want) {
			t.Errorf("the runtime's log lacks %q:\n%s", want, agent.stderr.String())
		}
	}
}

// probingAgent is an agent under `aa-runtime exec --ebpf enforce` that
// connects to 127.0.0.1:port every 100 ms and prints "<pid> ok" or
// "<pid> refused" each time, until it is refused after having connected
// (or 600 tries: a hang guard, not a timing check). Bash builtins only: the
// policy's process allowlist (derived by the runtime) lets nothing but the
// agent's command run.
type probingAgent struct {
	cmd    *exec.Cmd
	out    *bufio.Scanner
	stderr *strings.Builder
}

// startProbingAgent starts the agent for acme/eng/a1 with the gateway at gw
// (extra: more exec flags) and returns once it has connected, with its pid.
// It skips when eBPF is not available here.
func startProbingAgent(t *testing.T, bin, gw, cgRoot string, port int, extra ...string) (*probingAgent, string) {
	t.Helper()
	script := fmt.Sprintf(`exec {nap}<> <(:); seen=0; for ((i = 0; i < 600; i++)); do
  if { exec 3<>/dev/tcp/127.0.0.1/%d; } 2>/dev/null; then exec 3>&-; echo "$$ ok"; seen=1; else echo "$$ refused"; [ $seen = 1 ] && exit 0; fi
  read -t 0.1 -u $nap; done; exit 3`, port)
	dir := t.TempDir()
	args := append([]string{"exec", "--agent", "acme/eng/a1", "--gateway", gw, "--buffer", filepath.Join(dir, "events.db"),
		"--socket-dir", dir, "--cgroup-root", cgRoot, "--ebpf", "enforce"}, extra...)
	p := &probingAgent{cmd: exec.Command(bin, append(args, "--", "bash", "-c", script)...), stderr: &strings.Builder{}}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.out = bufio.NewScanner(out)
	for p.out.Scan() {
		if pid, res, _ := strings.Cut(p.out.Text(), " "); res == "ok" {
			return p, pid
		}
	}
	p.cmd.Wait()
	if strings.Contains(p.stderr.String(), "eBPF UNAVAILABLE") || strings.Contains(p.stderr.String(), "eBPF attach FAILED") {
		t.Skipf("eBPF not available here:\n%s", p.stderr.String())
	}
	t.Fatalf("the agent never reached 127.0.0.1:%d\nstderr:\n%s", port, p.stderr.String())
	return nil, ""
}

// waitRefused waits for the agent's first refusal and its exit, and returns
// the refused process's pid and how the runtime exited.
func (p *probingAgent) waitRefused() (string, error) {
	var pid string
	for p.out.Scan() {
		if id, res, _ := strings.Cut(p.out.Text(), " "); res == "refused" {
			pid = id
			break
		}
	}
	return pid, p.cmd.Wait()
}

// kernelRig starts what the kernel-policy tests share: a loopback listener
// the agent may reach, a gateway whose policy is the runtime test team's
// plus agentDoc(port) for acme/eng/a1, and a built aa-runtime. It returns
// the binary, the gateway's address, the team document and the port.
func kernelRig(t *testing.T, agentDoc func(port int) string) (bin, gw string, team []byte, port int) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go acceptAndClose(l)
	port = l.Addr().(*net.TCPAddr).Port
	pol := t.TempDir()
	if team, err = os.ReadFile("../../runtime/testdata/policies/runtime-test.yaml"); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"runtime-test.yaml": string(team), "a1.yaml": agentDoc(port)} {
		if err := os.WriteFile(filepath.Join(pol, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin = build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	return bin, servertest.Start(t, pol, nil), team, port
}
