//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

// adminKey is the bootstrap admin API key of the story's gateways, fresh
// for each run. Every aasm the story runs presents it ($AA_API_KEY, set
// for the whole test process), as an operator who ran aasm login would.
var adminKey = func() string {
	k, err := auth.NewKey()
	if err != nil {
		panic(err)
	}
	os.Setenv("AA_API_KEY", k.String())
	return k.String()
}()

// The binaries under test, built once per run from this checkout.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// bin returns the path of a built binary (aa-gateway, aasm, aa-runtime, agent).
func bin(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "aa-e2e-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+string(os.PathSeparator),
			"../cmd/aa-gateway", "../cmd/aasm", "../cmd/aa-runtime", "../examples/agent")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

// backends returns the PostgreSQL and Redis URLs the story runs on, each
// with a fresh schema/prefix so runs never see each other's data.
func backends(t *testing.T) (pg, redis string) {
	t.Helper()
	pg, redis = os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pg == "" || redis == "" {
		t.Skip("the end-to-end story needs PostgreSQL and Redis: run `make e2e` (it starts both on loopback), or set AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL")
	}
	name := fmt.Sprintf("e2e_%d", time.Now().UnixNano())
	return withParam(t, pg, "schema", name), withParam(t, redis, "prefix", name+":")
}

func withParam(t *testing.T, raw, k, v string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %s: %v", raw, err)
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a started process whose output is kept for the test log.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan error
}

func start(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", name, p.out.String())
		}
	})
	return p
}

// stop asks the process to shut down (SIGTERM) and waits for it.
func (p *proc) stop(t *testing.T) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("%s did not stop within 20s of SIGTERM", p.name)
		return errors.New("killed")
	}
}

// kill ends the process at once (SIGKILL), as a crash would.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	err := <-p.done
	p.done <- err
}

// gateway is one aa-gateway replica.
type gateway struct {
	*proc
	grpc, api string
}

// startGateway starts a replica on the shared store and counters and waits
// until it is ready.
func startGateway(t *testing.T, replica, store, counters, policyDir, keyFile string) *gateway {
	t.Helper()
	g := &gateway{grpc: freeAddr(t), api: freeAddr(t)}
	cmd := exec.Command(bin(t, "aa-gateway"),
		"-grpc-addr", g.grpc, "-api-addr", g.api, "-store", store, "-counters", counters,
		"-policy", policyDir, "-replica-id", replica, "-secrets-key-file", keyFile, "-log-format", "json",
		// The story checks actions with `aasm check --agent ...` for agents
		// it never registers; agent authentication has its own tests
		// (gateway/server/agentauth_test.go, runtime/agentauth_test.go).
		"-agent-auth", "off",
		// CI machines are loaded; the story is not about the 150ms budget.
		"-extauthz-timeout", "5s")
	// Every replica starts with the same bootstrap admin key (the first to
	// start stores it); the story's operator presents it (aasm, conn).
	cmd.Env = append(os.Environ(), "AA_BOOTSTRAP_ADMIN_KEY="+adminKey)
	g.proc = start(t, replica, cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + g.api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return g
			}
		}
		select {
		case err := <-g.done:
			g.done <- err
			t.Fatalf("%s exited before it was ready: %v\n%s", replica, err, g.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within 30s\n%s", replica, g.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a command to completion and returns its output and exit code.
func run(t *testing.T, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), err)
	}
	return string(out), code
}

// aasm runs the CLI against a replica, as an operator would, and logs the
// command (prefixed by the replica's name) and what it printed.
func aasm(t *testing.T, g *gateway, args ...string) (string, int) {
	t.Helper()
	out, code := run(t, nil, bin(t, "aasm"), append([]string{"--addr", g.grpc}, args...)...)
	t.Logf("[%s] $ aasm %s  (exit %d)\n%s", g.name, strings.Join(args, " "), code, indent(out))
	return out, code
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// eventually retries f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
