package runtime_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/runtime"
	"github.com/agent-assembly/agent-assembly/runtime/frame"
)

// childGateway is what a gateway child process serves.
type childGateway struct {
	Store, SecretsKey, Addr, Replica string
}

// runChildGateway serves a gateway on c.Addr until killed, after printing
// the address it listens on.
func runChildGateway() int {
	var c childGateway
	if err := json.Unmarshal([]byte(os.Getenv("AA_RUNTIME_TEST_CONFIG")), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := server.DefaultConfig()
	cfg.AgentAuth = "off"
	cfg.PolicyPath = "testdata/policies"
	cfg.Store = c.Store
	cfg.SecretsKeyFile = c.SecretsKey
	cfg.ReplicaID = c.Replica
	cfg.APIAddr = ""
	cfg.BootstrapAdminKey = servertest.AdminKey
	cfg.AdminKeyFile = "none"
	ctx := context.Background()
	srv, err := server.New(ctx, cfg, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	l, err := net.Listen("tcp", c.Addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("listening", l.Addr().String())
	if err := srv.Serve(ctx, l, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startChildGateway runs a gateway in a child process (so that it can be
// killed with SIGKILL, as a crash would) and returns it with its address.
func startChildGateway(t *testing.T, c childGateway) (*exec.Cmd, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(c)
	cmd := childCmd(self, "gateway", "AA_RUNTIME_TEST_CONFIG="+string(b))
	logf, err := os.Create(filepath.Join(t.TempDir(), c.Replica+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", c.Replica, b)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("gateway %s did not start (%q, %v):\n%s", c.Replica, line, err, b)
	}
	return cmd, addr
}

// TestGatewayReplicaKilled runs a runtime against two gateway replicas on
// one PostgreSQL schema and puts checks through its socket while one replica
// is killed (SIGKILL) with checks in flight on it: no check fails (the
// runtime's gRPC client retries the ones the dead replica never answered on
// the other), the invalidation stream, which was on the killed replica,
// subscribes again on the other (the decision cache comes back), and every
// decision an agent was answered is in the audit log.
func TestGatewayReplicaKilled(t *testing.T) {
	_, store := pgtest.Schema(t, "runtime_failover")
	dir := t.TempDir()
	gw := func(replica, addr string) childGateway {
		return childGateway{Store: store, SecretsKey: filepath.Join(dir, "secrets.key"), Addr: addr, Replica: replica}
	}

	// Replica b's port is chosen now and served later, so that the runtime
	// starts with a alone: its invalidation stream is then on a.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrB := l.Addr().String()
	_ = l.Close()
	procA, addrA := startChildGateway(t, gw("gw-a", "127.0.0.1:0"))

	sock := filepath.Join(dir, "a1.sock")
	startRuntime(t, runtime.Options{
		Agents:  []runtime.Agent{{ID: agentA, Socket: sock, UID: os.Getuid()}},
		Gateway: addrA + "," + addrB, BufferPath: filepath.Join(dir, "events.db"),
		// Long enough that a check slowed by the loaded machine is not
		// answered "unavailable": only the failover is under test.
		CheckTimeout: 10 * time.Second,
	})
	probe := dialRaw(t, sock)
	var probeID atomic.Uint64
	// cacheLive reports whether the runtime's decision cache is on, which it
	// is only while the invalidation stream is subscribed.
	cacheLive := func() bool {
		for i := 0; i < 2; i++ {
			probe.send(v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, &v1.RuntimeQuery{RequestId: probeID.Add(1), Check: toolCheck("lookup", `{"probe":true}`)})
			if rep := probe.reply(); rep.GetError() != nil {
				t.Fatalf("probe check: %v", rep.GetError())
			} else if rep.GetCached() {
				return true
			}
		}
		return false
	}
	eventually(t, cacheLive)

	_, _ = startChildGateway(t, gw("gw-b", addrB))
	audit := v1.NewAuditServiceClient((&gatewayProc{addr: addrB}).conn(t))
	chains := func() (map[string]bool, map[string]int) {
		ids, chains := map[string]bool{}, map[string]int{}
		cursor := ""
		for {
			page, err := audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{
				Filter: &v1.AuditFilter{OrgId: agentA.Org, TeamId: agentA.Team, AgentId: agentA.Agent, ActionType: v1.ActionType_TOOL_CALL},
				Cursor: cursor, Limit: 1000})
			if err != nil {
				t.Fatalf("list audit records: %v", err)
			}
			for _, r := range page.GetRecords() {
				ids[r.GetId()] = true
				chains[r.GetChain()]++
			}
			if cursor = page.GetNextCursor(); cursor == "" {
				return ids, chains
			}
		}
	}

	var (
		mu       sync.Mutex
		answered []string
		failed   []string
		n        atomic.Int64
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		c := dialRaw(t, sock)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); ctx.Err() == nil; i++ {
				// No cache: every check goes to a gateway replica.
				if err := writeQuery(c, &v1.RuntimeQuery{RequestId: i, Check: toolCheck("lookup", `{"q":"x"}`), NoCache: true}); err != nil {
					mu.Lock()
					failed = append(failed, "send: "+err.Error())
					mu.Unlock()
					return
				}
				rep, err := readReply(c)
				mu.Lock()
				switch {
				case err != nil:
					failed = append(failed, "reply: "+err.Error())
				case rep.GetError() != nil || rep.GetCheck().GetDecision() != v1.Decision_ALLOW:
					failed = append(failed, fmt.Sprintf("%v: %s", rep.GetError(), rep.GetCheck().GetReason()))
				default:
					answered = append(answered, rep.GetCheck().GetDecisionId())
				}
				mu.Unlock()
				n.Add(1)
				if err != nil {
					return
				}
			}
		}()
	}
	// Both replicas answer the load before a dies.
	eventually(t, func() bool {
		_, c := chains()
		return c["gw-a"] > 0 && c["gw-b"] > 0 && n.Load() > 200
	})
	if err := procA.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = procA.Wait()
	atKill := n.Load()
	t.Logf("gw-a killed (SIGKILL) after %d checks", atKill)
	eventually(t, func() bool { return n.Load() > atKill+200 })
	eventually(t, cacheLive) // the invalidation stream is back, on gw-b
	stop()
	wg.Wait()

	if len(failed) > 0 {
		t.Fatalf("%d of %d checks failed; first: %s", len(failed), n.Load(), failed[0])
	}
	logged, byChain := chains()
	var missing []string
	for _, id := range answered {
		if !logged[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d answered decisions are not in the audit log (first %s); records by replica: %v", len(missing), len(answered), missing[0], byChain)
	}
	t.Logf("%d checks through the runtime, 0 failed, every answered decision in the audit log (records by replica: %v)", len(answered), byChain)
}

// writeQuery sends q on c; unlike rawConn.send it returns the error, for
// use off the test's goroutine.
func writeQuery(c *rawConn, q *v1.RuntimeQuery) error {
	return frame.Write(c.c, v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, q)
}

// readReply reads the next reply on c, or says why it could not.
func readReply(c *rawConn) (*v1.RuntimeReply, error) {
	tag, body, err := c.next()
	if err != nil {
		return nil, err
	}
	if tag != v1.RuntimeFrameTag_RUNTIME_FRAME_REPLY {
		return nil, fmt.Errorf("frame %v, want a reply", tag)
	}
	var rep v1.RuntimeReply
	if err := proto.Unmarshal(body, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}
