package groupcommit_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/groupcommit"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/storage/sqlite"
)

// BenchmarkAppend measures audited appends through the group-commit writer:
// records/s (throughput), per-append latency percentiles, and the share of
// records that went through the writer goroutine rather than inline, for 1,
// 2, 8 and 64 concurrent callers on each backend.
//
//	go test ./storage/groupcommit -run '^$' -bench Append -benchtime 3s
func BenchmarkAppend(b *testing.B) {
	backends := []struct {
		name string
		open func(b *testing.B) storage.AuditLog
	}{
		{"memory", func(b *testing.B) storage.AuditLog { return memory.New(memory.Options{}) }},
		{"sqlite-sync", func(b *testing.B) storage.AuditLog { return openSQLite(b, storage.DurabilitySync) }},
		{"sqlite-os", func(b *testing.B) storage.AuditLog { return openSQLite(b, storage.DurabilityOS) }},
	}
	for _, be := range backends {
		for _, callers := range []int{1, 2, 8, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d", be.name, callers), func(b *testing.B) {
				benchAppend(b, be.open(b), callers)
			})
		}
	}
}

func openSQLite(b *testing.B, d storage.Durability) storage.AuditLog {
	s, err := sqlite.Open(context.Background(), sqlite.Options{Path: filepath.Join(b.TempDir(), "aa.db"), Durability: d, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

type batchStats struct{ records, batches atomic.Int64 }

func (m *batchStats) ObserveBatch(n int, _ time.Duration, _ error) {
	m.records.Add(int64(n))
	m.batches.Add(1)
}

func benchAppend(b *testing.B, log storage.AuditLog, callers int) {
	stats := &batchStats{}
	w := groupcommit.New(log, groupcommit.Options{Chain: "bench", Metrics: stats})
	payload := []byte(`{"tool":"search","args":{"q":"quarterly revenue by region"}}`)
	var next atomic.Int64
	lat := make([][]time.Duration, callers)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				r := &storage.AuditRecord{
					ID: "dec", Time: time.Now(), Event: storage.EventDecision,
					Agent: action.AgentID{Org: "acme", Team: "eng", Agent: "coder"}, Kind: action.KindToolCall,
					Payload: payload, Decision: action.Allow, RuleID: "allow-search", PolicyVersion: "v1",
					Mode: action.ModeEnforce, Reason: "allowed by rule allow-search", Latency: 40 * time.Microsecond,
				}
				t0 := time.Now()
				if err := w.Append(context.Background(), r); err != nil {
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
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	if n := stats.batches.Load(); n > 0 {
		b.ReportMetric(float64(stats.records.Load())/float64(n), "records/batch")
	}
	if n := w.Written(); n > 0 {
		// Records that could not be appended inline (InlineLog) and waited
		// for the writer goroutine instead.
		b.ReportMetric(100*float64(n-w.Inlined())/float64(n), "via-writer-%")
	}
}
