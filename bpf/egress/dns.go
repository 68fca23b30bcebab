package egress

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Defaults of DNSConfig.
const (
	// DefaultMinTTL is the shortest time an answer is kept: a record TTL of
	// 0 (or 1) would otherwise make the refresh loop query without pause.
	DefaultMinTTL = 5 * time.Second
	// DefaultMaxTTL is the longest time an answer is kept: a record with a
	// TTL of days would otherwise keep an address the name has left.
	DefaultMaxTTL = time.Hour
	// DefaultLocalTTL is how long an IP literal or a hosts file entry is
	// kept: the hosts file is re-read when it runs out.
	DefaultLocalTTL = time.Minute
	// DefaultDNSTimeout is how long one query waits for one server.
	DefaultDNSTimeout = 5 * time.Second
	// DefaultDNSAttempts is how many rounds over the servers one query makes.
	DefaultDNSAttempts = 2
	// DefaultHostsFile is the hosts(5) file answered before DNS.
	DefaultHostsFile = "/etc/hosts"
)

// ErrNotFound is matched (errors.Is) by a resolution error meaning the host
// has no address: NXDOMAIN, or no A or AAAA record.
var ErrNotFound = errors.New("host not found")

// maxCNAMEHops bounds a CNAME chain followed inside one answer.
const maxCNAMEHops = 16

// ednsUDPSize is the UDP payload size announced with EDNS(0): the size
// that avoids IP fragmentation on common paths (DNS flag day 2020).
const ednsUDPSize = 1232

// DNSConfig configures a DNSResolver. ReadResolvConf fills it from a
// resolv.conf(5) file; zero durations and counts take the defaults named on
// each field.
type DNSConfig struct {
	// Servers are the nameservers, asked in order; a zero port is 53.
	Servers []netip.AddrPort
	// Search lists the domains appended to a name that does not end in a
	// dot: before the name is tried as given when it has fewer than Ndots
	// dots, after it otherwise (the resolv.conf(5) rule).
	Search []string
	// Ndots is the dot count from which a name is tried as given first.
	// ReadResolvConf sets it (1 unless "options ndots:n"); the zero value
	// tries every name as given first.
	Ndots int
	// Timeout is how long one query waits for one server (DefaultDNSTimeout).
	Timeout time.Duration
	// Attempts is how many rounds over Servers one query makes
	// (DefaultDNSAttempts).
	Attempts int
	// HostsFile is read on every resolution, before DNS is asked
	// (DefaultHostsFile when empty; a missing file has no entries).
	HostsFile string
	// MinTTL and MaxTTL bound the TTL reported for a DNS answer
	// (DefaultMinTTL, DefaultMaxTTL).
	MinTTL, MaxTTL time.Duration
	// LocalTTL is the TTL reported for an IP literal or a hosts file entry
	// (DefaultLocalTTL).
	LocalTTL time.Duration
}

