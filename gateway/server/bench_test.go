package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/internal/benchload"
	"github.com/agent-assembly/agent-assembly/internal/cputime"
	"github.com/agent-assembly/agent-assembly/storage"
)

// reportLatency adds p50/p99/p999 of the collected samples to the benchmark.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(0.999), "p999-µs")
}

// benchCheck runs CheckAction over loopback gRPC, closed loop, from
// parallelism×GOMAXPROCS concurrent clients, and reports throughput and latency.
func benchCheck(b *testing.B, client v1.PolicyServiceClient, parallelism int) {
	benchCheckAs(b, client, parallelism, "")
}

// benchCheckAs is benchCheck presenting token as the agent's credential.
func benchCheckAs(b *testing.B, client v1.PolicyServiceClient, parallelism int, token string) {
	req := toolReq(coder, "git_status", `{"short":true}`)
	req.CredentialToken = token
	ctx := context.Background()
	// Measured runs start from the gateway's steady state (benchload).
	benchload.WarmUp(b, parallelism*runtime.GOMAXPROCS(0), func() error {
		_, err := client.CheckAction(ctx, req)
		return err
	})
	var mu sync.Mutex
	var all []time.Duration
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process()
	b.RunParallel(func(pb *testing.PB) {
		var lat []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if _, err := client.CheckAction(ctx, req); err != nil {
				b.Error(err)
				break
			}
			lat = append(lat, time.Since(t0))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	elapsed := time.Since(start)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "checks/s")
	// CPU per check (client and gateway together) is steadier than
	// throughput on a shared machine, and is what bounds throughput once
	// the cores are saturated.
	if len(all) > 0 {
		b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(len(all)), "cpu-µs/check")
	}
	reportLatency(b, all)
}

// nopAuditor drops records: the "audit off" baseline. The gateway has no
// such mode; it exists only to measure what the audit log costs.
type nopAuditor struct{}

func (nopAuditor) Append(context.Context, *storage.AuditRecord) error { return nil }

// discardLog is an audit log that keeps nothing.
type discardLog struct {
	storage.AuditLog // nil: the group-commit writer calls only AppendAudit
}

func (discardLog) AppendAudit(context.Context, []*storage.AuditRecord) error { return nil }

// serveCore serves a PolicyService on a fresh loopback listener.
func serveCore(b *testing.B, core *gateway.Core) v1.PolicyServiceClient {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer(grpc.NumStreamWorkers(streamWorkers)) // served as the gateway serves
	v1.RegisterPolicyServiceServer(s, gateway.NewPolicyService(core))
	go s.Serve(l)
	b.Cleanup(s.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return v1.NewPolicyServiceClient(conn)
}

// BenchmarkCheckActionGRPC measures audited CheckAction over loopback gRPC
// (closed loop) on every store and durability mode at 2 and 64 clients,
// against two baselines with the audit log switched off: the bare decision
// core on a plain gRPC server ("audit-off") and the whole gateway with its
// interceptors, metrics and tracing hooks ("gateway-audit-off", the fair
// comparison for the audit path's cost).
//
//	go test ./gateway/server -run '^$' -bench CheckActionGRPC -benchtime 5s
//
// PostgreSQL runs when AA_TEST_POSTGRES_URL is set (scripts/testdb.sh).
func BenchmarkCheckActionGRPC(b *testing.B) {
	type variant struct {
		name string
		mod  func(*Config)
	}
	variants := []variant{
		{"sqlite-sync", func(c *Config) { c.AuditDurability = "sync" }},
		{"sqlite-os", func(c *Config) { c.AuditDurability = "os" }},
		// os mode writing each batch to the journal file, without the
		// shared-memory copy and inline appends.
		{"sqlite-os-noshm", func(c *Config) { c.AuditDurability, c.Store = "os", c.Store+"?shm=off" }},
		{"memory", func(c *Config) { c.Store = "memory:" }},
	}
	if pg := os.Getenv("AA_TEST_POSTGRES_URL"); pg != "" {
		for _, d := range []string{"sync", "os"} {
			d := d
			variants = append(variants, variant{"postgres-" + d, func(c *Config) {
				c.Store = withSchema(b, pg)
				c.AuditDurability = d
			}})
		}
	}
	for _, par := range []int{1, 32} {
		clients := par * runtime.GOMAXPROCS(0)
		b.Run(fmt.Sprintf("audit-off/clients=%d", clients), func(b *testing.B) {
			g := startGateway(b, examplesDir(b), func(c *Config) { c.Store = "memory:" })
			core, err := gateway.NewCore(gateway.Options{Audit: nopAuditor{}, Chain: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			core.SetSnapshot(g.srv.Core().Snapshot())
			benchCheck(b, serveCore(b, core), par)
		})
		// The whole gateway (interceptors, metrics, tracing hooks) with
		// the audit log switched off: the baseline the targets
		// compare against.
		b.Run(fmt.Sprintf("gateway-audit-off/clients=%d", clients), func(b *testing.B) {
			g := startGateway(b, examplesDir(b), func(c *Config) { c.Store, c.auditOff = "memory:", true })
			benchCheck(b, g.client, par)
		})
		// The gateway with the group-commit writer over a log that keeps
		// nothing: what handing each record to the writer goroutine and
		// back costs, which inline appends (SQLite os mode) avoid.
		b.Run("handover/clients="+strconv.Itoa(clients), func(b *testing.B) {
			g := startGateway(b, examplesDir(b), func(c *Config) { c.Store, c.auditSink = "memory:", discardLog{} })
			benchCheck(b, g.client, par)
		})
		for _, v := range variants {
			b.Run(v.name+"/clients="+strconv.Itoa(clients), func(b *testing.B) {
				g := startGateway(b, examplesDir(b), v.mod)
				benchCheck(b, g.client, par)
			})
		}
		// The same in-memory gateway with agent authentication on (the
		// default; the variants above run with it off): each check carries
		// a credential token, verified once and then served from the cache.
		b.Run("memory-agent-auth/clients="+strconv.Itoa(clients), func(b *testing.B) {
			g := startGateway(b, examplesDir(b), func(c *Config) { c.Store, c.AgentAuth = "memory:", "token" })
			benchCheckAs(b, g.client, par, registerTB(b, g, coder))
		})
	}
}

// withSchema creates a throwaway schema for one benchmark.
func withSchema(b *testing.B, pg string) string {
	name := fmt.Sprintf("bench_%d", time.Now().UnixNano())
	sep := "?"
	for _, c := range pg {
		if c == '?' {
			sep = "&"
		}
	}
	return pg + sep + "schema=" + name
}

// noopPolicy answers every check at once: the physical limit of the transport.
type noopPolicy struct {
	v1.UnimplementedPolicyServiceServer
}

func (noopPolicy) CheckAction(context.Context, *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	return &v1.CheckActionResponse{Decision: v1.Decision_ALLOW}, nil
}

// BenchmarkNoopGRPC is the same load against a gRPC handler that does
// nothing: the floor set by gRPC and loopback on this machine.
func BenchmarkNoopGRPC(b *testing.B) {
	for _, par := range []int{1, 32} {
		b.Run("clients="+strconv.Itoa(par*runtime.GOMAXPROCS(0)), func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			s := grpc.NewServer(grpc.NumStreamWorkers(streamWorkers)) // served as the gateway serves
			v1.RegisterPolicyServiceServer(s, noopPolicy{})
			go s.Serve(l)
			defer s.Stop()
			conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			benchCheck(b, v1.NewPolicyServiceClient(conn), par)
		})
	}
}
