// Package cgrouptest creates throwaway cgroup v2 groups and runs processes
// in them, for the kernel layer's privileged tests.
package cgrouptest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

// Act performs one network action of an agent process, verb "dial" (TCP)
// or "send" (UDP) over network tcp4/tcp6/udp4/udp6, or "raw6" for an
// AF_INET6 socket that keeps a v4-mapped address as given, and describes its outcome: "ok", "ok:<first
// bytes the peer sent>" or the errno name.
func Act(verb, network, addr string) string {
	if network == "raw6" {
		return raw6(verb, addr)
	}
	switch verb {
	case "dial":
		c, err := net.DialTimeout(network, addr, 3*time.Second)
		if err != nil {
			return Describe(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if n > 0 {
			return "ok:" + string(buf[:n])
		}
		return "ok"
	case "send":
		ua, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			return Describe(err)
		}
		c, err := net.ListenUDP(network, nil)
		if err != nil {
			return Describe(err)
		}
		defer c.Close()
		if _, err := c.WriteToUDP([]byte("hello"), ua); err != nil {
			return Describe(err)
		}
		return "ok"
	}
	return "unknown verb " + verb
}

// Describe names the errno of err ("EPERM", ...) or quotes it.
func Describe(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EPERM:
			return "EPERM"
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.ENETUNREACH:
			return "ENETUNREACH"
		}
		return "errno " + errno.Error()
	}
	return "error " + err.Error()
}

// raw6 dials or sends over an AF_INET6 socket with the address as given:
// Go's net package refuses v4-mapped addresses for tcp6/udp6.
func raw6(verb, addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return Describe(err)
	}
	typ := unix.SOCK_STREAM
	if verb == "send" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return Describe(err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if verb == "send" {
		if err := unix.Sendto(fd, []byte("hello"), 0, sa); err != nil {
			return Describe(err)
		}
		return "ok"
	}
	if err := unix.Connect(fd, sa); err != nil {
		return Describe(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3})
	buf := make([]byte, 64)
	n, _ := unix.Read(fd, buf)
	if n > 0 {
		return "ok:" + string(buf[:n])
	}
	return "ok"
}