// ReadResolvConf reads the nameserver, search, domain and "options ndots:n
// timeout:n attempts:n" lines of a resolv.conf(5) file; other options are
// ignored. Without a search or domain line the search list is empty (the
// host's own domain is not derived from its name).
func ReadResolvConf(path string) (DNSConfig, error) {
	cfg := DNSConfig{Ndots: 1}
	f, err := os.Open(path)
	if err != nil {
		return cfg, fmt.Errorf("read resolver configuration: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line, _, _ = strings.Cut(line, ";")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			a, err := netip.ParseAddr(fields[1])
			if err != nil {
				return cfg, fmt.Errorf("%s:%d: nameserver %q is not an IP address", path, n, fields[1])
			}
			cfg.Servers = append(cfg.Servers, netip.AddrPortFrom(a, 53))
		case "search":
			cfg.Search = trimDots(fields[1:])
		case "domain":
			cfg.Search = trimDots(fields[1:2])
		case "options":
			for _, o := range fields[1:] {
				k, v, ok := strings.Cut(o, ":")
				if !ok {
					continue
				}
				i, err := strconv.Atoi(v)
				if err != nil || i < 0 {
					return cfg, fmt.Errorf("%s:%d: options %s: %q is not a count", path, n, k, v)
				}
				switch k {
				case "ndots":
					cfg.Ndots = min(i, 15)
				case "timeout":
					cfg.Timeout = time.Duration(min(i, 30)) * time.Second
				case "attempts":
					cfg.Attempts = min(i, 5)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return cfg, fmt.Errorf("read resolver configuration %s: %w", path, err)
	}
	return cfg, nil
}

func trimDots(ds []string) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		if d = strings.Trim(d, "."); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// DNSResolver resolves host names with its own DNS queries so that it can
// report how long the answer holds: the smallest TTL of the records used
// (CNAMEs and addresses), bounded by MinTTL and MaxTTL. IP literals and
// hosts file entries are answered locally with LocalTTL. Queries go over
// UDP with a random 16-bit id (an answer with another id, or for another
// question, is not taken), over TCP when the UDP answer is truncated, to
// each server in turn until one answers. nsswitch.conf is not read: the
// hosts file, then DNS.
type DNSResolver struct {
	cfg DNSConfig
}

var _ Resolver = (*DNSResolver)(nil)

// NewDNSResolver checks cfg, fills its defaults and returns the resolver.
// A resolver without servers answers IP literals and hosts file entries
// only; other names fail with an error saying so.
func NewDNSResolver(cfg DNSConfig) (*DNSResolver, error) {
	def := func(d *time.Duration, v time.Duration, name string) error {
		if *d < 0 {
			return fmt.Errorf("dns config: %s %v is negative", name, *d)
		}
		if *d == 0 {
			*d = v
		}
		return nil
	}
	for _, f := range []struct {
		d    *time.Duration
		v    time.Duration
		name string
	}{{&cfg.Timeout, DefaultDNSTimeout, "timeout"}, {&cfg.MinTTL, DefaultMinTTL, "minimum TTL"}, {&cfg.MaxTTL, DefaultMaxTTL, "maximum TTL"}, {&cfg.LocalTTL, DefaultLocalTTL, "local TTL"}} {
		if err := def(f.d, f.v, f.name); err != nil {
			return nil, err
		}
	}
	if cfg.MinTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("dns config: minimum TTL %v is above the maximum TTL %v", cfg.MinTTL, cfg.MaxTTL)
	}
	if cfg.Attempts < 0 || cfg.Ndots < 0 {
		return nil, fmt.Errorf("dns config: attempts %d and ndots %d must not be negative", cfg.Attempts, cfg.Ndots)
	}
	if cfg.Attempts == 0 {
		cfg.Attempts = DefaultDNSAttempts
	}
	if cfg.HostsFile == "" {
		cfg.HostsFile = DefaultHostsFile
	}
	servers := make([]netip.AddrPort, len(cfg.Servers))
	for i, s := range cfg.Servers {
		if !s.Addr().IsValid() {
			return nil, fmt.Errorf("dns config: nameserver %d has no address", i+1)
		}
		if s.Port() == 0 {
			s = netip.AddrPortFrom(s.Addr(), 53)
		}
		servers[i] = s
	}
	cfg.Servers = servers
	for _, d := range cfg.Search {
		if err := checkName(d); err != nil {
			return nil, fmt.Errorf("dns config: search domain: %w", err)
		}
	}
	cfg.Search = append([]string(nil), cfg.Search...)
	return &DNSResolver{cfg: cfg}, nil
}

// Config returns the resolver's configuration with its defaults filled.
func (r *DNSResolver) Config() DNSConfig { return r.cfg }

// Resolve implements Resolver: the addresses of host and how long they
// hold. An error wraps ErrNotFound when the host does not exist or has no
// address.
func (r *DNSResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.WithZone("")}, r.cfg.LocalTTL, nil
	}
	if err := checkName(host); err != nil {
		return nil, 0, fmt.Errorf("resolve %q: %w", host, err)
	}
	addrs, err := hostsEntry(r.cfg.HostsFile, host)
	if err != nil {
		return nil, 0, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(addrs) > 0 {
		return addrs, r.cfg.LocalTTL, nil
	}
	if len(r.cfg.Servers) == 0 {
		return nil, 0, fmt.Errorf("resolve %s: no nameservers configured and no entry in %s", host, r.cfg.HostsFile)
	}
	var notFound error
	for _, name := range r.candidates(host) {
		addrs, ttl, err := r.lookup(ctx, name)
		if err == nil {
			return addrs, min(max(ttl, r.cfg.MinTTL), r.cfg.MaxTTL), nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, 0, fmt.Errorf("resolve %s: %w", host, err)
		}
		if notFound == nil {
			notFound = err
		}
	}
	return nil, 0, fmt.Errorf("resolve %s: %w", host, notFound)
}

// candidates lists the fully qualified names tried for host, in order.
func (r *DNSResolver) candidates(host string) []string {
	if strings.HasSuffix(host, ".") {
		return []string{host}
	}
	var searched []string
	for _, d := range r.cfg.Search {
		searched = append(searched, host+"."+d+".")
	}
	if strings.Count(host, ".") >= r.cfg.Ndots {
		return append([]string{host + "."}, searched...)
	}
	return append(searched, host+".")
}

// checkName refuses what cannot be a DNS name: empty labels, labels over
// 63 bytes, names over 253, characters other than letters, digits, '-'
// and '_'.
func checkName(host string) error {
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > 253 {
		return fmt.Errorf("%q is not a host name (empty or over 253 characters)", host)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("%q is not a host name (a label is empty or over 63 characters)", host)
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%q is not a host name (character %q)", host, c)
			}
		}
	}
	return nil
}

