package sqlite

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/internal/cputime"
	"github.com/agent-assembly/agent-assembly/storage"
)

func benchRecord(i int) *storage.AuditRecord {
	return &storage.AuditRecord{
		Chain: "bench", ID: fmt.Sprintf("dec-%d", i), Time: time.Unix(1_800_000_000, int64(i)*1000),
		Event: storage.EventDecision, Agent: action.AgentID{Org: "acme", Team: "eng", Agent: fmt.Sprintf("a%d", i%50)},
		SessionID: fmt.Sprintf("s%d", i%500), Kind: action.KindToolCall, Decision: action.Allow,
		Payload: []byte(`{"tool":"search","args":{"q":"quarterly revenue"}}`), RuleID: "r1", PolicyVersion: "v1",
		Mode: action.ModeEnforce, Reason: "allowed", Latency: 30 * time.Microsecond,
	}
}

// BenchmarkAppendAuditBatch measures one transaction of n records: the cost
// groupcommit pays per batch.
func BenchmarkAppendAuditBatch(b *testing.B) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		for _, n := range []int{1, 32, 256} {
			b.Run(fmt.Sprintf("%s/records=%d", d, n), func(b *testing.B) {
				s := openBench(b, d)
				b.ReportAllocs()
				i := 0
				cpu0 := cputime.Process()
				for b.Loop() {
					batch := make([]*storage.AuditRecord, n)
					for j := range batch {
						batch[j] = benchRecord(i)
						i++
					}
					if err := s.AppendAudit(b.Context(), batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "records/s")
				// CPU time is steadier than wall time on a shared machine.
				b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(i), "cpu-µs/record")
			})
		}
	}
}

// BenchmarkQueryAudit pages newest-first through 50k records.
func BenchmarkQueryAudit(b *testing.B) {
	s := openBench(b, storage.DurabilityOS)
	const total = 50_000
	for i := 0; i < total; i += 1000 {
		batch := make([]*storage.AuditRecord, 1000)
		for j := range batch {
			batch[j] = benchRecord(i + j)
		}
		if err := s.AppendAudit(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
	}
	for name, q := range map[string]storage.AuditQuery{
		"all":      {},
		"agent":    {Org: "acme", Team: "eng", Agent: "a7"},
		"session":  {SessionID: "s42"},
		"decision": {Decision: action.Allow, Limit: 100},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				page, err := s.QueryAudit(b.Context(), q)
				if err != nil || len(page.Records) == 0 {
					b.Fatal(err)
				}
				q2 := q
				q2.Cursor = page.NextCursor
				if _, err := s.QueryAudit(b.Context(), q2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func openBench(b *testing.B, d storage.Durability) *Store {
	s, err := Open(b.Context(), Options{Path: filepath.Join(b.TempDir(), "aa.db"), Durability: d, Logger: discard()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}
