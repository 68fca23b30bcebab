package egress_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/agent-assembly/agent-assembly/bpf"
	"github.com/agent-assembly/agent-assembly/bpf/egress"
)

// record is what the test server holds for one name.
type record struct {
	A, AAAA []string
	CNAME   string
	TTL     uint32
	// TruncUDP answers UDP with the truncated bit and no records, so only
	// TCP gives the answer.
	TruncUDP bool
	// WrongID answers with another id; Garbage with bytes that are not a
	// DNS message; Servfail with SERVFAIL; Silent not at all.
	WrongID, Garbage, Servfail, Silent bool
}

// dnsServer is a DNS server on a loopback UDP and TCP port, answering from
// zone as a recursive resolver would (CNAME chains expanded in the answer).
type dnsServer struct {
	addr netip.AddrPort
	mu   sync.Mutex
	zone map[string]record // by lower-case fully qualified name
	udp  map[string]int    // queries per name over UDP
	tcp  map[string]int
}

func startDNS(t testing.TB, zone map[string]record) *dnsServer {
	t.Helper()
	s := &dnsServer{zone: zone, udp: map[string]int{}, tcp: map[string]int{}}
	var pc net.PacketConn
	var l net.Listener
	for range 20 { // the TCP port must be the UDP one's: retry when taken
		var err error
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp4", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no loopback port free for both UDP and TCP")
	}
	t.Cleanup(func() { pc.Close(); l.Close() })
	s.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	go func() {
		b := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			if out := s.answer(b[:n], false); out != nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n [2]byte
				if _, err := io.ReadFull(c, n[:]); err != nil {
					return
				}
				b := make([]byte, binary.BigEndian.Uint16(n[:]))
				if _, err := io.ReadFull(c, b); err != nil {
					return
				}
				out := s.answer(b, true)
				if out == nil {
					return
				}
				binary.BigEndian.PutUint16(n[:], uint16(len(out)))
				c.Write(append(n[:], out...))
			}()
		}
	}()
	return s
}

func (s *dnsServer) set(name string, r record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zone[name] = r
}

func (s *dnsServer) count(name string, tcp bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tcp {
		return s.tcp[name]
	}
	return s.udp[name]
}

func (s *dnsServer) answer(b []byte, tcp bool) []byte {
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil || len(m.Questions) != 1 {
		return nil
	}
	q := m.Questions[0]
	name := strings.ToLower(q.Name.String())
	s.mu.Lock()
	defer s.mu.Unlock()
	if tcp {
		s.tcp[name]++
	} else {
		s.udp[name]++
	}
	resp := dnsmessage.Message{Header: dnsmessage.Header{ID: m.ID, Response: true, RecursionDesired: true, RecursionAvailable: true}, Questions: m.Questions}
	rec, ok := s.zone[name]
	switch {
	case rec.Silent:
		return nil
	case rec.Garbage:
		return []byte{byte(m.ID >> 8), byte(m.ID), 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 0xff, 0xfe, 0x01}
	case rec.WrongID:
		resp.ID++
	case rec.Servfail:
		resp.RCode = dnsmessage.RCodeServerFailure
	case !ok:
		resp.RCode = dnsmessage.RCodeNameError
	case rec.TruncUDP && !tcp:
		resp.Truncated = true
	default:
		cur := name
		for hop := 0; hop < 20; hop++ {
			r, ok := s.zone[cur]
			if !ok {
				break
			}
			hdr := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(cur), Class: dnsmessage.ClassINET, TTL: r.TTL}
			if r.CNAME != "" {
				resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(r.CNAME)}})
				cur = r.CNAME
				continue
			}
			list := r.A
			if q.Type == dnsmessage.TypeAAAA {
				list = r.AAAA
			}
			for _, a := range list {
				ip := netip.MustParseAddr(a)
				if q.Type == dnsmessage.TypeA {
					resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AResource{A: ip.As4()}})
				} else {
					resp.Answers = append(resp.Answers, dnsmessage.Resource{Header: hdr, Body: &dnsmessage.AAAAResource{AAAA: ip.As16()}})
				}
			}
			break
		}
	}
	out, err := resp.Pack()
	if err != nil {
		panic(err)
	}
	return out
}