// hostsEntry returns the addresses a hosts(5) file gives host (matched
// without case and trailing dot, against names and aliases).
func hostsEntry(path, host string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read hosts file: %w", err)
	}
	defer f.Close()
	host = strings.TrimSuffix(host, ".")
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		a, err := netip.ParseAddr(fields[0])
		if err != nil {
			continue // hosts(5) lines that are not addresses are skipped, as the C library does
		}
		for _, n := range fields[1:] {
			if strings.EqualFold(strings.TrimSuffix(n, "."), host) {
				out = append(out, a.WithZone(""))
				break
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read hosts file %s: %w", path, err)
	}
	return out, nil
}

// lookup asks for the A and AAAA records of the fully qualified name, in
// parallel; the TTL is the smaller of the two answers'.
func (r *DNSResolver) lookup(ctx context.Context, name string) ([]netip.Addr, time.Duration, error) {
	type result struct {
		addrs []netip.Addr
		ttl   uint32
		from  netip.AddrPort
		err   error
	}
	var res [2]result
	var wg sync.WaitGroup
	for i, t := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
		wg.Go(func() {
			res[i].addrs, res[i].ttl, res[i].from, res[i].err = r.query(ctx, name, t)
		})
	}
	wg.Wait()
	var addrs []netip.Addr
	ttl := uint32(math.MaxUint32)
	var notFound error
	for _, x := range res {
		switch {
		case x.err == nil:
			if len(x.addrs) > 0 {
				addrs = append(addrs, x.addrs...)
				ttl = min(ttl, x.ttl)
			}
		case errors.Is(x.err, ErrNotFound):
			notFound = x.err
		default:
			return nil, 0, x.err
		}
	}
	if len(addrs) > 0 {
		return addrs, time.Duration(ttl) * time.Second, nil
	}
	if notFound != nil {
		return nil, 0, notFound
	}
	return nil, 0, fmt.Errorf("%w: %s has no A or AAAA record (answer from %s)", ErrNotFound, name, res[0].from)
}

