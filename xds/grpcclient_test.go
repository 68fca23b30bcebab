package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

// These tests run grpc-go's own xDS client (the xds:/// resolver, its
// LDS/RDS/CDS/EDS watchers and balancers) against the Server: an
// independent implementation of the protocol, so agreement is not a matter
// of our code agreeing with itself.

const grpcAgent = "acme/team-a/agent-1"

// backend is a real gRPC server on loopback answering health checks.
func backend(t *testing.T) (port int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	healthpb.RegisterHealthServer(g, health.NewServer())
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// writeGRPCPolicy allows team-a the given host:port destinations.
func writeGRPCPolicy(t *testing.T, dir string, dests ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: team-a}\nspec:\n  scope: {level: team, org: acme, team: team-a}\n  default: deny\n  network:\n    allowlist:\n")
	for _, d := range dests {
		h, p, _ := net.SplitHostPort(d)
		fmt.Fprintf(&b, "      - {host: %s, ports: [%s]}\n", h, p)
	}
	if err := os.WriteFile(filepath.Join(dir, "team-a.yaml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func xdsResolver(t *testing.T, adsAddr, node string) resolver.Builder {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": %q}
}`, adsAddr, node)
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	return rb
}

// healthCheck makes one RPC through the xDS-resolved channel.
func healthCheck(cc *grpc.ClientConn, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// eventually polls cond until it holds or 15 s pass (a bound for a stuck
// test, not a speed requirement).
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func nodeStatus(s *Server, node string, f Flavour) (NodeStatus, bool) {
	for _, n := range s.Status() {
		if n.Node == node && n.Flavour == f {
			return n, true
		}
	}
	return NodeStatus{}, false
}

// ackedAll reports whether the node accepted version v for all four types.
func ackedAll(s *Server, node string, v string) error {
	n, ok := nodeStatus(s, node, FlavourGRPC)
	if !ok {
		return fmt.Errorf("node %s unknown", node)
	}
	if n.Version != v {
		return fmt.Errorf("node version %s, want %s", n.Version, v)
	}
	if len(n.Types) != 4 {
		return fmt.Errorf("%d types seen, want 4", len(n.Types))
	}
	for _, ts := range n.Types {
		if ts.AckVersion != v {
			return fmt.Errorf("%s acked %q, want %q", short(ts.TypeURL), ts.AckVersion, v)
		}
	}
	return nil
}

type grpcFixture struct {
	dir  string
	src  *source
	srv  *Server
	addr string
	port int
	logs *syncbuf.Buffer
}

func newGRPCFixture(t *testing.T, o Options) *grpcFixture {
	f := &grpcFixture{dir: t.TempDir(), port: backend(t), logs: &syncbuf.Buffer{}}
	if err := os.WriteFile(filepath.Join(f.dir, "global.yaml"), []byte("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: global}\nspec:\n  scope: {level: global}\n  default: deny\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeGRPCPolicy(t, f.dir, f.target())
	f.src = newSource(t, f.dir)
	o.GatewayAddr = "127.0.0.1:1"
	o.Endpoints = DNSEndpoints(fakeResolver{
		"api.internal":   {netip.MustParseAddr("127.0.0.1")},
		"other.internal": {netip.MustParseAddr("127.0.0.1")},
	})
	o.PollInterval = -1
	o.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.Registry = prometheus.NewRegistry()
	f.srv = mustNew(t, f.src, o)
	f.addr = startADS(t, f.srv)
	return f
}

func (f *grpcFixture) target() string { return fmt.Sprintf("api.internal:%d", f.port) }

// setPolicy rewrites team-a's allowlist and pushes it.
func (f *grpcFixture) setPolicy(t *testing.T, dests ...string) {
	t.Helper()
	writeGRPCPolicy(t, f.dir, dests...)
	f.src.p.Store(loadPolicy(t, f.dir))
	if err := f.srv.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (f *grpcFixture) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("xds:///"+f.target(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(xdsResolver(t, f.addr, grpcAgent)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (f *grpcFixture) version(t *testing.T) string {
	t.Helper()
	n, ok := nodeStatus(f.srv, grpcAgent, FlavourGRPC)
	if !ok {
		t.Fatalf("node %s has no status", grpcAgent)
	}
	return n.Version
}

// TestGRPCClientFollowsPolicy: grpc-go resolves an allowed service through
// the server (endpoint as an IP literal), loses it when the policy drops the
// destination, and gets it back when the policy allows it again, all on one
// channel without restarting anything.
func TestGRPCClientFollowsPolicy(t *testing.T) {
	f := newGRPCFixture(t, Options{})
	cc := f.dial(t)
	if err := healthCheck(cc, 15*time.Second); err != nil {
		t.Fatalf("RPC to allowed %s through xDS: %v", f.target(), err)
	}
	v1 := f.version(t)
	eventually(t, "ACK of v1", func() error { return ackedAll(f.srv, grpcAgent, v1) })

	f.setPolicy(t, "other.internal:443")
	v2 := f.version(t)
	if v2 == v1 {
		t.Fatal("policy change did not change the node's version")
	}
	eventually(t, "RPCs fail once the destination is not allowed", func() error {
		if err := healthCheck(cc, 500*time.Millisecond); err == nil {
			return fmt.Errorf("RPC still succeeds")
		}
		return nil
	})
	// The client acked v2 for listeners (the one it watches is gone).
	eventually(t, "LDS ACK of v2", func() error {
		n, _ := nodeStatus(f.srv, grpcAgent, FlavourGRPC)
		for _, ts := range n.Types {
			if ts.TypeURL == listenerType && ts.AckVersion == v2 {
				return nil
			}
		}
		return fmt.Errorf("types %+v", n.Types)
	})

	f.setPolicy(t, f.target(), "other.internal:443")
	v3 := f.version(t)
	eventually(t, "RPC succeeds again after the policy allows it", func() error { return healthCheck(cc, 500*time.Millisecond) })
	eventually(t, "ACK of v3", func() error { return ackedAll(f.srv, grpcAgent, v3) })
}

// fakeTimers records the delays the server asks for and fires them on demand.
type fakeTimers struct {
	mu    sync.Mutex
	calls []*fakeTimer
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped atomic.Bool
}

func (ft *fakeTimers) after(d time.Duration, f func()) func() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	tm := &fakeTimer{d: d, f: f}
	ft.calls = append(ft.calls, tm)
	return func() { tm.stopped.Store(true) }
}

func (ft *fakeTimers) snapshot() []*fakeTimer {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return append([]*fakeTimer(nil), ft.calls...)
}

// TestGRPCClientNACK: a version grpc-go rejects (an api_listener without
// the router filter) is reported with the client's error, the previous
// version keeps serving, and the server does not offer the rejected version
// again until a backoff delay passes (here driven by a fake clock: the
// delays double), while a fixed policy goes out at once.
func TestGRPCClientNACK(t *testing.T) {
	timers := &fakeTimers{}
	var broken atomic.Bool
	f := newGRPCFixture(t, Options{
		after: timers.after,
		tamper: func(_ string, res map[string][]types.Resource) {
			if broken.Load() {
				// An HTTP connection manager without the router filter,
				// which every gRPC client must reject.
				for _, r := range res[listenerType] {
					l := r.(*listenerv3.Listener)
					h := &hcmv3.HttpConnectionManager{}
					if err := l.GetApiListener().GetApiListener().UnmarshalTo(h); err != nil {
						panic(err)
					}
					h.HttpFilters = nil
					a, err := anypb.New(h)
					if err != nil {
						panic(err)
					}
					l.ApiListener.ApiListener = a
				}
			}
		},
	})
	cc := f.dial(t)
	if err := healthCheck(cc, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	v1 := f.version(t)
	eventually(t, "ACK of v1", func() error { return ackedAll(f.srv, grpcAgent, v1) })

	broken.Store(true)
	f.setPolicy(t, f.target(), "other.internal:443")
	bad := f.version(t)
	var nack TypeStatus
	eventually(t, "NACK of the broken version", func() error {
		n, _ := nodeStatus(f.srv, grpcAgent, FlavourGRPC)
		for _, ts := range n.Types {
			if ts.TypeURL == listenerType && ts.NackVersion == bad {
				nack = ts
				return nil
			}
		}
		return fmt.Errorf("no LDS NACK yet: %+v", n.Types)
	})
	t.Logf("NACK reported: version %s: %s", nack.NackVersion, nack.NackError)
	if !strings.Contains(nack.NackError, "http filters list is empty") || nack.AckVersion != v1 {
		t.Errorf("NACK status %+v: want the client's error and v1 still acked", nack)
	}
	if !strings.Contains(f.logs.String(), "node rejected configuration") || !strings.Contains(f.logs.String(), "http filters list is empty") {
		t.Errorf("the NACK and its error detail are not in the log:\n%s", f.logs.String())
	}
	if err := healthCheck(cc, 5*time.Second); err != nil {
		t.Errorf("previous version stopped serving after the NACK: %v", err)
	}

	// A delayed retry is scheduled; nothing is re-sent until it fires.
	// (The client may repeat its NACK on the same response; each repeat
	// only lengthens the delay, it never triggers a send.)
	ldsSent := func() float64 { return counterValue(f.srv.m.responses.WithLabelValues("Listener")) }
	pending := func() *fakeTimer {
		ts := timers.snapshot()
		if len(ts) == 0 || ts[len(ts)-1].stopped.Load() {
			return nil
		}
		return ts[len(ts)-1]
	}
	eventually(t, "backoff scheduled", func() error {
		if pending() == nil {
			return fmt.Errorf("no pending timer")
		}
		return nil
	})
	sentBefore := ldsSent()
	if d := timers.snapshot()[0].d; d != DefaultBackoffBase {
		t.Errorf("first backoff %s, want %s", d, DefaultBackoffBase)
	}
	if err := healthCheck(cc, 5*time.Second); err != nil { // the stream stays quiet meanwhile
		t.Fatal(err)
	}
	if got := ldsSent(); got != sentBefore {
		t.Fatalf("LDS re-sent %v times while backing off", got-sentBefore)
	}
	fired := pending()
	nTimers := len(timers.snapshot())
	fired.f() // the delay passes: offered again, rejected again, longer delay
	eventually(t, "next backoff", func() error {
		if p := pending(); p == nil || len(timers.snapshot()) == nTimers {
			return fmt.Errorf("no new timer")
		}
		return nil
	})
	if got := ldsSent(); got != sentBefore+1 {
		t.Errorf("LDS sent %v times after one delay, want 1", got-sentBefore)
	}
	if d := pending().d; d != min(2*fired.d, DefaultBackoffMax) {
		t.Errorf("backoff after a repeated rejection %s, want %s", d, 2*fired.d)
	}
	if got := counterValue(f.srv.m.nacks.WithLabelValues("Listener")); got < 2 {
		t.Errorf("aa_xds_nacks_total{type=Listener} = %v, want at least 2", got)
	}

	// A fixed policy is pushed at once, despite the pending backoff.
	broken.Store(false)
	f.setPolicy(t, f.target())
	v3 := f.version(t)
	eventually(t, "ACK of the fixed version", func() error { return ackedAll(f.srv, grpcAgent, v3) })
	if ts := timers.snapshot(); !ts[len(ts)-1].stopped.Load() {
		t.Error("the pending backoff timer was not stopped by the new version")
	}
	if err := healthCheck(cc, 5*time.Second); err != nil {
		t.Error(err)
	}
}

// TestRefusesBadNodeID: a node whose id is not org/team/agent is refused
// with an error saying what to set.
func TestRefusesBadNodeID(t *testing.T) {
	f := newGRPCFixture(t, Options{})
	cc, err := grpc.NewClient("xds:///"+f.target(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(xdsResolver(t, f.addr, "not-an-agent")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	err = healthCheck(cc, 2*time.Second)
	if err == nil {
		t.Fatal("RPC succeeded for a node without an agent id")
	}
	eventually(t, "refusal logged", func() error {
		if !strings.Contains(f.logs.String(), `node id \"not-an-agent\" is not an agent id: set it to org/team/agent`) {
			return fmt.Errorf("log: %s", f.logs.String())
		}
		return nil
	})
}

func counterValue(c prometheus.Counter) float64 {
	m := &dto.Metric{}
	if err := c.Write(m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
