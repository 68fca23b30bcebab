package server

import (
	"sync"
	"testing"
	"time"
)

// In os durability on SQLite, checks append their records inline into the
// journal's shared-memory copy, not through the group-commit writer; signed
// checkpoints still go through the writer, and the one chain holding both
// verifies.
func TestOSModeChecksAppendInline(t *testing.T) {
	g := startGateway(t, examplesDir(t), func(c *Config) {
		c.AuditDurability = "os"
		c.AuditCheckpointInterval = 100 * time.Millisecond
	})
	const clients, each = 8, 50
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				if _, err := g.client.CheckAction(t.Context(), toolReq(coder, "git_status", `{"short":true}`)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "a checkpoint after the checks", func() bool {
		_, rep := chainReport(t, g, "test-replica")
		return rep.GetCheckpoints() > 0
	})
	_, rep := chainReport(t, g, "test-replica")
	if !rep.GetOk() || rep.GetRecords() < clients*each {
		t.Fatalf("chain report %+v; want an intact chain of at least %d records", rep, clients*each)
	}
	inlined, written := g.srv.writer.Inlined(), g.srv.writer.Written()
	if inlined == 0 || inlined == written {
		t.Fatalf("%d of %d records appended inline; want the checks inline and the checkpoints through the writer", inlined, written)
	}
	t.Logf("%d of %d records inline, %d checkpoints", inlined, written, rep.GetCheckpoints())
}