// query asks the servers in turn for one record type, Attempts rounds,
// until one gives an answer: the addresses (none when the name has no
// record of the type), their TTL and the server that answered.
func (r *DNSResolver) query(ctx context.Context, name string, t dnsmessage.Type) ([]netip.Addr, uint32, netip.AddrPort, error) {
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, 0, netip.AddrPort{}, fmt.Errorf("query %s: %w", name, err)
	}
	q := dnsmessage.Question{Name: qname, Type: t, Class: dnsmessage.ClassINET}
	var last error
	for range r.cfg.Attempts {
		for _, s := range r.cfg.Servers {
			if err := ctx.Err(); err != nil {
				return nil, 0, s, fmt.Errorf("query %s %s: %w", name, typeName(t), err)
			}
			msg, err := r.exchange(ctx, s, q)
			if err != nil {
				last = err
				continue
			}
			switch msg.RCode {
			case dnsmessage.RCodeSuccess:
			case dnsmessage.RCodeNameError:
				return nil, 0, s, fmt.Errorf("%w: %s does not exist (NXDOMAIN from %s)", ErrNotFound, name, s)
			default:
				last = fmt.Errorf("server %s answered %s", s, rcodeName(msg.RCode))
				continue
			}
			addrs, ttl, err := follow(msg, q)
			if err != nil {
				last = fmt.Errorf("answer from %s: %w", s, err)
				continue
			}
			return addrs, ttl, s, nil
		}
	}
	return nil, 0, netip.AddrPort{}, fmt.Errorf("query %s %s: no usable answer from %d server(s) in %d attempt(s), last: %w", name, typeName(t), len(r.cfg.Servers), r.cfg.Attempts, last)
}

// follow walks the CNAME chain from the question's name inside the
// answer section and returns the addresses at its end and the smallest TTL
// along it (no addresses and no error when the name has none of the type).
func follow(msg *dnsmessage.Message, q dnsmessage.Question) ([]netip.Addr, uint32, error) {
	cur := q.Name.String()
	ttl := uint32(math.MaxUint32)
	for hop := 0; ; hop++ {
		var addrs []netip.Addr
		var cname string
		var cnameTTL uint32
		addrTTL := uint32(math.MaxUint32)
		for _, rr := range msg.Answers {
			if rr.Header.Class != dnsmessage.ClassINET || !strings.EqualFold(rr.Header.Name.String(), cur) {
				continue
			}
			switch b := rr.Body.(type) {
			case *dnsmessage.AResource:
				if q.Type == dnsmessage.TypeA {
					addrs = append(addrs, netip.AddrFrom4(b.A))
					addrTTL = min(addrTTL, rr.Header.TTL)
				}
			case *dnsmessage.AAAAResource:
				if q.Type == dnsmessage.TypeAAAA {
					addrs = append(addrs, netip.AddrFrom16(b.AAAA))
					addrTTL = min(addrTTL, rr.Header.TTL)
				}
			case *dnsmessage.CNAMEResource:
				cname, cnameTTL = b.CNAME.String(), rr.Header.TTL
			}
		}
		if len(addrs) > 0 {
			return addrs, min(ttl, addrTTL), nil
		}
		if cname == "" {
			return nil, 0, nil
		}
		if hop == maxCNAMEHops {
			return nil, 0, fmt.Errorf("CNAME chain from %s longer than %d names (a loop?)", q.Name, maxCNAMEHops)
		}
		ttl = min(ttl, cnameTTL)
		cur = cname
	}
}

// exchange sends q to server over UDP, and over TCP when the UDP answer is
// truncated, and returns the checked answer.
func (r *DNSResolver) exchange(ctx context.Context, server netip.AddrPort, q dnsmessage.Question) (*dnsmessage.Message, error) {
	id := uint16(rand.Uint32())
	query := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true}, Questions: []dnsmessage.Question{q}}
	var opt dnsmessage.ResourceHeader
	if err := opt.SetEDNS0(ednsUDPSize, dnsmessage.RCodeSuccess, false); err != nil {
		return nil, fmt.Errorf("build query: %w", err)
	}
	query.Additionals = []dnsmessage.Resource{{Header: opt, Body: &dnsmessage.OPTResource{}}}
	b, err := query.Pack()
	if err != nil {
		return nil, fmt.Errorf("build query for %s: %w", q.Name, err)
	}
	msg, err := r.roundTrip(ctx, "udp", server, b, id, q)
	if err != nil || !msg.Truncated {
		return msg, err
	}
	return r.roundTrip(ctx, "tcp", server, b, id, q)
}

