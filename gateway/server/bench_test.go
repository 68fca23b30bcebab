package server

import (
	"context"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
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
// GOMAXPROCS*parallelism goroutines, and reports latency percentiles.
func benchCheck(b *testing.B, client v1.PolicyServiceClient, parallelism int) {
	req := toolReq(coder, "git_status", `{"short":true}`)
	ctx := context.Background()
	samples := make(chan []time.Duration, 64)
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var lat []time.Duration
		for pb.Next() {
			t0 := time.Now()
			if _, err := client.CheckAction(ctx, req); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(t0))
		}
		samples <- lat
	})
	b.StopTimer()
	close(samples)
	var all []time.Duration
	for s := range samples {
		all = append(all, s...)
	}
	reportLatency(b, all)
}

// BenchmarkCheckActionGRPC is an audited CheckAction over loopback gRPC on
// SQLite in both durability modes, and on the memory store.
func BenchmarkCheckActionGRPC(b *testing.B) {
	for _, store := range []struct{ name, durability string }{{"sqlite", "sync"}, {"sqlite", "os"}, {"memory", "sync"}} {
		for _, par := range []int{1, 32} {
			b.Run(store.name+"-"+store.durability+"/clients="+strconv.Itoa(par*2), func(b *testing.B) {
				g := startGateway(b, examplesDir(b), func(c *Config) {
					c.AuditDurability = store.durability
					if store.name == "memory" {
						c.Store = "memory:"
					}
				})
				benchCheck(b, g.client, par)
			})
		}
	}
}

// noopPolicy answers every check at once: the physical limit of the transport.
type noopPolicy struct {
	v1.UnimplementedPolicyServiceServer
}

func (noopPolicy) CheckAction(context.Context, *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	return &v1.CheckActionResponse{Decision: v1.Decision_ALLOW}, nil
}

// BenchmarkNoopGRPC is the same load against a gRPC handler that does nothing.
func BenchmarkNoopGRPC(b *testing.B) {
	for _, par := range []int{1, 32} {
		b.Run("clients="+strconv.Itoa(par*2), func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			s := grpc.NewServer()
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
