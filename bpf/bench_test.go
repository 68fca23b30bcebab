package bpf_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/cgrouptest"
	"golang.org/x/sys/unix"
)

// enterCgroup moves this process into the cgroup at dir and returns a
// function that moves it back.
func enterCgroup(b *testing.B, dir string) func() {
	b.Helper()
	root := cgrouptest.Root(b)
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	orig := ""
	for _, line := range strings.Split(string(self), "\n") {
		if strings.HasPrefix(line, "0::") {
			orig = strings.TrimPrefix(line, "0::")
		}
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		b.Fatalf("enter cgroup: %v", err)
	}
	var once sync.Once
	leave := func() {
		once.Do(func() {
			if err := os.WriteFile(filepath.Join(root, orig, "cgroup.procs"), pid, 0); err != nil {
				b.Errorf("leave cgroup: %v", err)
			}
		})
	}
	// Leave before the cgroup is removed, also when the benchmark fails.
	b.Cleanup(leave)
	return leave
}

func openBench(b *testing.B, o bpf.Options) *bpf.Governor {
	b.Helper()
	cgrouptest.Root(b)
	o.PinPath = filepath.Join(bpf.DefaultBPFFS, "aa-bench-"+randHex())
	o.Logger = discardLogger()
	g, err := bpf.Open(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.Teardown() })
	if g.Features().Status(bpf.CapNetwork) != bpf.Enforced {
		b.Skip("kernel cannot enforce network egress")
	}
	return g
}

// drain reads events in the background until the benchmark ends.
func drain(b *testing.B, g *bpf.Governor) *atomic.Uint64 {
	rd, err := g.Events()
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ev bpf.Event
		for rd.Read(&ev) == nil {
			n.Add(1)
		}
	}()
	b.Cleanup(func() { rd.Close(); <-done })
	return &n
}

// BenchmarkConnect measures connect() on a UDP socket (no handshake, so
// the syscall and the cgroup hook are all there is) and a full loopback
// TCP connect, from an ungoverned cgroup and from a governed one whose
// allowlist has 1 or 1000 entries. The difference is the kernel check's
// cost, including writing the verdict event.
func BenchmarkConnect(b *testing.B) {
	target := listenBench(b)
	udpDst := &unix.SockaddrInet4{Port: 53, Addr: [4]byte{127, 0, 0, 1}}
	tcpDst := &unix.SockaddrInet4{Port: target, Addr: [4]byte{127, 0, 0, 1}}
	for _, mode := range []struct {
		name    string
		entries int
	}{{"ungoverned", 0}, {"governed-1", 1}, {"governed-1000", 1000}} {
		b.Run(mode.name+"/udp-connect", func(b *testing.B) {
			leave := setupBench(b, mode.entries)
			defer leave()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			stats, err := bpf.EnableRunStats()
			if err != nil {
				b.Fatal(err)
			}
			defer stats.Close()
			before := hookStats(b)
			b.ResetTimer()
			for b.Loop() {
				if err := unix.Connect(fd, udpDst); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportHook(b, before, hookStats(b))
		})
		b.Run(mode.name+"/tcp-connect", func(b *testing.B) {
			leave := setupBench(b, mode.entries)
			defer leave()
			b.ResetTimer()
			for b.Loop() {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				if err := unix.Connect(fd, tcpDst); err != nil {
					b.Fatal(err)
				}
				unix.Close(fd)
			}
		})
	}
}

func listenBench(b *testing.B) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	go func() {
		for {
			nfd, _, err := unix.Accept(fd)
			if err != nil {
				return
			}
			unix.Close(nfd)
		}
	}()
	sa, _ := unix.Getsockname(fd)
	return sa.(*unix.SockaddrInet4).Port
}

// benchGov is the governor of the running sub-benchmark (nil when
// ungoverned), for the kernel's own accounting of the hook.
var benchGov *bpf.Governor

func hookStats(b *testing.B) bpf.ProgramStat {
	if benchGov == nil {
		return bpf.ProgramStat{}
	}
	st, err := benchGov.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	return st[bpf.ProgConnect4]
}

