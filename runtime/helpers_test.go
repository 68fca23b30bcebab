package runtime_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// Fake credentials, built from pieces so that no source line holds a whole token.
var fakeGitHub = "ghp" + "_" + strings.Repeat("FAKE", 9)

var (
	agentA = action.AgentID{Org: "acme", Team: "eng", Agent: "a1"}
	agentB = action.AgentID{Org: "acme", Team: "eng", Agent: "a2"}
)

// childEnv selects what the re-executed test binary does.
const childEnv = "AA_RUNTIME_TEST_CHILD"

// childRuntime is what a runtime child process serves.
type childRuntime struct {
	Gateway, Buffer, Socket string
	Agent                   string
}

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "runtime":
		os.Exit(runChildRuntime())
	case "dial":
		os.Exit(runChildDial())
	case "gateway":
		os.Exit(runChildGateway())
	}
	os.Exit(m.Run())
}

// runChildRuntime serves a runtime until killed.
func runChildRuntime() int {
	var c childRuntime
	if err := json.Unmarshal([]byte(os.Getenv("AA_RUNTIME_TEST_CONFIG")), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	id, _ := runtime.ParseAgentID(c.Agent)
	rt, err := runtime.New(runtime.Options{
		Agents:  []runtime.Agent{{ID: id, Socket: c.Socket, UID: os.Getuid()}},
		Gateway: c.Gateway, BufferPath: c.Buffer,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := rt.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runChildDial connects to the socket in AA_RUNTIME_TEST_SOCKET, says hello
// and prints "welcome", "refused: <reason>" or "connect: <error>".
func runChildDial() int {
	c, err := net.Dial("unix", os.Getenv("AA_RUNTIME_TEST_SOCKET"))
	if err != nil {
		fmt.Println("connect:", err)
		return 0
	}
	defer c.Close()
	tag, msg, err := hello(c)
	switch {
	case err != nil:
		fmt.Println("connect:", err)
	case tag == v1.RuntimeFrameTag_RUNTIME_FRAME_WELCOME:
		fmt.Println("welcome")
	default:
		fmt.Println("refused:", msg)
	}
	return 0
}

// hello performs the handshake and returns the runtime's first frame tag and,
// for an error frame, its message.
func hello(c net.Conn) (frame.Tag, string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	// A runtime that refuses the peer says why and closes before reading the
	// hello, so the write may fail while the reason is waiting to be read.
	werr := frame.Write(c, v1.RuntimeFrameTag_RUNTIME_FRAME_HELLO, &v1.RuntimeHello{Versions: []uint32{frame.Version}, Sdk: "test"})
	tag, body, err := frame.Read(c, frame.DefaultMaxBody)
	if err != nil {
		if werr != nil {
			return 0, "", werr
		}
		return 0, "", err
	}
	if tag == v1.RuntimeFrameTag_RUNTIME_FRAME_ERROR {
		var e v1.RuntimeError
		_ = proto.Unmarshal(body, &e)
		return tag, e.GetMessage(), nil
	}
	return tag, "", nil
}

// gatewayProc is a real gateway on loopback with an SQLite store, that a test
// can stop and start again on the same address and store.
type gatewayProc struct {
	t      *testing.T
	dir    string
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startGateway(t *testing.T, dir, addr string) *gatewayProc {
	t.Helper()
	// Most tests here are about the runtime, not agent authentication,
	// and run runtimes that do not register; agentauth_test.go runs the
	// default, token, with registering runtimes.
	return startGatewayAuth(t, dir, addr, "off")
}

// startGatewayAuth is startGateway with --agent-auth mode.
func startGatewayAuth(t *testing.T, dir, addr, mode string) *gatewayProc {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.AgentAuth = mode
	cfg.PolicyPath = "testdata/policies"
	cfg.Store = "sqlite:" + filepath.Join(dir, "gateway.db")
	cfg.SecretsKeyFile = filepath.Join(dir, "secrets.key")
	cfg.APIAddr = ""
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.BootstrapAdminKey = servertest.AdminKey // conn presents it for operator calls
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var l net.Listener
	for i := 0; ; i++ { // the old listener's port may linger briefly after a stop
		l, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	g := &gatewayProc{t: t, dir: dir, addr: l.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- srv.Serve(ctx, l, nil) }()
	t.Cleanup(g.stop)
	return g
}

func (g *gatewayProc) stop() {
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	select {
	case err := <-g.done:
		switch {
		case err == nil:
		case strings.Contains(err.Error(), "grace period over"):
			// A known gateway issue: open InvalidationService streams hold
			// GracefulStop until the grace period ends.
			g.t.Logf("gateway stopped after its grace period: %v", err)
		default:
			g.t.Errorf("gateway stopped with: %v", err)
		}
	case <-time.After(15 * time.Second):
		g.t.Error("gateway did not stop within 15s")
	}
}

// conn dials the gateway for assertions.
func (g *gatewayProc) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// startRuntime runs a runtime in process until the test ends.
func startRuntime(t testing.TB, opts runtime.Options) *runtime.Runtime {
	t.Helper()
	rt, err := runtime.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	select {
	case <-rt.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("runtime did not start: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("runtime stopped with: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("runtime did not stop within 15s")
		}
	})
	return rt
}

// rawConn is a hand-driven SDK connection for protocol tests.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, sock string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tag, msg, err := hello(c)
	if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_WELCOME {
		t.Fatalf("handshake: %v %v %q", tag, err, msg)
	}
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (r *rawConn) send(tag frame.Tag, m proto.Message) {
	r.t.Helper()
	if err := frame.Write(r.c, tag, m); err != nil {
		r.t.Fatal(err)
	}
}

// next reads the next frame, failing the test after 10s.
func (r *rawConn) next() (frame.Tag, []byte, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return frame.Read(r.r, frame.DefaultMaxBody)
}

func (r *rawConn) reply() *v1.RuntimeReply {
	r.t.Helper()
	tag, body, err := r.next()
	if err != nil || tag != v1.RuntimeFrameTag_RUNTIME_FRAME_REPLY {
		r.t.Fatalf("reply: %v %v", tag, err)
	}
	var rep v1.RuntimeReply
	if err := proto.Unmarshal(body, &rep); err != nil {
		r.t.Fatal(err)
	}
	return &rep
}

func toolCheck(name, args string) *v1.CheckActionRequest {
	return &v1.CheckActionRequest{ActionType: v1.ActionType_TOOL_CALL,
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: args}}}
}

// isRoot skips tests that need root.
func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to %s (running as uid %d)", why, os.Geteuid())
	}
}

// childCmd re-executes the test binary in child mode.
func childCmd(bin, mode string, env ...string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + mode}, env...)...)
	return cmd
}

// publicCopy copies the test binary to a directory every user can read, for
// children running under another uid, and returns it and the directory.
func publicCopy(t *testing.T) (string, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "aa-runtime-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "runtime.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, dir
}

type netDialer struct{}

func (netDialer) dial(sock string) (net.Conn, error) { return net.Dial("unix", sock) }

// eventually polls cond every 20ms until it holds, failing after 30s. The
// bound is a liveness guard, not a speed assertion.
func eventually(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
