package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func testRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to create cgroups (running as uid %d)", os.Geteuid())
	}
	m, err := Mount()
	if err != nil {
		t.Skipf("no cgroup v2 mount: %v", err)
	}
	root := filepath.Join(m, "agent-assembly-unit")
	if err := Available(root); err != nil {
		t.Skipf("cgroup v2 not writable: %v", err)
	}
	t.Cleanup(func() { os.Remove(root) })
	return root
}

// TestCreateRunRemove: a process started with Prepare is in the group from
// its first instruction; Remove kills what is left and deletes the group.
func TestCreateRunRemove(t *testing.T) {
	root := testRoot(t)
	g, err := Create(root, "acme.eng.a1")
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Create(root, "acme.eng.a1")
	if err != nil {
		t.Fatal(err)
	}
	if g.Path == g2.Path || filepath.Base(g.Path) != "acme.eng.a1-1" || filepath.Base(g2.Path) != "acme.eng.a1-2" {
		t.Fatalf("names %s and %s", g.Path, g2.Path)
	}
	if err := g2.Remove(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	g.Prepare(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	if !g.Contains(cmd.Process.Pid) {
		t.Fatalf("pid %d not in %s", cmd.Process.Pid, g.Path)
	}
	if g.Contains(os.Getpid()) {
		t.Fatal("the test process is reported in the agent's group")
	}
	pids, err := g.Procs()
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("procs %v %v", pids, err)
	}
	if err := g.Remove(); err != nil { // the sleep is still running: Remove kills it
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Path); !os.IsNotExist(err) {
		t.Fatalf("group still exists: %v", err)
	}
}

func TestCreateRejectsBadNames(t *testing.T) {
	for _, n := range []string{"", "a/b", "..", "."} {
		if _, err := Create("/nonexistent", n); err == nil {
			t.Errorf("Create accepted %q", n)
		}
	}
}
