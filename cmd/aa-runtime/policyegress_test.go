package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// TestDNSResolverFromFlags: --dns replaces resolv.conf's nameservers (port
// 53) and keeps its search list; without --dns resolv.conf is required;
// bad input is refused.
func TestDNSResolverFromFlags(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(conf, []byte("search corp.test\nnameserver 10.0.0.53\noptions ndots:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := dnsResolver(nil, conf)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := r.Config(); !slices.Equal(cfg.Servers, []netip.AddrPort{netip.MustParseAddrPort("10.0.0.53:53")}) || !slices.Equal(cfg.Search, []string{"corp.test"}) || cfg.Ndots != 2 {
		t.Errorf("from resolv.conf: %+v", cfg)
	}
	r, err = dnsResolver([]string{"127.0.0.77", "::1"}, conf)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := r.Config(); !slices.Equal(cfg.Servers, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.77:53"), netip.MustParseAddrPort("[::1]:53")}) || !slices.Equal(cfg.Search, []string{"corp.test"}) {
		t.Errorf("--dns must replace the nameservers only: %+v", cfg)
	}
	if r, err := dnsResolver([]string{"127.0.0.77"}, filepath.Join(dir, "missing")); err != nil || len(r.Config().Servers) != 1 {
		t.Errorf("--dns without resolv.conf: %v", err)
	}
	for _, c := range []struct {
		dns  []string
		conf string
		want string
	}{
		{[]string{"dns.example"}, conf, `--dns "dns.example": not an IP address`},
		{nil, filepath.Join(dir, "missing"), "resolver of allowlist hosts: read resolver configuration"},
	} {
		if _, err := dnsResolver(c.dns, c.conf); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("dnsResolver(%q, %s) = %v, want %q", c.dns, c.conf, err, c.want)
		}
	}
}

// ttlDNS answers A queries for one name with an address tests change, TTL
// 1 s (raised to the 5 s floor by the resolver), and no AAAA record.
type ttlDNS struct {
	name    string
	mu      sync.Mutex
	addr    netip.Addr
	queries int
}

func (d *ttlDNS) set(a netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addr = a
}

func (d *ttlDNS) serve(pc net.PacketConn) {
	b := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(b)
		if err != nil {
			return
		}
		var m dnsmessage.Message
		if m.Unpack(b[:n]) != nil || len(m.Questions) != 1 {
			continue
		}
		q := m.Questions[0]
		resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, RecursionAvailable: true}, Questions: m.Questions}
		d.mu.Lock()
		switch {
		case !strings.EqualFold(q.Name.String(), d.name):
			resp.RCode = dnsmessage.RCodeNameError
		case q.Type == dnsmessage.TypeA:
			d.queries++
			resp.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}, Body: &dnsmessage.AResource{A: d.addr.As4()}}}
		}
		d.mu.Unlock()
		out, err := resp.Pack()
		if err == nil {
			pc.WriteTo(out, from)
		}
	}
}

// TestExecFollowsDNSTTL runs the product path: the agent's policy allows
// one host name, resolved by a DNS server given with --dns; the agent's
// connects to the address it names work. The name then moves to another
// address: once the record's TTL (1 s, raised to the 5 s floor) runs out,
// aa-runtime re-resolves and the kernel refuses the same process's next
// connect to the old address (EPERM), without a policy change.
func TestExecFollowsDNSTTL(t *testing.T) {
	cgRoot := needCgroups(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("needs bash for /dev/tcp")
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.78:53")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.78:53 for the test's DNS server: %v", err)
	}
	defer pc.Close()
	dns := &ttlDNS{name: "svc.ttl.test.", addr: netip.MustParseAddr("127.0.0.1")}
	go dns.serve(pc)
	bin, gw, _, port := kernelRig(t, func(port int) string {
		return strings.Replace(fmt.Sprintf(agentPolicy, port), "host: localhost", "host: svc.ttl.test", 1)
	})

	agent, okPID := startProbingAgent(t, bin, gw, cgRoot, port, "--dns", "127.0.0.78", "--log-level", "debug")
	dns.set(netip.MustParseAddr("127.0.0.2"))
	refusedPID, err := agent.waitRefused()
	if err != nil || refusedPID != okPID {
		t.Fatalf("the agent (pid %s) was not refused after the name moved (%q): %v\nstderr:\n%s", okPID, refusedPID, err, agent.stderr.String())
	}
	log := agent.stderr.String()
	for _, want := range []string{"refreshed on their records' TTL", `"nameservers":["127.0.0.78:53"]`, `"host":"svc.ttl.test","addrs":["127.0.0.1"],"ttl":"5s"`, `"host":"svc.ttl.test","addrs":["127.0.0.2"],"ttl":"5s"`} {
		if !strings.Contains(log, want) {
			t.Errorf("the runtime's log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "kernel rules follow the new policy") {
		t.Errorf("the policy changed; the test wants the DNS answer alone to move the rules:\n%s", log)
	}
	dns.mu.Lock()
	defer dns.mu.Unlock()
	if dns.queries < 2 {
		t.Errorf("DNS asked %d times for svc.ttl.test, want a re-resolution", dns.queries)
	}
}
