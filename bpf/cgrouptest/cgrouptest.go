// Package cgrouptest creates throwaway cgroup v2 groups and runs processes
// in them, for the kernel layer's privileged tests.
package cgrouptest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Root returns the cgroup v2 mount point, or skips the test with the
// reason it cannot be used.
func Root(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creating cgroups and loading eBPF programs needs CAP_SYS_ADMIN and CAP_BPF (run the tests as root, as CI does)")
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no /proc/self/mountinfo: %v", err)
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				if best == "" || len(fields[4]) < len(best) {
					best = fields[4]
				}
			}
		}
	}
	if best == "" {
		t.Skip("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
	}
	return best
}

// New creates a fresh cgroup under parent (the cgroup v2 root when parent
// is "") and removes it when the test ends, after moving any process left
// in it to the root and killing it.
func New(t testing.TB, parent string) string {
	t.Helper()
	root := Root(t)
	if parent == "" {
		parent = root
	}
	dir, err := os.MkdirTemp(parent, "aa-test-")
	if err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() { remove(t, root, dir) })
	return dir
}

func remove(t testing.TB, root, dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			remove(t, root, filepath.Join(dir, e.Name()))
		}
	}
	for range 50 {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(b)) {
				var p int
				fmt.Sscan(pid, &p)
				unix.Kill(p, unix.SIGKILL)
			}
		}
		if err := unix.Rmdir(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("remove cgroup %s: still busy", dir)
}

// Command returns cmd set up to start inside the cgroup at dir (clone into
// the cgroup, so not even the first instruction runs outside it).
func Command(t testing.TB, dir string, name string, args ...string) *exec.Cmd {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	return cmd
}
