//go:build e2e

// Package e2e runs agent-assembly as users deploy it: real processes (two
// aa-gateway replicas on one PostgreSQL and one Redis, aa-runtime, the
// example agent, aasm) driven through one story. Run it with `make e2e`.
package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/sdkclient"
)

const coder = "acme/eng/coder-1"

// TestStory is the whole story, step by step; each step logs what the user
// would type and see, and asserts it.
func TestStory(t *testing.T) {
	top := t // processes live for the whole story, not one step
	pg, redis := backends(t)
	work := t.TempDir()
	policies := filepath.Join(work, "policies")
	copyDir(t, "../examples/policies", policies)
	key := filepath.Join(work, "secrets.key")

	var a, b *gateway
	var token string
	// A failed step fails the story; the later steps still run (each one
	// sets up what it needs), except after the first two, which all need.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) && (a == nil || b == nil || token == "") {
			t.FailNow()
		}
	}

	step("01 two gateway replicas share PostgreSQL and Redis", func(t *testing.T) {
		a = startGateway(top, "gw-a", pg, redis, policies, key)
		b = startGateway(top, "gw-b", pg, redis, policies, key)
		out, code := aasm(t, b, "policy", "list")
		if code != 0 || !strings.Contains(out, "file:") {
			t.Fatalf("policy list on replica b: exit %d", code)
		}
	})

	step("02 the agent registers with an Ed25519 challenge", func(t *testing.T) {
		token = register(t, a, coder)
		out, code := aasm(t, b, "agent", "inspect", coder)
		if code != 0 || !strings.Contains(out, "active") {
			t.Fatalf("replica b does not show the registered agent as active")
		}
	})

	step("03 SDK: the example agent acts through aa-runtime", func(t *testing.T) {
		args := []string{"exec", "--gateway", a.grpc, "--agent", coder + ",token=" + token,
			"--buffer", filepath.Join(work, "runtime", "events.db"), "--socket-dir", filepath.Join(work, "run")}
		if os.Geteuid() != 0 {
			args = append(args, "--no-cgroup")
		}
		args = append(args, "--", bin(t, "agent"))
		out, code := run(t, []string{"AGENT_TOOL=git_status"}, bin(t, "aa-runtime"), args...)
		t.Logf("$ aa-runtime %s  (exit %d)\n%s", strings.Join(args, " "), code, indent(out))
		for _, want := range []string{"agent acme/eng/coder-1 connected", `tool git_status: "HELLO" allowed`, "tool rm_rf: denied", "exec curl: denied"} {
			if !strings.Contains(out, want) {
				t.Errorf("agent output lacks %q", want)
			}
		}
		if code != 0 {
			t.Errorf("exit %d", code)
		}
	})

	step("04 Envoy: ext_authz judges the sidecar's requests", func(t *testing.T) {
		c := authzClient(t, b)
		ok := envoyCheck(t, c, "researcher-1", "en.wikipedia.org", "/wiki/Envoy")
		if ok.GetOkResponse() == nil {
			t.Fatalf("allowed host denied: %s", ok.GetDeniedResponse().GetBody())
		}
		no := envoyCheck(t, c, "researcher-1", "exfil.example.com", "/upload")
		if d := no.GetDeniedResponse(); d == nil || d.GetStatus().GetCode() != 403 || !strings.Contains(d.GetBody(), "network.allowlist") {
			t.Fatalf("denied host answered %v", no)
		}
		t.Logf("GET https://en.wikipedia.org/wiki/Envoy → 200 (allow); GET https://exfil.example.com/upload → 403 %s", no.GetDeniedResponse().GetBody())
	})

	step("05 kernel: a direct connect the policy does not allow is refused", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root for cgroups and eBPF (CI runs as root)")
		}
		if _, err := exec.LookPath("bash"); err != nil {
			t.Skip("needs bash for /dev/tcp")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		_, port, _ := net.SplitHostPort(l.Addr().String())
		script := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%s && echo allowed-connect-ok; exec 4<>/dev/tcp/192.0.2.10/80 && echo denied-connect-succeeded`, port)
		args := []string{"exec", "--gateway", a.grpc, "--agent", coder + ",token=" + token,
			"--buffer", filepath.Join(work, "runtime", "events.db"), "--socket-dir", filepath.Join(work, "run"),
			"--ebpf", "enforce", "--egress", "127.0.0.1", "--", "bash", "-c", script}
		out, code := run(t, nil, bin(t, "aa-runtime"), args...)
		t.Logf("$ aa-runtime %s  (exit %d)\n%s", strings.Join(args, " "), code, indent(out))
		if !strings.Contains(out, "allowed-connect-ok") {
			t.Errorf("the allowed connect failed")
		}
		if strings.Contains(out, "denied-connect-succeeded") || !strings.Contains(out, "Operation not permitted") {
			t.Errorf("the denied connect was not refused with EPERM")
		}
		eventually(t, 10*time.Second, "the kernel's verdict in the audit log", func() error {
			out, _ := run(t, nil, bin(t, "aasm"), "--addr", b.grpc, "audit", "list", "--agent", coder, "-o", "json")
			if !strings.Contains(out, "192.0.2.10") {
				return fmt.Errorf("no audit record names 192.0.2.10")
			}
			return nil
		})
	})

	step("05b kernel rules follow the policy: redirect to the Envoy listener, process.deny kills", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root for cgroups and eBPF (CI runs as root)")
		}
		if _, err := exec.LookPath("bash"); err != nil {
			t.Skip("needs bash for /dev/tcp")
		}
		// The coding agent's policy says network.enforcement: redirect, so a
		// connection outside its allowlist lands on the local Envoy listener;
		// a listener here stands in for Envoy.
		envoy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer envoy.Close()
		landed := make(chan struct{}, 1)
		go func() {
			for {
				c, err := envoy.Accept()
				if err != nil {
					return
				}
				landed <- struct{}{}
				c.Close()
			}
		}()
		// process.deny lists curl: any executable by that name is killed.
		bindir := filepath.Join(work, "bin")
		if err := os.MkdirAll(bindir, 0o755); err != nil {
			t.Fatal(err)
		}
		truePath, err := exec.LookPath("true")
		if err != nil {
			t.Fatal(err)
		}
		bin0, err := os.ReadFile(truePath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bindir, "curl"), bin0, 0o755); err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf(`exec 3<>/dev/tcp/192.0.2.20/80 && echo redirected-connect-ok; %s/curl; echo "curl exit $?"`, bindir)
		args := []string{"exec", "--gateway", a.grpc, "--agent", coder + ",token=" + token,
			"--buffer", filepath.Join(work, "runtime", "events.db"), "--socket-dir", filepath.Join(work, "run"),
			"--ebpf", "enforce", "--envoy-egress", envoy.Addr().String(), "--", "bash", "-c", script}
		out, code := run(t, nil, bin(t, "aa-runtime"), args...)
		t.Logf("$ aa-runtime %s  (exit %d)\n%s", strings.Join(args, " "), code, indent(out))
		if !strings.Contains(out, "kernel rules from policy") {
			t.Errorf("the kernel rules did not come from the policy")
		}
		if !strings.Contains(out, "redirected-connect-ok") {
			t.Errorf("the connect outside the allowlist was not redirected to the Envoy listener")
		}
		select {
		case <-landed:
		case <-time.After(5 * time.Second):
			t.Errorf("nothing reached the stand-in Envoy listener")
		}
		if !strings.Contains(out, "curl exit 137") {
			t.Errorf("the denied executable was not killed (want exit 137)")
		}
		eventually(t, 10*time.Second, "the kill in the audit log", func() error {
			out, _ := run(t, nil, bin(t, "aasm"), "--addr", b.grpc, "audit", "list", "--agent", coder, "-o", "json")
			if !strings.Contains(out, "kernel/exec") {
				return fmt.Errorf("no kernel/exec audit record")
			}
			return nil
		})
	})

	step("06 budget: the research team's $50/day, shared by both replicas, runs out and suspends the agent", func(t *testing.T) {
		register(t, b, "acme/research/researcher-2")
		// 3M completion tokens of gpt-4o reserve $30.0025: inside the team's
		// $50 on replica a...
		call := []string{"check", "--agent", "acme/research/researcher-2", "--provider", "openai", "--model", "gpt-4o",
			"--prompt-tokens", "1000", "--completion-tokens", "3000000"}
		out, code := aasm(t, a, call...)
		if code != 0 || !strings.Contains(out, "ALLOW") {
			t.Fatalf("first $30 call on replica a: exit %d, want ALLOW", code)
		}
		// ...and the same call on replica b is refused: b counts a's $30
		// (one Redis counter per team and day).
		out, code = aasm(t, b, call...)
		for _, want := range []string{"DENY", "research-agent/budget", "spent $30.0025", "agent suspended"} {
			if !strings.Contains(out, want) {
				t.Errorf("second $30 call on replica b: output lacks %q", want)
			}
		}
		if code != 1 {
			t.Fatalf("second $30 call on replica b: exit %d, want 1 (deny)", code)
		}
		eventually(t, 5*time.Second, "the suspension on replica a", func() error {
			out, code := run(t, nil, bin(t, "aasm"), "--addr", a.grpc, "check", "--agent", "acme/research/researcher-2", "--host", "en.wikipedia.org", "--port", "443")
			if code != 1 || !strings.Contains(out, "suspended") {
				return fmt.Errorf("exit %d: %s", code, out)
			}
			return nil
		})
	})

	step("07 approval: the agent waits while an operator grants it with aasm on the other replica", func(t *testing.T) {
		args := []string{"--addr", a.grpc, "check", "--agent", coder, "--tool", "shell_exec", "--args", `{"command":"rm -rf build"}`, "--wait"}
		t.Logf("[%s] $ aasm %s   (waits for a human)", a.name, strings.Join(args[2:], " "))
		waiting := start(t, "aasm check --wait", exec.Command(bin(t, "aasm"), args...))
		idRE := regexp.MustCompile(`"id":\s*"([^"]+)"`)
		var id string
		eventually(t, 10*time.Second, "the pending approval listed on replica b", func() error {
			out, _ := run(t, nil, bin(t, "aasm"), "--addr", b.grpc, "approvals", "list", "-o", "json")
			m := idRE.FindStringSubmatch(out)
			if m == nil {
				return fmt.Errorf("no pending approval: %s", out)
			}
			id = m[1]
			return nil
		})
		if _, code := aasm(t, b, "approvals", "approve", id, "--comment", "build dir only"); code != 0 {
			t.Fatalf("approve: exit %d", code)
		}
		select {
		case err := <-waiting.done:
			waiting.done <- err
			out := waiting.out.String()
			t.Logf("the waiting check returned (%v):\n%s", err, indent(out))
			if err != nil || !strings.Contains(out, "ALLOW") {
				t.Fatalf("the waiting agent was not allowed once approved")
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the waiting check did not return after the approval")
		}
	})

	step("08 policy change: applied on one replica, enforced by the other without restart", func(t *testing.T) {
		edited := filepath.Join(work, "edited")
		copyDir(t, policies, edited)
		path := filepath.Join(edited, "coding-agent.yaml")
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		src = []byte(strings.Replace(string(src), "git_status: {allow: true}", "git_status: {allow: false}", 1))
		if err := os.WriteFile(path, src, 0o644); err != nil {
			t.Fatal(err)
		}
		out, code := aasm(t, b, "policy", "apply", edited, "-m", "e2e: freeze git_status")
		m := regexp.MustCompile(`(?m)^VERSION\s+(\S+)`).FindStringSubmatch(out)
		if code != 0 || m == nil {
			t.Fatalf("apply: exit %d, no VERSION in the output", code)
		}
		version := m[1]
		var denied string
		eventually(t, 5*time.Second, "replica a enforcing version "+version, func() error {
			out, code := run(t, nil, bin(t, "aasm"), "--addr", a.grpc, "check", "--agent", coder, "--tool", "git_status")
			if code != 1 || !regexp.MustCompile(`(?m)^POLICY VERSION\s+`+regexp.QuoteMeta(version)+`$`).MatchString(out) {
				return fmt.Errorf("exit %d: %s", code, out)
			}
			denied = out
			return nil
		})
		t.Logf("[%s] $ aasm check --agent %s --tool git_status  (exit 1)\n%s", a.name, coder, indent(denied))
		if !strings.Contains(denied, "coding-agent/tools[git_status]") {
			t.Errorf("the deny on replica a is not the edited tools entry")
		}
	})

	step("09 suspend: an operator stops the agent; its next check is denied everywhere", func(t *testing.T) {
		if _, code := aasm(t, b, "agent", "suspend", coder, "--reason", "e2e drill"); code != 0 {
			t.Fatalf("suspend: exit %d", code)
		}
		eventually(t, 2*time.Second, "the suspension on replica a", func() error {
			out, code := run(t, nil, bin(t, "aasm"), "--addr", a.grpc, "check", "--agent", coder, "--tool", "git_diff")
			if code != 1 || !strings.Contains(out, "suspended") {
				return fmt.Errorf("exit %d: %s", code, out)
			}
			return nil
		})
		if _, code := aasm(t, a, "agent", "resume", coder, "--reason", "drill over"); code != 0 {
			t.Fatalf("resume: exit %d", code)
		}
	})

	step("10 a replica dies mid-run: clients fail over, no audit record is lost", func(t *testing.T) {
		c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: a.grpc + "," + b.grpc, Agent: coder, Token: token, Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var (
			mu   sync.Mutex
			ids  []string
			errs []error
			n    atomic.Int64
		)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					d, err := c.CheckToolCall(context.Background(), "git_diff", map[string]bool{"stat": true})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						ids = append(ids, d.DecisionID)
					}
					mu.Unlock()
					n.Add(1)
				}
			}()
		}
		eventually(t, 10*time.Second, "load running", func() error {
			if n.Load() < 200 {
				return fmt.Errorf("%d checks so far", n.Load())
			}
			return nil
		})
		a.kill(t)
		t.Logf("replica gw-a killed (SIGKILL) after %d checks", n.Load())
		before := n.Load()
		eventually(t, 10*time.Second, "load continuing on replica b", func() error {
			if n.Load() < before+200 {
				return fmt.Errorf("%d checks since the kill", n.Load()-before)
			}
			return nil
		})
		cancel()
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d checks failed; first: %v", len(errs), n.Load(), errs[0])
		}
		audit := v1.NewAuditServiceClient(conn(t, b))
		logged := map[string]bool{}
		cursor := ""
		for {
			page, err := audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{
				Filter: &v1.AuditFilter{OrgId: "acme", TeamId: "eng", AgentId: "coder-1", ActionType: v1.ActionType_TOOL_CALL},
				Cursor: cursor, Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range page.GetRecords() {
				logged[r.GetId()] = true
			}
			if cursor = page.GetNextCursor(); cursor == "" {
				break
			}
		}
		missing := 0
		for _, id := range ids {
			if !logged[id] {
				missing++
			}
		}
		if missing > 0 {
			t.Fatalf("%d of %d answered decisions are not in the audit log", missing, len(ids))
		}
		t.Logf("%d checks, 0 errors, every answered decision found in the audit log", len(ids))
	})

	step("11 the whole audit log verifies", func(t *testing.T) {
		out, code := aasm(t, b, "audit", "verify")
		if code != 0 || !strings.Contains(out, "true") || strings.Contains(out, "false") {
			t.Fatalf("verify: exit %d", code)
		}
	})
}