// newResolver returns a DNSResolver asking servers, with an empty hosts
// file and short timeouts (a dead server costs 300 ms).
func newResolver(t testing.TB, cfg egress.DNSConfig, servers ...netip.AddrPort) *egress.DNSResolver {
	t.Helper()
	if cfg.HostsFile == "" {
		cfg.HostsFile = filepath.Join(t.TempDir(), "hosts")
		if err := os.WriteFile(cfg.HostsFile, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Servers = servers
	if cfg.Timeout == 0 {
		cfg.Timeout = 300 * time.Millisecond
	}
	r, err := egress.NewDNSResolver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func addrStrings(as []netip.Addr) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

// TestDNSResolverAnswers: A and AAAA together, CNAME chains, truncation
// forcing TCP, and the TTL reported as the smallest along the chain,
// raised to the floor and lowered to the ceiling.
func TestDNSResolverAnswers(t *testing.T) {
	big := record{TTL: 90, TruncUDP: true}
	for i := range 40 {
		big.A = append(big.A, netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)}).String())
	}
	srv := startDNS(t, map[string]record{
		"dual.test.":   {A: []string{"203.0.113.5", "203.0.113.6"}, AAAA: []string{"2001:db8::5"}, TTL: 300},
		"v6only.test.": {AAAA: []string{"2001:db8::6"}, TTL: 120},
		"www.test.":    {CNAME: "edge.test.", TTL: 60},
		"edge.test.":   {CNAME: "origin.test.", TTL: 600},
		"origin.test.": {A: []string{"192.0.2.10"}, TTL: 300},
		"big.test.":    big,
		"zero.test.":   {A: []string{"192.0.2.20"}, TTL: 0},
		"huge.test.":   {A: []string{"192.0.2.21"}, TTL: 7 * 24 * 3600},
		"loop1.test.":  {CNAME: "loop2.test.", TTL: 60},
		"loop2.test.":  {CNAME: "loop1.test.", TTL: 60},
	})
	r := newResolver(t, egress.DNSConfig{}, srv.addr)
	for _, c := range []struct {
		host string
		want []string
		ttl  time.Duration
	}{
		{"dual.test", []string{"2001:db8::5", "203.0.113.5", "203.0.113.6"}, 300 * time.Second},
		{"DUAL.test.", []string{"2001:db8::5", "203.0.113.5", "203.0.113.6"}, 300 * time.Second},
		{"v6only.test", []string{"2001:db8::6"}, 120 * time.Second},
		{"www.test", []string{"192.0.2.10"}, 60 * time.Second}, // the first CNAME's TTL is the smallest
		{"edge.test", []string{"192.0.2.10"}, 300 * time.Second},
		{"big.test", big.A, 90 * time.Second},
		{"zero.test", []string{"192.0.2.20"}, egress.DefaultMinTTL},
		{"huge.test", []string{"192.0.2.21"}, egress.DefaultMaxTTL},
	} {
		got, ttl, err := r.Resolve(context.Background(), c.host)
		if err != nil {
			t.Errorf("Resolve(%s): %v", c.host, err)
			continue
		}
		want := slices.Clone(c.want)
		slices.Sort(want)
		if !slices.Equal(addrStrings(got), want) || ttl != c.ttl {
			t.Errorf("Resolve(%s) = %v, %v; want %v, %v", c.host, addrStrings(got), ttl, want, c.ttl)
		}
	}
	if srv.count("big.test.", true) == 0 || srv.count("dual.test.", true) != 0 {
		t.Errorf("TCP queries: big.test %d (want > 0 after truncation), dual.test %d (want 0)", srv.count("big.test.", true), srv.count("dual.test.", true))
	}
	if _, _, err := r.Resolve(context.Background(), "loop1.test"); err == nil || !strings.Contains(err.Error(), "CNAME chain from loop1.test. longer than") {
		t.Errorf("CNAME loop: %v, want an error naming the chain", err)
	}
}

// TestDNSResolverNotFound: NXDOMAIN and a name without addresses are
// errors naming the host, matching ErrNotFound; bad names are refused
// before any query.
func TestDNSResolverNotFound(t *testing.T) {
	srv := startDNS(t, map[string]record{"empty.test.": {TTL: 60}, "dangling.test.": {CNAME: "ghost.test.", TTL: 60}})
	r := newResolver(t, egress.DNSConfig{}, srv.addr)
	for host, want := range map[string]string{
		"ghost.test":    "resolve ghost.test: host not found: ghost.test. does not exist (NXDOMAIN from " + srv.addr.String() + ")",
		"empty.test":    "resolve empty.test: host not found: empty.test. has no A or AAAA record (answer from " + srv.addr.String() + ")",
		"dangling.test": "resolve dangling.test: host not found: dangling.test. has no A or AAAA record",
	} {
		_, _, err := r.Resolve(context.Background(), host)
		if !errors.Is(err, egress.ErrNotFound) || !strings.Contains(err.Error(), want) {
			t.Errorf("Resolve(%s) = %v, want ErrNotFound with %q", host, err, want)
		}
	}
	for host, want := range map[string]string{
		"":                          `"" is not a host name`,
		"a..b":                      `"a..b" is not a host name (a label is empty`,
		"bad host":                  `character ' '`,
		strings.Repeat("x", 64):     "over 63",
		strings.Repeat("x.", 130):   "over 253",
		"under_score-ok.test.nope!": `character '!'`,
	} {
		if _, _, err := r.Resolve(context.Background(), host); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Resolve(%q) = %v, want an error containing %q", host, err, want)
		}
	}
	srv.mu.Lock()
	asked := len(srv.udp)
	srv.mu.Unlock()
	if asked != 3 { // ghost, empty, dangling
		t.Errorf("names asked over UDP: %d, want 3 (bad names never reach the server)", asked)
	}
}

