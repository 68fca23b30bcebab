package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// TestExecMetricsExportKernelCounters: aa-runtime exec --metrics serves
// the kernel layer's counters while the agent runs: the governed cgroup,
// the verdicts its denied connects wrote to the ring buffer, and the ring
// buffer's drop counter.
func TestExecMetricsExportKernelCounters(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")
	addr := freePort(t)
	// Five denied connects, then the agent waits until the test has scraped.
	script := `for i in 1 2 3 4 5; do (exec 3<>/dev/tcp/203.0.113.7/443) 2>/dev/null; done; echo connects-done; while [ ! -e ` + goFile + ` ]; do sleep 0.05; done`
	cmd := exec.Command(bin, "exec", "--agent", "acme/eng/a1", "--gateway", gw, "--buffer", filepath.Join(dir, "events.db"),
		"--socket-dir", dir, "--cgroup-root", cgRoot, "--ebpf", "enforce", "--egress", "192.0.2.1/32", "--metrics", addr, "--", "bash", "-c", script)
	// Files, not pipes: Wait would also wait for processes the agent left
	// holding a pipe.
	stdout, stderr := logFile(t, dir, "stdout"), logFile(t, dir, "stderr")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	var waitErr error
	wait := func(d time.Duration) bool {
		if exited {
			return true
		}
		select {
		case waitErr = <-done:
			exited = true
		case <-time.After(d):
		}
		return exited
	}
	release := func() {
		if err := os.WriteFile(goFile, nil, 0o600); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() {
		if !wait(0) {
			_ = cmd.Process.Kill()
			wait(time.Minute)
		}
	})

	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		body = scrape(t, addr)
		if events, ok := metricValue(body, "aa_bpf_events_total"); ok && events >= 5 {
			break
		}
		if time.Now().After(deadline) || wait(0) {
			release()
			t.Fatalf("no scrape with 5 verdicts while the agent ran (exited %v: %v); last:\n%s\nstdout:\n%s\nstderr:\n%s", exited, waitErr, body, stdout.text(), stderr.text())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g, ok := metricValue(body, "aa_bpf_governed_cgroups"); !ok || g != 1 {
		t.Errorf("aa_bpf_governed_cgroups = %v (present %v), want 1:\n%s", g, ok, body)
	}
	if d, ok := metricValue(body, "aa_bpf_ringbuf_drops_total"); !ok || d != 0 {
		t.Errorf("aa_bpf_ringbuf_drops_total = %v (present %v), want 0 for a handful of verdicts:\n%s", d, ok, body)
	}
	release()
	if !wait(60 * time.Second) {
		t.Fatalf("aa-runtime exec did not end after the agent was released\nstdout:\n%s\nstderr:\n%s", stdout.text(), stderr.text())
	}
	if waitErr != nil {
		t.Fatalf("aa-runtime exec: %v\nstdout:\n%s\nstderr:\n%s", waitErr, stdout.text(), stderr.text())
	}
	if !strings.Contains(stdout.text(), "connects-done") {
		t.Errorf("the agent did not run its connects:\n%s", stdout.text())
	}
}

// TestExecMetricsNeedsEBPF: --metrics without --ebpf is refused before
// anything starts.
func TestExecMetricsNeedsEBPF(t *testing.T) {
	if got := execCmd([]string{"--agent", "acme/eng/a1", "--metrics", "127.0.0.1:0", "--", "true"}); got != 2 {
		t.Errorf("exit %d, want 2", got)
	}
}

type logOut struct{ *os.File }

func (f logOut) text() string { b, _ := os.ReadFile(f.Name()); return string(b) }

func logFile(t *testing.T, dir, name string) logOut {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return logOut{f}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return fmt.Sprintf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue reads an unlabelled sample from a Prometheus text exposition.
func metricValue(body, name string) (float64, bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}
