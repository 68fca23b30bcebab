package bpf_test

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

// agent is a long-running child in a governed cgroup that performs one
// action per request line.
type agent struct {
	t   *testing.T
	in  io.WriteCloser
	out *bufio.Scanner
}

func newAgent(t *testing.T, cg string) *agent {
	t.Helper()
	cmd := childCmd(t, cg, "serve")
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
	return &agent{t: t, in: in, out: bufio.NewScanner(out)}
}

func (a *agent) do(req string) string {
	a.t.Helper()
	if _, err := io.WriteString(a.in, req+"\n"); err != nil {
		a.t.Fatalf("agent: %v", err)
	}
	if !a.out.Scan() {
		a.t.Fatalf("agent exited: %v", a.out.Err())
	}
	return strings.TrimSpace(a.out.Text())
}
