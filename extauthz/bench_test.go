package extauthz_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/extauthz"
	"github.com/agent-assembly/agent-assembly/extauthz/codec"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/internal/benchload"
	"github.com/agent-assembly/agent-assembly/internal/cputime"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// benchPolicy writes a team policy with n rules (deny rules for other hosts,
// each a distinct literal, so the index has n entries) and an allowlist
// entry for the host the benchmark asks about.
func benchPolicy(b *testing.B, n int) string {
	b.Helper()
	var sb strings.Builder
	sb.WriteString(`apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: bench-team}
spec:
  scope: {level: team, org: acme, team: research}
  default: deny
  capabilities: [network_call]
  network:
    allowlist:
      - host: "*.wikipedia.org"
        ports: [443]
  rules:
`)
	for i := range n {
		fmt.Fprintf(&sb, "    - {id: r%04d, priority: %d, match: {action: network_call, name: host-%04d.example.com}, decision: deny}\n", i, i%100, i)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

// benchRequest is an allowed request as Envoy sends it, identified by SPIFFE id.
func benchRequest() *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Principal: "spiffe://cluster.local/org/acme/team/research/agent/researcher-1"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Host: "en.wikipedia.org", Path: "/wiki/Envoy", Scheme: "https", Protocol: "HTTP/1.1",
			Headers: map[string]string{":authority": "en.wikipedia.org", ":method": "GET", ":path": "/wiki/Envoy", "user-agent": "bench"},
		}},
	}}
}

// noopAuthz allows everything at once: the floor set by gRPC and loopback.
type noopAuthz struct {
	authv3.UnimplementedAuthorizationServer
}

func (noopAuthz) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(code.Code_OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}

type dropAudit struct{}

func (dropAudit) Append(context.Context, *storage.AuditRecord) error { return nil }

// AppendUntil discards too: the core honours Check deadlines over it, as
// over the gateway's group-commit writer, so the decision runs inline.
func (dropAudit) AppendUntil(context.Context, *storage.AuditRecord, time.Time) error { return nil }

func serveAuthz(b *testing.B, register func(grpc.ServiceRegistrar), opts ...grpc.ServerOption) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	// Stream workers as on the gateway's listener (gateway/server's
	// streamWorkers), so every target is served the same way.
	opts = append(opts, grpc.NumStreamWorkers(uint32(max(64, 32*runtime.GOMAXPROCS(0)))))
	s := grpc.NewServer(opts...)
	register(s)
	go s.Serve(l)
	b.Cleanup(s.Stop)
	return l.Addr().String()
}

