package verdicts_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/verdicts"
)

// childEnv makes the test binary act as an agent process (see TestMain).
const childEnv = "AA_VERDICTS_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// child performs one action and prints "<pid> <outcome>", the pid being
// the process that acted:
//
//	dial|send NETWORK ADDR   a connect or UDP send (cgrouptest.Act)
//	fork ACTION...           the action in a child process of this one
//	exec PATH                runs PATH; "killed" when SIGKILL ended it
//	serve                    one action per stdin line
func child(args []string) int {
	if len(args) == 1 && args[0] == "serve" {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			fmt.Println(do(strings.Fields(sc.Text())))
		}
		return 0
	}
	fmt.Println(do(args))
	return 0
}

func do(args []string) string {
	switch {
	case len(args) >= 1 && args[0] == "fork":
		cmd := exec.Command(os.Args[0], args[1:]...)
		cmd.Env = os.Environ()
		out, err := cmd.Output()
		if err != nil {
			return fmt.Sprintf("%d fork failed: %v", os.Getpid(), err)
		}
		return strings.TrimSpace(string(out))
	case len(args) == 2 && args[0] == "exec":
		cmd := exec.Command(args[1])
		err := cmd.Run()
		if cmd.ProcessState == nil {
			return fmt.Sprintf("0 exec failed: %v", err)
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return fmt.Sprintf("%d killed", cmd.ProcessState.Pid())
		}
		return fmt.Sprintf("%d exited %d", cmd.ProcessState.Pid(), cmd.ProcessState.ExitCode())
	case len(args) == 3 && args[0] == "connects":
		return fmt.Sprintf("%d %s", os.Getpid(), connects(args[1], args[2]))
	case len(args) == 3:
		return fmt.Sprintf("%d %s", os.Getpid(), cgrouptest.Act(args[0], args[1], args[2]))
	}
	return fmt.Sprintf("%d usage: dial|send NETWORK ADDR, fork ..., exec PATH", os.Getpid())
}

// connects makes n TCP connects to the IPv4 addr in a tight loop and
// returns how many failed with EPERM.
func connects(n, addr string) string {
	count, err := strconv.Atoi(n)
	if err != nil {
		return "bad count " + n
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return cgrouptest.Describe(err)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	denied := 0
	for range count {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return cgrouptest.Describe(err)
		}
		if unix.Connect(fd, sa) == unix.EPERM {
			denied++
		}
		unix.Close(fd)
	}
	return strconv.Itoa(denied)
}

// outcome splits a child's "<pid> <outcome>" line.
func outcome(t testing.TB, line string) (int, string) {
	t.Helper()
	p, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	pid, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("child said %q, want <pid> <outcome>", line)
	}
	return pid, rest
}

// act runs one action in the cgroup at cg ("" for outside any governed
// cgroup) and returns the acting pid and the outcome.
func act(t testing.TB, cg string, args ...string) (int, string) {
	t.Helper()
	var cmd *exec.Cmd
	if cg == "" {
		cmd = exec.Command(os.Args[0], args...)
	} else {
		cmd = cgrouptest.Command(t, cg, os.Args[0], args...)
	}
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child %v: %v (%s)", args, err, out)
	}
	return outcome(t, string(out))
}

// agentProc is a long-running agent process in a cgroup that acts on
// request, so a test can change the rules while it runs.
type agentProc struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

func startAgent(t *testing.T, cg string) *agentProc {
	t.Helper()
	cmd := cgrouptest.Command(t, cg, os.Args[0], "serve")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	return &agentProc{t: t, in: in, out: bufio.NewScanner(out)}
}

func (a *agentProc) do(line string) (int, string) {
	a.t.Helper()
	if _, err := fmt.Fprintln(a.in, line); err != nil {
		a.t.Fatal(err)
	}
	if !a.out.Scan() {
		a.t.Fatalf("agent process ended: %v", a.out.Err())
	}
	return outcome(a.t, a.out.Text())
}

// rig is the kernel layer end to end: a real gateway, a runtime that
// registers its agent and forwards its buffer, a governor pinned under a
// bpffs directory of its own, and the pump from its ring buffer into the
// runtime.
type rig struct {
	t     testing.TB
	log   *slog.Logger
	gw    string
	agent action.AgentID
	pin   string
	buf   string
	sock  string // the agent's runtime socket
	gov   *bpf.Governor
	rt    *runtime.Runtime
	stop  func() // stops rt
	pump  *verdicts.Pump
	hosts verdicts.Hosts // annotates network verdicts, when set
	cc    *grpc.ClientConn
	audit v1.AuditServiceClient
}