// roundTrip sends one query over network ("udp" or "tcp") and reads the
// answer. Over UDP, datagrams that are not an answer to this query (another
// id, another question, unparsable) are set aside and reading goes on until
// the timeout, which then reports why they were not taken.
func (r *DNSResolver) roundTrip(ctx context.Context, network string, server netip.AddrPort, query []byte, id uint16, q dnsmessage.Question) (*dnsmessage.Message, error) {
	deadline := time.Now().Add(r.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, server.String())
	if err != nil {
		return nil, fmt.Errorf("dial nameserver %s/%s: %w", server, network, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("set deadline: %w", err)
	}
	wrap := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("ask %s/%s for %s: %w", server, network, q.Name, ctx.Err())
		}
		return fmt.Errorf("ask %s/%s for %s: %w", server, network, q.Name, err)
	}

	if network == "tcp" {
		msg := make([]byte, 2+len(query))
		binary.BigEndian.PutUint16(msg, uint16(len(query)))
		copy(msg[2:], query)
		if _, err := conn.Write(msg); err != nil {
			return nil, wrap(err)
		}
		var n [2]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return nil, wrap(fmt.Errorf("read answer length: %w", err))
		}
		b := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, b); err != nil {
			return nil, wrap(fmt.Errorf("read answer: %w", err))
		}
		m, err := checkAnswer(b, id, q)
		if err != nil {
			return nil, wrap(err)
		}
		return m, nil
	}

	if _, err := conn.Write(query); err != nil {
		return nil, wrap(err)
	}
	// Larger than the size announced: a server that ignores it is still
	// read whole up to 4 KiB; a longer datagram fails to parse.
	b := make([]byte, 4096)
	var refused error
	for {
		n, err := conn.Read(b)
		if err != nil {
			if refused != nil && ctx.Err() == nil {
				return nil, wrap(fmt.Errorf("no valid answer before the timeout (%w)", refused))
			}
			return nil, wrap(err)
		}
		m, err := checkAnswer(b[:n], id, q)
		if err != nil {
			refused = err
			continue
		}
		return m, nil
	}
}

// checkAnswer parses b and checks that it answers the query with id and
// question q.
func checkAnswer(b []byte, id uint16, q dnsmessage.Question) (*dnsmessage.Message, error) {
	var p dnsmessage.Parser
	h, err := p.Start(b)
	if err != nil {
		return nil, fmt.Errorf("malformed answer (%d bytes): %w", len(b), err)
	}
	if h.ID != id {
		return nil, fmt.Errorf("answer id %#04x does not match the query id %#04x", h.ID, id)
	}
	if !h.Response {
		return nil, fmt.Errorf("message with the query id is not a response")
	}
	var m dnsmessage.Message
	if err := m.Unpack(b); err != nil {
		if h.Truncated {
			// Cut inside a record by the sender: TCP gives it whole.
			return &dnsmessage.Message{Header: h}, nil
		}
		return nil, fmt.Errorf("malformed answer (%d bytes): %w", len(b), err)
	}
	if len(m.Questions) != 1 || m.Questions[0].Type != q.Type || m.Questions[0].Class != q.Class ||
		!strings.EqualFold(m.Questions[0].Name.String(), q.Name.String()) {
		return nil, fmt.Errorf("answer is for another question (%v), not %s %s", m.Questions, q.Name, typeName(q.Type))
	}
	return &m, nil
}

func typeName(t dnsmessage.Type) string { return strings.TrimPrefix(t.String(), "Type") }

func rcodeName(c dnsmessage.RCode) string {
	switch c {
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	}
	return c.String()
}