// BenchmarkCheckGRPC measures ext_authz Check over loopback gRPC, closed
// loop, with a 1,000-rule policy: the no-op handler (the physical limit,
// on grpc-go's own codec as anyone would write it), the no-op handler on
// the gateway's codec (extauthz/codec), the decision core with the audit
// log off (on the gateway's codec), and the full gateway on SQLite in both
// durability modes.
//
//	go test ./extauthz -run '^$' -bench CheckGRPC -benchtime 3s
func BenchmarkCheckGRPC(b *testing.B) {
	dir := benchPolicy(b, 1000)
	docs, err := policy.LoadPath(dir)
	if err != nil {
		b.Fatal(err)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		b.Fatal(err)
	}
	targets := []struct {
		name string
		addr func(b *testing.B) string
	}{
		{"noop", func(b *testing.B) string {
			return serveAuthz(b, func(r grpc.ServiceRegistrar) { authv3.RegisterAuthorizationServer(r, noopAuthz{}) })
		}},
		{"noop-codec", func(b *testing.B) string {
			return serveAuthz(b, func(r grpc.ServiceRegistrar) { authv3.RegisterAuthorizationServer(r, noopAuthz{}) },
				grpc.ForceServerCodecV2(codec.New()))
		}},
		{"audit-off", func(b *testing.B) string {
			core, err := gateway.NewCore(gateway.Options{Audit: dropAudit{}, Chain: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			core.SetSnapshot(snap)
			return serveAuthz(b, extauthz.New(core, extauthz.Options{}).Register, grpc.ForceServerCodecV2(codec.New()))
		}},
	}
	for _, d := range []string{"os", "sync"} {
		targets = append(targets, struct {
			name string
			addr func(b *testing.B) string
		}{"sqlite-" + d, func(b *testing.B) string {
			// Agent authentication is on (the default): the agent is
			// registered and its token rides in the route's context
			// extensions, as the gateway's xDS configures a sidecar.
			addr := servertest.Start(b, dir, func(c *server.Config) {
				c.Store = "sqlite:" + filepath.Join(b.TempDir(), "aa.db")
				c.AuditDurability = d
			})
			benchToken = servertest.RegisterAgent(b, addr, "acme/research/researcher-1")
			return addr
		}})
	}
	for _, par := range []int{1, 32} {
		for _, tg := range targets {
			b.Run(fmt.Sprintf("%s/clients=%d", tg.name, par*runtime.GOMAXPROCS(0)), func(b *testing.B) {
				benchToken = "" // set by targets that authenticate agents
				if !strings.HasPrefix(tg.name, "sqlite-") {
					benchToken = placeholderToken(b)
				}
				conn, err := grpc.NewClient(tg.addr(b), grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				benchAuthz(b, authv3.NewAuthorizationClient(conn), par)
			})
		}
	}
}

// BenchmarkCheckCore measures one ext_authz Check in process over the
// decision core with the audit log off and a 1,000-rule policy: the
// benchmark request of BenchmarkCheckGRPC without gRPC around it, so its
// ns/op and allocs/op are the decision path's own cost.
//
//	go test ./extauthz -run '^$' -bench CheckCore -benchmem
func BenchmarkCheckCore(b *testing.B) {
	docs, err := policy.LoadPath(benchPolicy(b, 1000))
	if err != nil {
		b.Fatal(err)
	}
	snap, err := policy.Compile(docs, policy.Version(docs))
	if err != nil {
		b.Fatal(err)
	}
	core, err := gateway.NewCore(gateway.Options{Audit: dropAudit{}, Chain: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	core.SetSnapshot(snap)
	s := extauthz.New(core, extauthz.Options{})
	req := benchRequest()
	ctx := context.Background()
	if r, err := s.Check(ctx, req); err != nil || r.GetOkResponse() == nil {
		b.Fatalf("the benchmark request is not allowed: %v %v", err, r)
	}
	b.ReportAllocs()
	cpu0 := cputime.Process()
	for b.Loop() {
		if _, err := s.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	// The decision runs on a pool goroutine and the collector on others:
	// the process CPU time per check counts them all, and unlike ns/op it
	// does not count the waits for a core on a shared machine.
	b.ReportMetric(float64((cputime.Process()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/check")
}

// benchToken is the credential token of the agent. Every target is sent
// the same request, context extensions and token included, so that decoding
// it costs all of them the same; targets that do not authenticate agents get
// a token of the same shape from an issuer of their own (placeholderToken).
var benchToken string

// placeholderToken is a real token for the benchmark agent from a
// throwaway issuer: the size and shape a gateway's token has.
func placeholderToken(b *testing.B) string {
	seed, err := identity.NewSeed()
	if err != nil {
		b.Fatal(err)
	}
	iss, err := identity.NewIssuer(seed, identity.Options{})
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := iss.Issue(action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"})
	if err != nil {
		b.Fatal(err)
	}
	return tok
}

func benchAuthz(b *testing.B, c authv3.AuthorizationClient, par int) {
	req := benchRequest()
	req.Attributes.ContextExtensions = map[string]string{extauthz.ExtOrg: "acme", extauthz.ExtTeam: "research",
		extauthz.ExtAgent: "researcher-1", extauthz.ExtToken: benchToken}
	ctx := context.Background()
	if r, err := c.Check(ctx, req); err != nil || r.GetOkResponse() == nil {
		b.Fatalf("the benchmark request is not allowed: %v %v", err, r)
	}
	// Measured runs start from the gateway's steady state (benchload).
	benchload.WarmUp(b, par*runtime.GOMAXPROCS(0), func() error {
		_, err := c.Check(ctx, req)
		return err
	})
	var mu sync.Mutex
	var all []time.Duration
	b.SetParallelism(par)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process()
	b.RunParallel(func(pb *testing.PB) {
		var lat []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if _, err := c.Check(ctx, req); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(t0))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64(len(all))/time.Since(start).Seconds(), "checks/s")
	if len(all) > 0 {
		// CPU per check (client and server together) is steadier than
		// throughput on a shared machine.
		b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(len(all)), "cpu-µs/check")
		slices.Sort(all)
		q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
		b.ReportMetric(q(0.50), "p50-µs")
		b.ReportMetric(q(0.99), "p99-µs")
	}
}
