// Package cgroup starts agent processes in their own cgroup v2, so that the
// kernel layer can attach programs to exactly the agent's processes.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DirName is the directory under the cgroup v2 mount that holds agent cgroups.
const DirName = "agent-assembly"

// ErrNotSupported means cgroup v2 is not mounted or not writable here.
var ErrNotSupported = errors.New("cgroup v2 not available")

// Group is one agent cgroup.
type Group struct {
	// Path is the cgroup's directory.
	Path  string
	mount string
	fd    *os.File
}

// Mount returns the mount point of the cgroup v2 hierarchy: /sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one.
func Mount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	best := ""
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root mount-point options... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 || g[0] != "cgroup2" {
			continue
		}
		if p := unescape(f[4]); best == "" || len(p) < len(best) {
			best = p
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: no cgroup2 file system is mounted", ErrNotSupported)
	}
	return best, nil
}

func unescape(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// DefaultRoot returns <cgroup v2 mount>/agent-assembly.
func DefaultRoot() (string, error) {
	m, err := Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(m, DirName), nil
}

// Available reports whether root (or its parent, the cgroup v2 mount) can
// hold new cgroups, and why not.
func Available(root string) error {
	mount := filepath.Dir(filepath.Clean(root))
	var st syscall.Statfs_t
	if err := syscall.Statfs(mount, &st); err != nil {
		return fmt.Errorf("%w: stat %s: %v", ErrNotSupported, mount, err)
	}
	const cgroup2Magic = 0x63677270
	if st.Type != cgroup2Magic {
		return fmt.Errorf("%w: %s is not a cgroup2 mount", ErrNotSupported, mount)
	}
	if err := syscall.Access(mount, 2 /* W_OK */); err != nil {
		return fmt.Errorf("%w: %s is not writable (run as root or delegate a subtree): %v", ErrNotSupported, mount, err)
	}
	return nil
}

// Create makes a new cgroup root/<name>-<n> with the smallest free n. root
// must be a directory directly under a cgroup v2 mount (see DefaultRoot).
func Create(root, name string) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("create cgroup: bad name %q", name)
	}
	if err := Available(root); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	if err := os.Mkdir(root, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	for n := 1; n < 100000; n++ {
		p := filepath.Join(root, fmt.Sprintf("%s-%d", name, n))
		err := os.Mkdir(p, 0o755)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		fd, err := os.Open(p)
		if err != nil {
			_ = os.Remove(p)
			return nil, fmt.Errorf("create cgroup: open %s: %w", p, err)
		}
		return &Group{Path: p, mount: filepath.Dir(filepath.Clean(root)), fd: fd}, nil
	}
	return nil, fmt.Errorf("create cgroup: no free name under %s for %s", root, name)
}

// FD is the open cgroup directory, for SysProcAttr.CgroupFD or for
// attaching programs.
func (g *Group) FD() int { return int(g.fd.Fd()) }

// Prepare makes cmd start directly inside the group (clone3 with
// CLONE_INTO_CGROUP), so the process never runs outside it.
func (g *Group) Prepare(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = g.FD()
}

// Procs lists the pids in the group.
func (g *Group) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(g.Path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("list cgroup processes: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Contains reports whether pid is a member of the group.
func (g *Group) Contains(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	rel := strings.TrimPrefix(g.Path, g.mount)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasPrefix(line, "0::") && strings.TrimPrefix(line, "0::") == rel {
			return true
		}
	}
	return false
}

// Kill sends SIGKILL to every process in the group (cgroup.kill, Linux 5.14+).
func (g *Group) Kill() error {
	if err := os.WriteFile(filepath.Join(g.Path, "cgroup.kill"), []byte("1"), 0); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", g.Path, err)
	}
	return nil
}

// Remove kills any process left in the group and removes it.
func (g *Group) Remove() error {
	defer g.fd.Close()
	var err error
	for i := 0; i < 50; i++ {
		if err = os.Remove(g.Path); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		_ = g.Kill()
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", g.Path, err)
}
