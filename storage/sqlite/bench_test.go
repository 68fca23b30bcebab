package sqlite

import (
	"fmt"
	"os"
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

// BenchmarkIndexAudit measures the indexer: batches of records shaped like a
// gateway's ext_authz decisions (one agent, one rule, a network payload,
// distinct ids and trace ids) are journaled, then indexed into audit_blocks
// (one index per batch, as the indexer takes what its interval gathered),
// with a WAL checkpoint every 50 batches as the store's checkpointer would.
// It reports the CPU time of indexing and checkpointing per record
// (process-wide, so the journal's background flusher adds a little) and the
// database's bytes per record, for blocks compressed with S2 (what the
// gateway stores) at 100, 300 and 1,000 records per index, and stored as
// they are.
//
//	go test ./storage/sqlite -run '^$' -bench IndexAudit -benchtime 300x -count 3
func BenchmarkIndexAudit(b *testing.B) {
	for _, v := range []struct {
		encoding string
		batch    int
	}{{"s2", 100}, {"s2", 300}, {"s2", 1000}, {"raw", 300}} {
		enc := blockS2
		if v.encoding == "raw" {
			enc = blockRaw
		}
		b.Run(fmt.Sprintf("%s/batch=%d", v.encoding, v.batch), func(b *testing.B) {
			dir := b.TempDir()
			s, err := Open(b.Context(), Options{Path: filepath.Join(dir, "aa.db"), Durability: storage.DurabilityOS, Logger: discard()})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			s.hub.audit.indexMu.Lock() // before the first index prepares the statements
			s.hub.audit.w.encoding = enc
			s.hub.audit.indexMu.Unlock()
			batch := v.batch
			var spent time.Duration
			i := 0
			for b.Loop() {
				recs := make([]*storage.AuditRecord, 0, batch)
				for range batch {
					recs = append(recs, gatewayRecord(i))
					i++
				}
				for k := 0; k < batch; k += 10 {
					if err := s.AppendAudit(b.Context(), recs[k:k+10]); err != nil {
						b.Fatal(err)
					}
				}
				cpu0 := cputime.Process()
				if err := s.hub.audit.index(b.Context()); err != nil {
					b.Fatal(err)
				}
				if i%(50*batch) == 0 {
					var busy, frames, done int
					if err := s.ckpt.QueryRowContext(b.Context(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &done); err != nil {
						b.Fatal(err)
					}
				}
				spent += cputime.Process() - cpu0
			}
			b.ReportMetric(float64(spent.Nanoseconds())/float64(i), "index-cpu-ns/record")
			var size int64
			for _, f := range []string{"aa.db", "aa.db-wal"} {
				if st, err := os.Stat(filepath.Join(dir, f)); err == nil {
					size += st.Size()
				}
			}
			b.ReportMetric(float64(size)/float64(i), "db-bytes/record")
		})
	}
}

// gatewayRecord is shaped like an audit record of an ext_authz check.
func gatewayRecord(i int) *storage.AuditRecord {
	return &storage.AuditRecord{
		Chain: "gw-1", ID: fmt.Sprintf("01JDEC%020d", i), Time: time.Unix(1_800_000_000, int64(i)*50_000),
		Event: storage.EventDecision, Agent: action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"},
		TraceID: fmt.Sprintf("%032x", i*7919), SpanID: fmt.Sprintf("%016x", i*31), Kind: action.KindNetworkCall,
		Decision: action.Allow, RuleID: "network.allowlist", PolicyVersion: "sha256:1f3a9c0e5b7d2468ace13579bdf02468",
		Payload: []byte(`{"method":"GET","host":"en.wikipedia.org","port":443,"path":"/wiki/Envoy","scheme":"https","headers":{"user-agent":"bench"}}`),
		Mode:    action.ModeEnforce, Reason: "host en.wikipedia.org:443 is on the allowlist", Latency: 30 * time.Microsecond,
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

// BenchmarkPrepareJournalFile measures readying the next 16 MiB audit
// journal file, as the spare goroutine does once per 16 MiB of journal: a
// new file (created, zero-filled, fdatasynced, its directory fsynced)
// against a recycled one (first frame header zeroed and fdatasynced,
// renamed, directory fsynced). It reports CPU and wall time per file.
//
//	go test ./storage/sqlite -run '^$' -bench PrepareJournalFile -benchtime 20x -count 3
func BenchmarkPrepareJournalFile(b *testing.B) {
	for _, recycle := range []bool{false, true} {
		name := "new"
		if recycle {
			name = "recycled"
		}
		b.Run(name, func(b *testing.B) {
			a := &auditLog{dir: b.TempDir(), log: discard()}
			j, err := newJournalFile(a.dir, journalFileBytes)
			if err != nil {
				b.Fatal(err)
			}
			cpu0 := cputime.Process()
			for b.Loop() {
				var next *journalFile
				if recycle {
					if !a.keepFile(j) {
						b.Fatal("a full-size file was not kept")
					}
					next, err = a.reuseFile(journalFileBytes)
				} else {
					j.f.Close()
					os.Remove(j.path)
					next, err = newJournalFile(a.dir, journalFileBytes)
				}
				if err != nil || next == nil {
					b.Fatalf("prepare a journal file: %v", err)
				}
				j = next
			}
			b.ReportMetric(float64((cputime.Process()-cpu0).Microseconds())/float64(b.N), "cpu-µs/file")
			j.f.Close()
		})
	}
}
