package bpf_test

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary act as an agent process (see TestMain).
const childEnv = "AA_BPF_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(child(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// child runs one network action per argument triple, or, with "serve",
// one per line of stdin, printing one result line each.
func child(args []string) int {
	if len(args) == 1 && args[0] == "serve" {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 {
				fmt.Println("bad request")
				continue
			}
			fmt.Println(act(f[0], f[1], f[2]))
		}
		return 0
	}
	if len(args) >= 1 && args[0] == "fork" {
		// Run the action in a child process of this one.
		cmd := exec.Command(os.Args[0], args[1:]...)
		cmd.Env = os.Environ()
		out, err := cmd.Output()
		if err != nil {
			fmt.Println("fork failed:", err)
			return 1
		}
		fmt.Print(string(out))
		return 0
	}
	if len(args) == 1 && args[0] == "open" {
		// Open the governor (as whatever user this runs as) and print the
		// capability report and the outcome.
		log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
		g, err := bpf.Open(bpf.Options{Logger: log, NoPin: true})
		if err != nil {
			fmt.Println("open failed:", err)
			return 0
		}
		fmt.Println("opened")
		g.Close()
		return 0
	}
	if len(args) == 3 && args[0] == "flood" {
		// flood N ip:port: N unconnected UDP sends, counting the EPERMs.
		n, _ := strconv.Atoi(args[1])
		ap := netip.MustParseAddrPort(args[2])
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			fmt.Println(describe(err))
			return 1
		}
		sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		denied := 0
		for range n {
			if unix.Sendto(fd, []byte("x"), 0, sa) == unix.EPERM {
				denied++
			}
		}
		fmt.Println(denied)
		return 0
	}
	if len(args) != 3 {
		fmt.Println("usage: dial|send network address")
		return 2
	}
	fmt.Println(act(args[0], args[1], args[2]))
	return 0
}

// act performs one action and describes its outcome: "ok", "ok:<first
// bytes the peer sent>" or the errno name.
func act(verb, network, addr string) string {
	if network == "raw6" {
		return raw6(verb, addr)
	}
	switch verb {
	case "dial":
		c, err := net.DialTimeout(network, addr, 3*time.Second)
		if err != nil {
			return describe(err)
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
			return describe(err)
		}
		c, err := net.ListenUDP(network, nil)
		if err != nil {
			return describe(err)
		}
		defer c.Close()
		if _, err := c.WriteToUDP([]byte("hello"), ua); err != nil {
			return describe(err)
		}
		return "ok"
	}
	return "unknown verb " + verb
}

func describe(err error) string {
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
		return describe(err)
	}
	typ := unix.SOCK_STREAM
	if verb == "send" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return describe(err)
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if verb == "send" {
		if err := unix.Sendto(fd, []byte("hello"), 0, sa); err != nil {
			return describe(err)
		}
		return "ok"
	}
	if err := unix.Connect(fd, sa); err != nil {
		return describe(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3})
	buf := make([]byte, 64)
	n, _ := unix.Read(fd, buf)
	if n > 0 {
		return "ok:" + string(buf[:n])
	}
	return "ok"
}
