package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

var httpClient = &http.Client{Timeout: 10 * time.Second}

// buildGateway compiles this command once per test binary.
var buildOnce struct {
	sync.Once
	path string
	err  error
}

func gatewayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "aa-gateway-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "aa-gateway")
		out, err := exec.Command("go", "build", "-o", buildOnce.path, ".").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// gatewayProc is a running aa-gateway process.
type gatewayProc struct {
	cmd  *exec.Cmd
	grpc string
	http string
	log  *syncbuf.Buffer
}

func startProc(t *testing.T, args ...string) *gatewayProc {
	t.Helper()
	p := &gatewayProc{grpc: freeAddr(t), http: freeAddr(t), log: &syncbuf.Buffer{}}
	// These tests are about crashes, outages, signals and replicas, and
	// check for agents they do not register: agent authentication is off.
	args = append([]string{"-grpc-addr", p.grpc, "-api-addr", p.http, "-policy", "../../examples/policies", "-log-level", "warn", "-agent-auth", "off"}, args...)
	p.cmd = exec.Command(gatewayBinary(t), args...)
	p.cmd.Env = append(os.Environ(), server.BootstrapKeyEnv+"="+servertest.AdminKey) // operator calls below present it
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not ready: %v\n%s", err, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *gatewayProc) client(t *testing.T) (v1.PolicyServiceClient, v1.AuditServiceClient) {
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewPolicyServiceClient(conn), v1.NewAuditServiceClient(conn)
}

// crashUnderLoad drives concurrent checks, SIGKILLs the gateway mid-run,
// restarts it on the same store, and asserts that every decision a client
// was answered is in the audit log and that every chain verifies.
func crashUnderLoad(t *testing.T, args ...string) {
	p := startProc(t, args...)
	policy, _ := p.client(t)
	var mu sync.Mutex
	answered := map[string]bool{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req := &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "coder-1"}, TraceId: "crash",
				Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "git_status", ArgsJson: fmt.Sprintf(`{"worker":%d}`, i)}}}
			for ctx.Err() == nil {
				resp, err := policy.CheckAction(ctx, req)
				if err != nil {
					return // the gateway is gone; unanswered checks may or may not be recorded
				}
				mu.Lock()
				answered[resp.GetDecisionId()] = true
				mu.Unlock()
			}
		}(i)
	}
	// Let load build up, then kill without warning.
	for {
		mu.Lock()
		n := len(answered)
		mu.Unlock()
		if n >= 300 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	cancel()
	wg.Wait()
	t.Logf("killed the gateway after %d answered checks", len(answered))

	p2 := startProc(t, args...)
	_, audit := p2.client(t)
	found := map[string]bool{}
	req := &v1.ListAuditRecordsRequest{Filter: &v1.AuditFilter{TraceId: "crash"}, Limit: 1000}
	for {
		page, err := audit.ListAuditRecords(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.GetRecords() {
			found[r.GetId()] = true
		}
		if req.Cursor = page.GetNextCursor(); req.Cursor == "" {
			break
		}
	}
	lost := 0
	for id := range answered {
		if !found[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d answered decisions are missing from the audit log after SIGKILL", lost, len(answered))
	}
	v, err := audit.VerifyAudit(context.Background(), &v1.VerifyAuditRequest{})
	if err != nil || !v.GetOk() {
		t.Fatalf("audit chain does not verify after SIGKILL: %v %v", v, err)
	}
	t.Logf("all %d answered decisions survived (%d records with the trace, some answered only by the kernel's buffers)", len(answered), len(found))
}

func TestCrashSQLiteSync(t *testing.T) {
	dir := t.TempDir()
	crashUnderLoad(t, "-store", "sqlite:"+filepath.Join(dir, "aa.db"), "-secrets-key-file", filepath.Join(dir, "k"), "-audit-durability", "sync")
}

func TestCrashSQLiteOS(t *testing.T) {
	dir := t.TempDir()
	crashUnderLoad(t, "-store", "sqlite:"+filepath.Join(dir, "aa.db"), "-secrets-key-file", filepath.Join(dir, "k"), "-audit-durability", "os")
}

func TestCrashPostgres(t *testing.T) {
	_, store := pgtest.Schema(t, "crash")
	crashUnderLoad(t, "-store", store, "-secrets-key-file", filepath.Join(t.TempDir(), "k"), "-replica-id", "gw-crash")
}

// TestSignals checks graceful shutdown on SIGTERM and reload on SIGHUP.
func TestSignals(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, "-store", "sqlite:"+filepath.Join(dir, "aa.db"), "-secrets-key-file", filepath.Join(dir, "k"), "-log-level", "info")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.log.String(), "policy reload requested") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged after SIGHUP:\n%s", p.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("gateway exited with %v after SIGTERM:\n%s", err, p.log)
	}
	if !strings.Contains(p.log.String(), "msg=stopped") {
		t.Fatalf("no graceful stop logged:\n%s", p.log)
	}
}

func TestBadConfigExits(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-grpc-addr", "0.0.0.0:1"}, "--grpc-addr: \"0.0.0.0:1\" is not a loopback address"},
		{[]string{"-store", "mysql://x"}, "mysql"},
		{[]string{"-policy", "/nonexistent"}, "/nonexistent"},
		{[]string{"-audit-durability", "never"}, "--audit-durability"},
	}
	for _, tc := range cases {
		dir := t.TempDir()
		args := append([]string{"-secrets-key-file", filepath.Join(dir, "k"), "-store", "sqlite:" + filepath.Join(dir, "aa.db"), "-grpc-addr", freeAddr(t), "-api-addr", freeAddr(t)}, tc.args...)
		out, err := exec.Command(gatewayBinary(t), args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err %v, output:\n%s\nwant it to mention %q", tc.args, err, out, tc.want)
		}
	}
}

// TestGCDefault checks the garbage collector's target: 400 unless GOGC is
// set, in which case the environment wins. The gateway's Go collector
// exports it as go_gc_gogc_percent.
func TestGCDefault(t *testing.T) {
	for _, tc := range []struct {
		env  string // "" = unset
		want string
	}{{"", "go_gc_gogc_percent 400\n"}, {"150", "go_gc_gogc_percent 150\n"}} {
		t.Setenv("GOGC", tc.env) // restores the outer value at the end
		if tc.env == "" {
			os.Unsetenv("GOGC")
		}
		dir := t.TempDir()
		p := startProc(t, "-store", "sqlite:"+filepath.Join(dir, "aa.db"), "-secrets-key-file", filepath.Join(dir, "k"))
		resp, err := http.Get("http://" + p.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), tc.want) {
			i := strings.Index(string(body), "go_gc_gogc_percent ")
			t.Fatalf("GOGC=%q: want %q in /metrics, got %q", tc.env, tc.want, string(body)[max(i, 0):min(max(i, 0)+40, len(body))])
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("gateway exited with %v after SIGTERM:\n%s", err, p.log)
		}
	}
}