// newRig starts gateway and runtime and opens the governor; it skips when
// not root or when the kernel cannot enforce network egress.
func newRig(t testing.TB, mod func(*server.Config)) *rig {
	t.Helper()
	cgrouptest.Root(t)
	r := &rig{t: t, log: testLogger(t), agent: action.AgentID{Org: "acme", Team: "eng", Agent: "a1"}}
	r.gw = servertest.Start(t, "../testdata/policies", func(c *server.Config) {
		c.AgentAuth = agentAuth
		if mod != nil {
			mod(c)
		}
	})
	cc, err := grpc.NewClient(r.gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	r.cc = cc
	r.audit = v1.NewAuditServiceClient(cc)
	r.buf = filepath.Join(t.TempDir(), "events.db")
	r.startRuntime()
	b := make([]byte, 6)
	rand.Read(b)
	r.pin = filepath.Join(bpf.DefaultBPFFS, "aa-test-verdicts-"+hex.EncodeToString(b))
	r.openGovernor()
	t.Cleanup(func() {
		if r.pump != nil {
			r.pump.Stop()
		}
		if r.gov != nil {
			if err := r.gov.Teardown(); err != nil {
				t.Errorf("teardown governor: %v", err)
			}
		}
	})
	return r
}

// agentAuth is the gateway's agent authentication in these tests: the
// product's default; the runtime registers its agent and presents the
// token it got on ReportEvents.
const agentAuth = "token"

func (r *rig) startRuntime() {
	r.t.Helper()
	r.sock = filepath.Join(r.t.TempDir(), "a1.sock")
	rt, err := runtime.New(runtime.Options{
		Agents:  []runtime.Agent{{ID: r.agent, Socket: r.sock, UID: os.Getuid()}},
		Gateway: r.gw, BufferPath: r.buf, Logger: r.log, Register: true,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	select {
	case <-rt.Ready():
	case err := <-done:
		cancel()
		r.t.Fatalf("runtime: %v", err)
	}
	stopped := false
	r.rt = rt
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			r.t.Errorf("runtime stopped with: %v", err)
		}
	}
	r.t.Cleanup(r.stop)
}

func (r *rig) openGovernor() {
	r.t.Helper()
	g, err := bpf.Open(bpf.Options{Logger: r.log, PinPath: r.pin})
	if err != nil {
		r.t.Fatalf("open governor: %v", err)
	}
	r.gov = g
	for _, c := range g.Features().Capabilities {
		if c.Name == bpf.CapNetwork && c.Status != bpf.Enforced {
			g.Teardown()
			r.gov = nil
			r.t.Skipf("kernel cannot enforce network egress: %s", c.Detail)
		}
	}
}

func (r *rig) requireExec() {
	r.t.Helper()
	for _, c := range r.gov.Features().Capabilities {
		if c.Name == bpf.CapExec && c.Status != bpf.Enforced {
			r.t.Skipf("kernel cannot enforce exec: %s", c.Detail)
		}
	}
}

// startPump pumps the governor's ring buffer into the runtime.
func (r *rig) startPump() {
	r.t.Helper()
	rd, err := r.gov.Events()
	if err != nil {
		r.t.Fatalf("events: %v", err)
	}
	r.pump = verdicts.Start(rd, r.rt, verdicts.Options{
		Agent: &v1.AgentId{OrgId: r.agent.Org, TeamId: r.agent.Team, AgentId: r.agent.Agent}, Hosts: r.hosts, Logger: r.log})
}

// want describes the audit record a kernel verdict must become.
type want struct {
	rule     string // kernel/<program>
	decision v1.Decision
	kind     v1.ActionType
	host     string // network: destination address
	port     int
	proto    string // tcp or udp
	command  string // exec: the executed file
	pid      int
	reason   string // in the record's reason
}

func (w want) String() string {
	return fmt.Sprintf("%s %s %s host=%s port=%d proto=%s command=%s pid=%d", w.rule, w.decision, w.kind, w.host, w.port, w.proto, w.command, w.pid)
}

type payload struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Command  string `json:"command"`
}

func (w want) match(rec *v1.AuditRecord) bool {
	if rec.GetRuleId() != w.rule || rec.GetDecision() != w.decision || rec.GetActionType() != w.kind ||
		!strings.HasSuffix(rec.GetChain(), "/reports") ||
		!strings.HasPrefix(rec.GetReason(), "reported by kernel") ||
		!strings.Contains(rec.GetReason(), fmt.Sprintf("(pid %d,", w.pid)) ||
		!strings.Contains(rec.GetReason(), w.reason) {
		return false
	}
	var p payload
	if err := json.Unmarshal([]byte(rec.GetPayloadJson()), &p); err != nil {
		return false
	}
	if w.kind == v1.ActionType_PROCESS_EXEC {
		return p.Command == w.command
	}
	return p.Host == w.host && p.Port == w.port && p.Protocol == w.proto
}

// records lists the agent's audit records.
func (r *rig) records() []*v1.AuditRecord {
	r.t.Helper()
	var out []*v1.AuditRecord
	cursor := ""
	for {
		resp, err := r.audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{
			Filter: &v1.AuditFilter{OrgId: r.agent.Org, TeamId: r.agent.Team, AgentId: r.agent.Agent}, Limit: 1000, Cursor: cursor})
		if err != nil {
			r.t.Fatalf("list audit records: %v", err)
		}
		out = append(out, resp.GetRecords()...)
		if cursor = resp.GetNextCursor(); cursor == "" {
			return out
		}
	}
}

// expect waits until the gateway's audit log holds a record matching w
// (a hang guard of 30s, not a timing check) and returns it.
func (r *rig) expect(w want) *v1.AuditRecord {
	r.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		recs := r.records()
		for _, rec := range recs {
			if w.match(rec) {
				return rec
			}
		}
		if time.Now().After(deadline) {
			for _, rec := range recs {
				r.t.Logf("audit: %s %s %s %s %q", rec.GetRuleId(), rec.GetDecision(), rec.GetActionType(), rec.GetPayloadJson(), rec.GetReason())
			}
			r.t.Fatalf("no audit record: %s", w)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// byPID returns the agent's kernel records whose process is pid.
func (r *rig) byPID(pid int) []*v1.AuditRecord {
	var out []*v1.AuditRecord
	for _, rec := range r.records() {
		if strings.HasPrefix(rec.GetRuleId(), "kernel/") && strings.Contains(rec.GetReason(), fmt.Sprintf("(pid %d,", pid)) {
			out = append(out, rec)
		}
	}
	return out
}

// listen starts a TCP listener that writes banner to every connection.
func listen(t *testing.T, network, addr, banner string) *net.TCPAddr {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(banner))
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

// testLogger writes to t.Logf.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if _, ok := t.(*testing.B); ok {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(tWriter{t: t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
