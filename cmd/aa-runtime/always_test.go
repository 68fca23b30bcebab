package main

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// TestExecAlwaysAllowsResolverAndGateway: with --ebpf enforce and an
// allowlist that names neither, the agent still reaches the DNS resolver
// on port 53 (UDP and TCP) and the gateway's port, because aa-runtime exec
// puts them in the kernel's always-allowed set; the same hosts on other
// ports, and another address on port 53, stay denied (EPERM).
func TestExecAlwaysAllowsResolverAndGateway(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp and /dev/udp")
	}
	bin := build(t, t.TempDir(), "github.com/agent-assembly/agent-assembly/cmd/aa-runtime")
	gw := servertest.Start(t, "../../runtime/testdata/policies", nil)
	_, gwPort, _ := net.SplitHostPort(gw)

	// A listener on the gateway's host that is not the gateway: reachable
	// from outside, and only a kernel deny makes the connect fail with EPERM.
	other, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go acceptAndClose(other)
	otherPort := other.Addr().(*net.TCPAddr).Port

	// The resolver: 127.0.0.77, given by --dns. A TCP listener on its port
	// 53 stands in for DNS over TCP.
	dnsTCP, err := net.Listen("tcp4", "127.0.0.77:53")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.77:53 for the stand-in resolver: %v", err)
	}
	defer dnsTCP.Close()
	go acceptAndClose(dnsTCP)

	script := `probe() { if out=$( (exec 3<>"$2") 2>&1 ); then echo "$1=ok"; else case "$out" in *"Operation not permitted"*) echo "$1=eperm";; *) echo "$1=error: $out";; esac; fi; }
probe dns-udp /dev/udp/127.0.0.77/53
probe dns-tcp /dev/tcp/127.0.0.77/53
probe gateway /dev/tcp/127.0.0.1/` + gwPort + `
probe other-udp /dev/udp/127.0.0.78/53
probe gateway-host-other-port /dev/tcp/127.0.0.1/` + strconv.Itoa(otherPort) + `
`
	pinsBefore := pinDirs(t)
	r := runExec(t, bin, gw, cgRoot, []string{"--ebpf", "enforce", "--egress", "192.0.2.1/32", "--dns", "127.0.0.77"}, "bash", "-c", script)
	if strings.Contains(r.log, "eBPF UNAVAILABLE") || strings.Contains(r.log, "eBPF attach FAILED") {
		t.Skipf("eBPF not available here:\n%s", r.log)
	}
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.log)
	}
	// The last ReportEvents (the flush after the agent exits) carries the
	// drop count read before the maps were closed.
	if strings.Contains(r.log, "eBPF counters unreadable") {
		t.Errorf("the drop counter was read after teardown:\n%s", r.log)
	}
	// A normal exit detaches and unpins: no pin directory is left behind.
	for p := range pinDirs(t) {
		if !pinsBefore[p] {
			t.Errorf("pin directory %s left after a normal exit", filepath.Join(execPinRoot, p))
		}
	}
	if !strings.Contains(r.log, "bpffs pinning\",\"status\":\"enforced") {
		t.Errorf("the runtime did not pin (the unpin check above proves nothing):\n%s", r.log)
	}
	for _, want := range []string{"dns-udp=ok", "dns-tcp=ok", "gateway=ok", "other-udp=eperm", "gateway-host-other-port=eperm"} {
		if !strings.Contains(r.out, want+"\n") {
			t.Errorf("want %q in the agent's output:\n%s\nstderr:\n%s", want, r.out, r.log)
		}
	}
}

// pinDirs lists the per-cgroup pin directories of aa-runtime exec.
func pinDirs(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	ents, err := os.ReadDir(execPinRoot)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// TestAlwaysAllowed: the gateway's address and port, each resolver on port
// 53 and the Envoy egress listener become always-allowed destinations;
// resolvers come from --dns, else from resolv.conf; bad input is refused.
func TestAlwaysAllowed(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(conf, []byte("# comment\nsearch example.test\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver  ::1 \noptions ndots:2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	envoy := netip.MustParseAddrPort("127.0.0.1:15001")
	got, err := alwaysAllowed("127.0.0.1:50051", nil, conf, envoy)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, d := range got {
		s = append(s, d.String())
	}
	want := "127.0.0.1/32 ports 50051|10.0.0.53/32 ports 53|fe80::1/128 ports 53|::1/128 ports 53|127.0.0.1/32 ports 15001"
	if strings.Join(s, "|") != want {
		t.Errorf("always-allowed:\n got %s\nwant %s", strings.Join(s, "|"), want)
	}

	got, err = alwaysAllowed("127.0.0.1:50051", []string{"192.0.2.53"}, conf, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].String() != "192.0.2.53/32 ports 53" {
		t.Errorf("--dns must replace resolv.conf: %v", got)
	}

	got, err = alwaysAllowed("127.0.0.1:50051, 127.0.0.2:50052", []string{"192.0.2.53"}, conf, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].String() != "127.0.0.1/32 ports 50051" || got[1].String() != "127.0.0.2/32 ports 50052" {
		t.Errorf("every gateway replica of the list must be allowed: %v", got)
	}

	for _, tc := range []struct {
		gateway, dns, conf, want string
	}{
		{"127.0.0.1", "", conf, `gateway address "127.0.0.1"`},
		{"127.0.0.1:50051,", "", conf, "entry 2 is empty"},
		{"127.0.0.1:50051", "not-an-ip", conf, `--dns "not-an-ip": not an IP address`},
		{"127.0.0.1:50051", "", filepath.Join(dir, "missing"), "read resolver configuration"},
		{"no-such-host.invalid:50051", "", conf, `resolve gateway host "no-such-host.invalid"`},
	} {
		var dns []string
		if tc.dns != "" {
			dns = []string{tc.dns}
		}
		_, err := alwaysAllowed(tc.gateway, dns, tc.conf, netip.AddrPort{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("alwaysAllowed(%q, %q, %q): %v, want an error containing %q", tc.gateway, tc.dns, tc.conf, err, tc.want)
		}
	}
}

// TestExecRefusesRulesOverCapacity: more --egress destinations than the
// kernel maps hold is refused (exit 2, naming the limit) before a cgroup is
// made or anything is loaded, and the agent never starts.
func TestExecRefusesRulesOverCapacity(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "agent-ran")
	args := []string{"--agent", "acme/eng/a1", "--gateway", "127.0.0.1:1", "--socket-dir", dir, "--buffer", filepath.Join(dir, "events.db"),
		"--cgroup-root", filepath.Join(dir, "no-cgroup-here"), "--ebpf", "enforce", "--dns", "127.0.0.53"}
	for i := range bpf.DefaultMaxDestinations + 1 {
		args = append(args, "--egress", netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}).String())
	}
	args = append(args, "--", "touch", ran)
	stderr := captureStderr(t, func() {
		if got := execCmd(args); got != 2 {
			t.Errorf("exit %d, want 2", got)
		}
	})
	if !strings.Contains(stderr, "destinations: 1025, over the kernel map capacity of 1024") {
		t.Errorf("stderr does not name the limit:\n%s", stderr)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Error("the agent ran")
	}
}