// reportHook reports the connect4 program's own run time per call, as
// the kernel accounts it: the cost of the check without the noise of the
// syscall around it.
func reportHook(b *testing.B, before, after bpf.ProgramStat) {
	if n := after.RunCount - before.RunCount; n > 0 {
		b.ReportMetric(float64((after.Runtime-before.Runtime).Nanoseconds())/float64(n), "hook-ns/op")
	}
}

// setupBench governs a fresh cgroup with n allowlist entries (127.0.0.1
// among them) and moves the benchmark into it; n == 0 leaves it out.
func setupBench(b *testing.B, n int) func() {
	benchGov = nil
	if n == 0 {
		cgrouptest.Root(b)
		return func() {}
	}
	g := openBench(b, bpf.Options{Limits: bpf.Limits{MaxDestinations: 1024}})
	benchGov = g
	if os.Getenv("AA_NODRAIN") == "" {
		drain(b, g)
	}
	dests := []bpf.Destination{{Prefix: netip.MustParsePrefix("127.0.0.1/32")}}
	for i := 1; i < n; i++ {
		dests = append(dests, bpf.Destination{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), Ports: []uint16{443}})
	}
	cg := cgrouptest.New(b, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1, Egress: dests}); err != nil {
		b.Fatal(err)
	}
	return enterCgroup(b, cg)
}

// BenchmarkEvents pushes denied sendmsg() verdicts through the ring
// buffer as fast as one thread can make them, with one reader draining,
// and reports events per second and drops.
func BenchmarkEvents(b *testing.B) {
	g := openBench(b, bpf.Options{})
	read := drain(b, g)
	cg := cgrouptest.New(b, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
		b.Fatal(err)
	}
	dst := &unix.SockaddrInet4{Port: 53, Addr: [4]byte{192, 0, 2, 1}}
	before, _ := g.Stats()
	startRead := read.Load()
	leave := enterCgroup(b, cg)
	// The socket must be created inside: cgroup hooks follow the socket's
	// cgroup, fixed when it is created.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if err := unix.Sendto(fd, []byte("x"), 0, dst); err != unix.EPERM {
			b.Fatalf("sendto: %v, want EPERM", err)
		}
	}
	b.StopTimer()
	leave()
	elapsed := time.Since(start)
	after, _ := g.Stats()
	produced := after.Events - before.Events
	// Let the reader finish what is queued (bounded wait, not an assertion).
	for deadline := time.Now().Add(10 * time.Second); read.Load()-startRead < produced && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(produced)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(after.Drops-before.Drops), "drops")
	b.ReportMetric(float64(read.Load()-startRead), "read")
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "events produced %d, read %d, dropped %d in %v\n", produced, read.Load()-startRead, after.Drops-before.Drops, elapsed)
	}
}

// BenchmarkReaderDrain measures how fast one EventReader empties a ring
// buffer the kernel filled while nobody read: the reader's capacity in
// events per second, independent of how fast agents can produce them.
// b.N counts events; the buffer is refilled (timer stopped) every 40,000.
func BenchmarkReaderDrain(b *testing.B) {
	g := openBench(b, bpf.Options{})
	cg := cgrouptest.New(b, "")
	if err := g.Govern(cg, bpf.AgentConfig{ID: 1}); err != nil {
		b.Fatal(err)
	}
	rd, err := g.Events()
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	const batch = 40000 // fits the 4 MiB ring buffer
	fill := func(n int) {
		b.StopTimer()
		defer b.StartTimer()
		leave := enterCgroup(b, cg)
		defer leave()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(fd)
		dst := &unix.SockaddrInet4{Port: 53, Addr: [4]byte{192, 0, 2, 1}}
		for range n {
			unix.Sendto(fd, []byte("x"), 0, dst)
		}
	}
	var ev bpf.Event
	left := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if left == 0 {
			left = min(batch, b.N-i)
			fill(left)
		}
		if err := rd.Read(&ev); err != nil {
			b.Fatal(err)
		}
		left--
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	st, _ := g.Stats()
	b.ReportMetric(float64(st.Drops), "drops")
}