// TestDNSResolverRefusesBadAnswers: an answer with another id, and bytes
// that are not a DNS message, are not taken; the error names why.
func TestDNSResolverRefusesBadAnswers(t *testing.T) {
	srv := startDNS(t, map[string]record{
		"wrongid.test.": {A: []string{"192.0.2.1"}, TTL: 60, WrongID: true},
		"garbled.test.": {TTL: 60, Garbage: true},
	})
	r := newResolver(t, egress.DNSConfig{Attempts: 1}, srv.addr)
	for host, want := range map[string]string{
		"wrongid.test": "does not match the query id",
		"garbled.test": "malformed answer (15 bytes)",
	} {
		addrs, _, err := r.Resolve(context.Background(), host)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "resolve "+host) || errors.Is(err, egress.ErrNotFound) {
			t.Errorf("Resolve(%s) = %v, %v; want an error naming the host and containing %q", host, addrs, err, want)
		}
	}
}

// TestDNSResolverRetriesServers: a server that does not answer, and one
// that answers SERVFAIL, are passed over for the next.
func TestDNSResolverRetriesServers(t *testing.T) {
	dead, err := net.ListenPacket("udp4", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	failing := startDNS(t, map[string]record{"svc.test.": {Servfail: true}})
	good := startDNS(t, map[string]record{"svc.test.": {A: []string{"192.0.2.30"}, TTL: 45}})
	r := newResolver(t, egress.DNSConfig{Attempts: 1}, dead.LocalAddr().(*net.UDPAddr).AddrPort(), failing.addr, good.addr)
	addrs, ttl, err := r.Resolve(context.Background(), "svc.test")
	if err != nil || !slices.Equal(addrStrings(addrs), []string{"192.0.2.30"}) || ttl != 45*time.Second {
		t.Fatalf("Resolve = %v, %v, %v", addrs, ttl, err)
	}
	if failing.count("svc.test.", false) == 0 {
		t.Errorf("the SERVFAIL server was never asked")
	}
	// Only failing servers: the error says what the last one answered.
	r = newResolver(t, egress.DNSConfig{Attempts: 2}, failing.addr)
	if _, _, err := r.Resolve(context.Background(), "svc.test"); err == nil || !strings.Contains(err.Error(), "no usable answer from 1 server(s) in 2 attempt(s), last: server "+failing.addr.String()+" answered SERVFAIL") {
		t.Errorf("all servers failing: %v", err)
	}
	// A cancelled context ends the wait on a silent server.
	r = newResolver(t, egress.DNSConfig{Timeout: time.Hour}, dead.LocalAddr().(*net.UDPAddr).AddrPort())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, _, err := r.Resolve(ctx, "svc.test"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

// TestDNSResolverLocal: IP literals and hosts file entries are answered
// without a query, with LocalTTL; the search list completes single-label
// names.
func TestDNSResolverLocal(t *testing.T) {
	srv := startDNS(t, map[string]record{
		"svc.corp.test.": {A: []string{"192.0.2.40"}, TTL: 30},
		"a.b.test.":      {A: []string{"192.0.2.41"}, TTL: 30},
	})
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n192.0.2.50 Build.Internal alias\nnot-an-ip x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, egress.DNSConfig{HostsFile: hosts, Search: []string{"corp.test"}, Ndots: 1, LocalTTL: 42 * time.Second}, srv.addr)
	for host, want := range map[string][]string{
		"localhost":       {"127.0.0.1", "::1"},
		"build.internal.": {"192.0.2.50"},
		"alias":           {"192.0.2.50"},
		"192.0.2.60":      {"192.0.2.60"},
		"fe80::1%eth0":    {"fe80::1"},
	} {
		got, ttl, err := r.Resolve(context.Background(), host)
		if err != nil || !slices.Equal(addrStrings(got), want) || ttl != 42*time.Second {
			t.Errorf("Resolve(%s) = %v, %v, %v; want %v, 42s", host, addrStrings(got), ttl, err, want)
		}
	}
	got, ttl, err := r.Resolve(context.Background(), "svc")
	if err != nil || !slices.Equal(addrStrings(got), []string{"192.0.2.40"}) || ttl != 30*time.Second {
		t.Errorf("Resolve(svc) with search corp.test = %v, %v, %v", got, ttl, err)
	}
	// A name with a dot is tried as given first (ndots 1), then searched.
	if got, _, err := r.Resolve(context.Background(), "a.b.test"); err != nil || len(got) != 1 || srv.count("a.b.test.corp.test.", false) != 0 {
		t.Errorf("Resolve(a.b.test) = %v, %v; searched %d times", got, err, srv.count("a.b.test.corp.test.", false))
	}
	if srv.count("localhost.", false)+srv.count("localhost.corp.test.", false) != 0 {
		t.Errorf("a hosts file name was asked of DNS")
	}
	// Without servers only local answers work, and the error says why.
	r = newResolver(t, egress.DNSConfig{HostsFile: hosts})
	if _, _, err := r.Resolve(context.Background(), "svc"); err == nil || !strings.Contains(err.Error(), "no nameservers configured and no entry in "+hosts) {
		t.Errorf("no servers: %v", err)
	}
}

// TestReadResolvConf reads nameservers, search and options, and refuses a
// nameserver that is not an address.
func TestReadResolvConf(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(conf, []byte("# generated\ndomain old.test\nsearch corp.test. eng.corp.test\nnameserver 10.0.0.53\nnameserver 2001:db8::53 ; v6\noptions ndots:2 timeout:1 attempts:3 rotate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := egress.ReadResolvConf(conf)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.53:53"), netip.MustParseAddrPort("[2001:db8::53]:53")}
	if !slices.Equal(cfg.Servers, want) || !slices.Equal(cfg.Search, []string{"corp.test", "eng.corp.test"}) || cfg.Ndots != 2 || cfg.Timeout != time.Second || cfg.Attempts != 3 {
		t.Errorf("ReadResolvConf = %+v", cfg)
	}
	for body, wantErr := range map[string]string{
		"nameserver dns.example\n": `resolv.conf:1: nameserver "dns.example" is not an IP address`,
		"\noptions ndots:x\n":      `resolv.conf:2: options ndots: "x" is not a count`,
	} {
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := egress.ReadResolvConf(conf); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ReadResolvConf(%q) = %v, want %q", body, err, wantErr)
		}
	}
	if _, err := egress.ReadResolvConf(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "read resolver configuration") {
		t.Errorf("missing file: %v", err)
	}
	for _, c := range []struct {
		cfg  egress.DNSConfig
		want string
	}{
		{egress.DNSConfig{MinTTL: time.Hour, MaxTTL: time.Minute}, "minimum TTL 1h0m0s is above the maximum TTL 1m0s"},
		{egress.DNSConfig{Timeout: -time.Second}, "timeout -1s is negative"},
		{egress.DNSConfig{Servers: []netip.AddrPort{{}}}, "nameserver 1 has no address"},
		{egress.DNSConfig{Search: []string{"bad domain"}}, "search domain"},
	} {
		if _, err := egress.NewDNSResolver(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewDNSResolver(%+v) = %v, want %q", c.cfg, err, c.want)
		}
	}
}

// TestAgentFollowsDNSTTL: an Agent resolving through DNSResolver keeps an
// answer for its TTL (no query, no kernel update) and follows a changed
// answer once the TTL has run out; a shorter TTL in the new answer brings
// the next refresh closer.
func TestAgentFollowsDNSTTL(t *testing.T) {
	srv := startDNS(t, map[string]record{"api.test.": {A: []string{"203.0.113.1"}, TTL: 30}})
	r := newResolver(t, egress.DNSConfig{}, srv.addr)
	gov := &fakeGov{}
	now := time.Unix(5000, 0)
	a := egress.NewAgent(gov, "/cg", egress.Config{Resolver: r, Now: func() time.Time { return now }})
	plan := egress.Plan{Network: bpf.NetworkDeny, Sets: [][]egress.Entry{{{Source: "p/network.allowlist[0]", Host: "api.test", Ports: []uint16{443}}}}}
	if err := a.Apply(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	if got := destStrings(gov.last().Egress); !slices.Equal(got, []string{"203.0.113.1/32 ports 443"}) {
		t.Fatalf("egress = %q", got)
	}
	if next := a.NextRefresh(); !next.Equal(now.Add(30 * time.Second)) {
		t.Errorf("next refresh %v, want the record's TTL (30s) from now", next.Sub(now))
	}
	srv.set("api.test.", record{A: []string{"203.0.113.2"}, TTL: 7})
	queries := srv.count("api.test.", false)

	now = now.Add(29 * time.Second)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if srv.count("api.test.", false) != queries || len(gov.cfgs) != 1 {
		t.Errorf("before the TTL ran out: %d queries, %d kernel updates", srv.count("api.test.", false)-queries, len(gov.cfgs)-1)
	}
	now = now.Add(2 * time.Second)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := destStrings(gov.last().Egress); !slices.Equal(got, []string{"203.0.113.2/32 ports 443"}) {
		t.Errorf("after the TTL: egress = %q, want the new address only", got)
	}
	if next := a.NextRefresh(); !next.Equal(now.Add(7 * time.Second)) {
		t.Errorf("next refresh %v after the change, want the new TTL (7s)", next.Sub(now))
	}
	res := a.Resolved()
	if len(res) != 1 || !slices.Equal(addrStrings(res[0].Addrs), []string{"203.0.113.2"}) || res[0].Err != nil {
		t.Errorf("resolved = %+v", res)
	}
	// The name disappears: no address, the error recorded, fail closed.
	srv.mu.Lock()
	delete(srv.zone, "api.test.")
	srv.mu.Unlock()
	now = now.Add(8 * time.Second)
	if err := a.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := gov.last().Egress; len(got) != 0 {
		t.Errorf("after NXDOMAIN: egress = %q, want none", destStrings(got))
	}
	if res := a.Resolved(); !errors.Is(res[0].Err, egress.ErrNotFound) {
		t.Errorf("resolution error = %v, want ErrNotFound", res[0].Err)
	}
}

// blockingDNS answers only when release is closed, and says when it was
// asked.
type blockingDNS struct {
	asked   chan string
	release chan struct{}
}

func (d blockingDNS) Resolve(_ context.Context, host string) ([]netip.Addr, time.Duration, error) {
	d.asked <- host
	<-d.release
	return addrs("192.0.2.99"), time.Minute, nil
}

// TestAgentReadsDuringResolution: while a refresh waits on DNS, Resolved,
// RuleFor and NextRefresh (asked for every kernel event) answer from the
// current state instead of waiting.
func TestAgentReadsDuringResolution(t *testing.T) {
	dns := blockingDNS{asked: make(chan string, 1), release: make(chan struct{})}
	gov := &fakeGov{}
	now := time.Unix(5000, 0)
	a := egress.NewAgent(gov, "/cg", egress.Config{Resolver: dns, Now: func() time.Time { return now }})
	plan := egress.Plan{Network: bpf.NetworkDeny, Sets: [][]egress.Entry{{{Source: "p/network.allowlist[0]", Host: "slow.test"}}}}
	done := make(chan error, 1)
	go func() { done <- a.Apply(context.Background(), plan) }()
	<-dns.asked
	// Each read returns while the resolver is blocked (a deadlock would
	// hang here until the test binary's timeout).
	if res := a.Resolved(); len(res) != 0 {
		t.Errorf("resolved before the answer: %+v", res)
	}
	if _, ok := a.RuleFor(1); ok {
		t.Errorf("a rule before the first apply")
	}
	if next := a.NextRefresh(); !next.IsZero() {
		t.Errorf("next refresh before any answer: %v", next)
	}
	close(dns.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := destStrings(gov.last().Egress); !slices.Equal(got, []string{"192.0.2.99/32"}) {
		t.Errorf("egress = %q", got)
	}
	if r, ok := a.RuleFor(1); !ok || r.Host != "slow.test" {
		t.Errorf("RuleFor(1) = %+v, %v", r, ok)
	}
}

// BenchmarkDNSResolver measures one resolution (A and AAAA in parallel over
// loopback UDP, CNAME chain of two) against the test server.
func BenchmarkDNSResolver(b *testing.B) {
	srv := startDNS(b, map[string]record{
		"www.test.":    {CNAME: "origin.test.", TTL: 60},
		"origin.test.": {A: []string{"192.0.2.10"}, AAAA: []string{"2001:db8::10"}, TTL: 300},
	})
	r := newResolver(b, egress.DNSConfig{}, srv.addr)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := r.Resolve(context.Background(), "www.test"); err != nil {
			b.Fatal(err)
		}
	}
}