// register proves agent's identity to replica g with a fresh Ed25519 key,
// through sdkclient, and returns its credential token.
func register(t *testing.T, g *gateway, agent string) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sdkclient.Dial(context.Background(), sdkclient.Options{Gateway: g.grpc, Agent: agent, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Register(context.Background(), priv, map[string]string{"env": "e2e"})
	if err != nil {
		t.Fatalf("register %s: %v", agent, err)
	}
	if resp.GetCredentialToken() == "" {
		t.Fatalf("register %s: no credential token", agent)
	}
	t.Logf("registered %s (token expires %s)", agent, resp.GetExpiresAt().AsTime().Format(time.RFC3339))
	return resp.GetCredentialToken()
}

func authzClient(t *testing.T, g *gateway) authv3.AuthorizationClient {
	return authv3.NewAuthorizationClient(conn(t, g))
}

func conn(t *testing.T, g *gateway) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(g.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.KeyCreds(adminKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// envoyCheck sends a CheckRequest shaped as an Envoy sidecar sends it, the
// agent identified by its SPIFFE id.
func envoyCheck(t *testing.T, c authv3.AuthorizationClient, agent, host, path string) *authv3.CheckResponse {
	t.Helper()
	resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://cluster.local/org/acme/team/research/agent/" + agent},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: host, Path: path, Scheme: "https", Protocol: "HTTP/1.1",
			Headers: map[string]string{":authority": host, ":method": "GET", ":path": path},
		}},
	}})
	if err != nil {
		t.Fatalf("ext_authz Check: %v", err)
	}
	return resp
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
