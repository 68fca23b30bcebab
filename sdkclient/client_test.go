package sdkclient_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

const policies = "../runtime/testdata/policies"

// authOff runs a gateway without agent authentication, for tests about
// decisions whose runtime does not register its agent; TestRegisterDirect
// runs the default, token.
func authOff(c *server.Config) { c.AgentAuth = "off" }

var fakeGitHub = "ghp" + "_" + strings.Repeat("FAKE", 9)

// viaRuntime starts a gateway and a runtime for agent acme/eng/a1 and
// returns a client on the runtime's socket and the gateway address.
func viaRuntime(t *testing.T) (*sdkclient.Client, string) {
	t.Helper()
	gw := servertest.Start(t, policies, authOff)
	dir := t.TempDir()
	sock := filepath.Join(dir, "a1.sock")
	rt, err := runtime.New(runtime.Options{
		Agents:  []runtime.Agent{{ID: action.AgentID{Org: "acme", Team: "eng", Agent: "a1"}, Socket: sock, UID: os.Getuid()}},
		Gateway: gw, BufferPath: filepath.Join(dir, "events.db"), CacheTTL: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-rt.Ready()
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, gw
}

func TestDecisionsAndErrorKinds(t *testing.T) {
	rc, gw := viaRuntime(t)
	gc, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a1"})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	ctx := context.Background()
	for name, c := range map[string]*sdkclient.Client{"runtime": rc, "gateway": gc} {
		t.Run(name, func(t *testing.T) {
			if d, err := c.CheckToolCall(ctx, "echo", map[string]string{"say": "hi"}); err != nil || d.Decision != v1.Decision_ALLOW || d.DecisionID == "" {
				t.Fatalf("echo: %+v %v", d, err)
			}
			d, err := c.CheckToolCall(ctx, "rm_rf", map[string]string{"path": "/"})
			var e *sdkclient.Error
			if !errors.As(err, &e) || !errors.Is(err, sdkclient.ErrDenied) || errors.Is(err, sdkclient.ErrUnavailable) || d == nil || d.Decision != v1.Decision_DENY {
				t.Fatalf("rm_rf: %+v %v, want ErrDenied", d, err)
			}
			if e.Decision.RuleID == "" || !strings.Contains(err.Error(), "action denied by ") {
				t.Errorf("deny error does not name the rule: %v", err)
			}
			if _, err := c.CheckHTTP(ctx, "GET", "https://example.com/x"); !errors.Is(err, sdkclient.ErrDenied) {
				t.Errorf("http: %v, want ErrDenied (no network allowlist)", err)
			}
			if _, err := c.CheckHTTP(ctx, "GET", "not a url"); !errors.Is(err, sdkclient.ErrInvalid) {
				t.Errorf("bad url: %v, want ErrInvalid", err)
			}
			if _, err := c.CheckExec(ctx, "curl", "x"); !errors.Is(err, sdkclient.ErrDenied) {
				t.Errorf("exec: %v, want ErrDenied (process_exec not a capability)", err)
			}
			if err := c.Report(ctx, &v1.RuntimeEvent{Action: &v1.CheckActionRequest{ActionType: v1.ActionType_TOOL_CALL,
				Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "echo"}}}, Outcome: "ok"}); err != nil {
				t.Errorf("report: %v", err)
			}
		})
	}
}

func TestUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: addr, Agent: "acme/eng/a1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.CheckToolCall(context.Background(), "echo", nil)
	if !errors.Is(err, sdkclient.ErrUnavailable) || errors.Is(err, sdkclient.ErrDenied) {
		t.Fatalf("closed gateway: %v, want ErrUnavailable", err)
	}
	if _, err := sdkclient.Dial(context.Background(), sdkclient.Options{Socket: filepath.Join(t.TempDir(), "none.sock")}); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
	t.Setenv(sdkclient.EnvSocket, "")
	t.Setenv(sdkclient.EnvGateway, "")
	if _, err := sdkclient.Dial(context.Background(), sdkclient.Options{}); err == nil || !strings.Contains(err.Error(), "AA_RUNTIME_SOCKET") {
		t.Fatalf("dial with nothing configured: %v", err)
	}
}

// recorder is a TCP proxy that keeps every byte the client sends.
type recorder struct {
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.Write(p)
}

func (r *recorder) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.out.Bytes(), []byte(s))
}

func proxy(t *testing.T, target string) (string, *recorder) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	rec := &recorder{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(io.MultiWriter(s, rec), c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
	return l.Addr().String(), rec
}

// TestPreflightKeepsSecretsInProcess: a credential in tool arguments is
// replaced before the request leaves the process (the bytes on the wire do
// not hold it) and the caller is told to redact it; with the preflight off
// the same bytes do hold it, which shows the wire check can fail.
func TestPreflightKeepsSecretsInProcess(t *testing.T) {
	gw := servertest.Start(t, policies, authOff)
	for _, tc := range []struct {
		name        string
		noPreflight bool
	}{{"preflight", false}, {"no preflight", true}} {
		t.Run(tc.name, func(t *testing.T) {
			addr, rec := proxy(t, gw)
			c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: addr, Agent: "acme/eng/a1", NoPreflight: tc.noPreflight})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			d, err := c.CheckToolCall(context.Background(), "lookup", map[string]string{"q": "x", "token": fakeGitHub})
			if err != nil || d.Decision != v1.Decision_REDACT || len(d.Redactions) == 0 {
				t.Fatalf("check: %+v %v, want REDACT with redactions", d, err)
			}
			if leaked := rec.has(fakeGitHub); leaked != tc.noPreflight {
				t.Fatalf("secret on the wire: %v, want %v", leaked, tc.noPreflight)
			}
		})
	}
}

