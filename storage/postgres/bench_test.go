package postgres

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
)

// BenchmarkAppendAudit appends batches of 1 and 64 records to one chain
// under each durability: the cost of one group commit. records/s counts
// records, not batches.
func BenchmarkAppendAudit(b *testing.B) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		for _, n := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", d, n), func(b *testing.B) {
				s := openTest(b, "", Options{Durability: d})
				ctx := b.Context()
				batch := make([]*storage.AuditRecord, n)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					for j := range batch {
						batch[j] = auditRec("gw-1", i*n+j)
					}
					if err := s.AppendAudit(ctx, batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "records/s")
			})
		}
	}
}

// BenchmarkAppendAuditReplicas is several replicas (Stores) appending
// batches of 16 to their own chains at once, on one database.
func BenchmarkAppendAuditReplicas(b *testing.B) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		b.Run(string(d), func(b *testing.B) {
			first := openTest(b, "", Options{Durability: d})
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := first
				if k := next.Add(1); k > 1 {
					s = openTest(b, first.schema, Options{Durability: d})
				}
				chain := "replica-" + strconv.FormatInt(next.Load(), 10) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
				batch := make([]*storage.AuditRecord, 16)
				for i := 0; pb.Next(); i++ {
					for j := range batch {
						batch[j] = auditRec(chain, i*16+j)
					}
					if err := s.AppendAudit(b.Context(), batch); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N*16)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkReserve reserves from parallel goroutines on one hot key and on
// one key per goroutine.
func BenchmarkReserve(b *testing.B) {
	for _, hot := range []bool{true, false} {
		name := "spread"
		if hot {
			name = "hot-key"
		}
		b.Run(name, func(b *testing.B) {
			s := openTest(b, "", Options{})
			exp := time.Now().Add(time.Hour)
			var g atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				key := "budget:hot"
				if !hot {
					key = "budget:" + strconv.FormatInt(g.Add(1), 10)
				}
				for pb.Next() {
					if _, err := s.Reserve(b.Context(), key, 1, 1<<60, exp); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkTakeToken takes tokens from one hot bucket in parallel.
func BenchmarkTakeToken(b *testing.B) {
	s := openTest(b, "", Options{})
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := s.TakeToken(b.Context(), "rate:hot", 1e9, 1<<30, time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGroupCommit is the gateway's path: concurrent checks append one
// record each through groupcommit, which batches them into AppendAudit.
func BenchmarkGroupCommit(b *testing.B) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d", d, callers), func(b *testing.B) {
				s := openTest(b, "", Options{Durability: d})
				w := groupcommit.New(s, groupcommit.Options{Chain: "gw-1"})
				var next atomic.Int64
				lat := make([][]time.Duration, callers)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for c := range callers {
					wg.Go(func() {
						for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
							t0 := time.Now()
							if err := w.Append(context.Background(), auditRec("", int(i))); err != nil {
								b.Error(err)
								return
							}
							lat[c] = append(lat[c], time.Since(t0))
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				if err := w.Close(context.Background()); err != nil {
					b.Fatal(err)
				}
				all := slices.Concat(lat...)
				slices.Sort(all)
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
				if len(all) > 0 {
					b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
					b.ReportMetric(float64(all[min(len(all)-1, len(all)*99/100)].Microseconds()), "p99-µs")
				}
			})
		}
	}
}
