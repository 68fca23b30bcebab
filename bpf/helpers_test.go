package bpf_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
)

// testLogger writes to t.Logf and keeps the lines for assertions.
type testLogger struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func newTestLogger(t testing.TB) (*slog.Logger, *testLogger) {
	tl := &testLogger{}
	h := slog.NewTextHandler(io.MultiWriter(&tl.buf, tWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(&lockedHandler{h: h, mu: &tl.mu}), tl
}

func (l *testLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// openGovernor opens a governor pinned under a directory of its own and
// tears it down when the test ends. It skips when the kernel cannot
// govern network egress, saying why.
func openGovernor(t *testing.T, o bpf.Options) (*bpf.Governor, *testLogger) {
	t.Helper()
	cgrouptest.Root(t)
	log, tl := newTestLogger(t)
	o.Logger = log
	if o.PinPath == "" && !o.NoPin {
		o.PinPath = filepath.Join(bpf.DefaultBPFFS, "aa-test-"+randHex())
	}
	g, err := bpf.Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := g.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	return g, tl
}

func requireNetwork(t *testing.T, g *bpf.Governor) {
	t.Helper()
	f := g.Features()
	if st := f.Status(bpf.CapNetwork); st != bpf.Enforced {
		for _, c := range f.Capabilities {
			if c.Name == bpf.CapNetwork {
				t.Skipf("kernel cannot enforce network egress: %s", c.Detail)
			}
		}
	}
}

func requireExec(t *testing.T, g *bpf.Governor) {
	t.Helper()
	f := g.Features()
	if st := f.Status(bpf.CapExec); st != bpf.Enforced {
		for _, c := range f.Capabilities {
			if c.Name == bpf.CapExec {
				t.Skipf("kernel cannot enforce exec: %s", c.Detail)
			}
		}
	}
}

func randHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
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

// listenUDP starts a UDP socket that discards what it receives.
func listenUDP(t *testing.T, network, addr string) *net.UDPAddr {
	t.Helper()
	c, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.LocalAddr().(*net.UDPAddr)
}

// childCmd runs the test binary as an agent action inside cg ("" for
// outside any governed cgroup).
func childCmd(t *testing.T, cg string, args ...string) *exec.Cmd {
	t.Helper()
	var cmd *exec.Cmd
	if cg == "" {
		cmd = exec.Command(os.Args[0], args...)
	} else {
		cmd = cgrouptest.Command(t, cg, os.Args[0], args...)
	}
	cmd.Env = append(os.Environ(), childEnv+"=1")
	return cmd
}

func run(t *testing.T, cg string, args ...string) string {
	t.Helper()
	out, err := childCmd(t, cg, args...).Output()
	if err != nil {
		t.Fatalf("child %v: %v (%s)", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// events collects verdicts in the background and keeps them all, so
// that waits in any order find them.
type events struct {
	mu   sync.Mutex
	all  []bpf.Event
	more chan struct{}
}

func collect(t *testing.T, g *bpf.Governor) *events {
	t.Helper()
	rd, err := g.Events()
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	e := &events{more: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev bpf.Event
		for {
			if err := rd.Read(&ev); err != nil {
				return
			}
			e.mu.Lock()
			e.all = append(e.all, ev)
			e.mu.Unlock()
			select {
			case e.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { rd.Close(); <-done })
	return e
}

// wait returns the first event that satisfies match, failing the test when
// none arrives within a generous bound (a hang guard, not a timing check).
func (e *events) wait(t *testing.T, what string, match func(bpf.Event) bool) bpf.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		e.mu.Lock()
		for _, ev := range e.all {
			if match(ev) {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.more:
		case <-deadline:
			t.Fatalf("no event: %s", what)
			return bpf.Event{}
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