func TestWrapTool(t *testing.T) {
	c, _ := viaRuntime(t)
	calls := 0
	fn := func(_ context.Context, in map[string]string) (string, error) {
		calls++
		return "done " + in["say"], nil
	}
	echo := sdkclient.WrapTool(c, "echo", fn)
	if out, err := echo(context.Background(), map[string]string{"say": "hi"}); err != nil || out != "done hi" {
		t.Fatalf("echo: %q %v", out, err)
	}
	rm := sdkclient.WrapTool(c, "rm_rf", fn)
	if _, err := rm(context.Background(), map[string]string{"say": "bye"}); !errors.Is(err, sdkclient.ErrDenied) {
		t.Fatalf("rm_rf: %v, want ErrDenied", err)
	}
	if calls != 1 {
		t.Fatalf("the tool ran %d times, want once (never when denied)", calls)
	}
}

// TestWaitForApproval: a pending check is approved by a human (through
// ApprovalService) while the SDK waits through the runtime.
func TestWaitForApproval(t *testing.T) {
	rc, gw := viaRuntime(t)
	gc, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a1"})
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	cc, err := grpc.NewClient(gw, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	for name, c := range map[string]*sdkclient.Client{"runtime": rc, "gateway": gc} {
		t.Run(name, func(t *testing.T) {
			_, pending := c.CheckToolCall(ctx, "deploy", map[string]string{"env": "prod"})
			var e *sdkclient.Error
			if !errors.As(pending, &e) || !errors.Is(pending, sdkclient.ErrPending) || e.ApprovalID() == "" {
				t.Fatalf("deploy: %v, want ErrPending with an approval id", pending)
			}
			go func() {
				time.Sleep(100 * time.Millisecond) // let the wait begin; the outcome does not depend on it
				_, _ = v1.NewApprovalServiceClient(cc).Decide(ctx, &v1.DecideRequest{Id: e.ApprovalID(), Approve: true, DecidedBy: "alice"})
			}()
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			d, err := c.WaitForApproval(wctx, pending)
			if err != nil || d.Decision != v1.Decision_ALLOW || !strings.Contains(d.Reason, "granted by alice") {
				t.Fatalf("after approval: %+v %v", d, err)
			}
			if _, err := c.WaitForApproval(ctx, errors.New("other")); err == nil {
				t.Fatal("WaitForApproval accepted an error that is not pending")
			}
		})
	}
}

// TestRegisterDirect: in gateway mode Register performs the Ed25519
// challenge and later calls carry the issued token.
func TestRegisterDirect(t *testing.T) {
	gw := servertest.Start(t, policies, nil)
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a9"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	resp, err := c.Register(context.Background(), key, map[string]string{"team": "eng"})
	if err != nil || resp.GetCredentialToken() == "" {
		t.Fatalf("register: %v %v", resp, err)
	}
	if d, err := c.CheckToolCall(context.Background(), "echo", nil); err != nil || d.Decision != v1.Decision_ALLOW {
		t.Fatalf("check after register: %+v %v", d, err)
	}
	// Calls without a credential_token field carry the token as metadata.
	if err := c.Report(context.Background(), &v1.RuntimeEvent{Action: &v1.CheckActionRequest{ActionType: v1.ActionType_TOOL_CALL,
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: "echo"}}}, Outcome: "ok"}); err != nil {
		t.Fatalf("report after register: %v", err)
	}
	// A token written to a file ($AA_CREDENTIAL_TOKEN_FILE, as `aa-runtime
	// token --out` leaves it) is read when $AA_CREDENTIAL_TOKEN is unset.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(resp.GetCredentialToken()+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	t.Setenv(sdkclient.EnvToken, "")
	t.Setenv(sdkclient.EnvTokenFile, tokenFile)
	fc, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a9"})
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	if d, err := fc.CheckToolCall(context.Background(), "echo", nil); err != nil || d.Decision != v1.Decision_ALLOW {
		t.Fatalf("check with the token from $AA_CREDENTIAL_TOKEN_FILE: %+v %v", d, err)
	}
	t.Setenv(sdkclient.EnvTokenFile, filepath.Join(t.TempDir(), "missing"))
	if _, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a9"}); err == nil || !strings.Contains(err.Error(), sdkclient.EnvTokenFile) {
		t.Fatalf("dial with a missing token file: %v, want an error naming %s", err, sdkclient.EnvTokenFile)
	}
	t.Setenv(sdkclient.EnvTokenFile, "")
	other, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: gw, Agent: "acme/eng/a8"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if d, err := other.CheckToolCall(context.Background(), "echo", nil); err == nil || !strings.Contains(err.Error(), "agent not authenticated") {
		t.Fatalf("check of an agent without a token: %+v %v, want refused", d, err)
	}
	rc, _ := viaRuntime(t)
	if _, err := rc.Register(context.Background(), key, nil); err == nil {
		t.Fatal("Register through the runtime should say the runtime registers")
	}
}
