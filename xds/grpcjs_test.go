package xds

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// grpcJSDir finds the npm install of testdata/grpcjs (or $AA_GRPCJS_DIR),
// skipping when node or the modules are missing.
func grpcJSDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not on PATH; the grpc-js xDS client test needs Node.js 18+")
	}
	dir := os.Getenv("AA_GRPCJS_DIR")
	if dir == "" {
		dir = filepath.Join("testdata", "grpcjs")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@grpc", "grpc-js-xds")); err != nil {
		t.Skipf("@grpc/grpc-js-xds is not installed: run `npm ci` in xds/testdata/grpcjs (or set AA_GRPCJS_DIR): %v", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// lines collects a process's output lines.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) add(s string) {
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
}

// since returns the lines from index i on, and the next index.
func (l *lines) since(i int) ([]string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.all[i:]...), len(l.all)
}

// TestGRPCJSClientFollowsPolicy runs grpc-js's xDS client (a second
// implementation, in another language) against the Server: it resolves the
// allowed service, is cut off when the policy drops it, and comes back when
// the policy allows it again, in one process without restarting.
func TestGRPCJSClientFollowsPolicy(t *testing.T) {
	dir := grpcJSDir(t)
	f := newGRPCFixture(t, Options{})
	cmd := exec.Command("node", filepath.Join(dir, "client.js"), "xds:///"+f.target())
	cmd.Dir = dir
	// grpc-js insists on a node locality (grpc-go does not).
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+fmt.Sprintf(
		`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}], "node": {"id": %q, "locality": {}}}`,
		f.addr, grpcAgent))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := &lines{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.add(sc.Text())
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			all, _ := out.since(0)
			t.Logf("grpc-js output:\n%s\nstderr:\n%s", strings.Join(all, "\n"), stderr.String())
		}
	})
	next := 0
	waitLine := func(what, prefix string) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var ls []string
			ls, next = out.since(next)
			for _, l := range ls {
				if strings.HasPrefix(l, prefix) {
					return l
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("grpc-js: no %q line (%s)", prefix, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// 0801: HealthCheckResponse{status: SERVING}.
	if l := waitLine("allowed service resolved", "ok "); l != "ok 0801" {
		t.Fatalf("health response %q, want ok 0801", l)
	}
	v1 := f.version(t)
	eventually(t, "grpc-js ACKs v1", func() error { return ackedAll(f.srv, grpcAgent, v1) })

	f.setPolicy(t, "other.internal:443")
	l := waitLine("policy dropped the destination", "err ")
	t.Logf("after the policy change: %s", l)

	f.setPolicy(t, f.target())
	t0 := time.Now()
	waitLine("policy allows it again", "ok ")
	t.Logf("serving again after %s", time.Since(t0).Round(time.Millisecond))
	v3 := f.version(t)
	eventually(t, "grpc-js ACKs v3", func() error { return ackedAll(f.srv, grpcAgent, v3) })
}
