package bpf_test

import (
	"bufio"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
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
			fmt.Println(cgrouptest.Act(f[0], f[1], f[2]))
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
			fmt.Println(cgrouptest.Describe(err))
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
	fmt.Println(cgrouptest.Act(args[0], args[1], args[2]))
	return 0
}
