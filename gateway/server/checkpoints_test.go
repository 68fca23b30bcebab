package server

import (
	"bytes"
	"encoding/base64"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// chainReport verifies the test replica's chain through the API.
func chainReport(t *testing.T, g *testGateway, chain string) (*v1.VerifyAuditResponse, *v1.ChainReport) {
	t.Helper()
	resp, err := v1.NewAuditServiceClient(g.conn).VerifyAudit(t.Context(), &v1.VerifyAuditRequest{Chain: chain})
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	if len(resp.GetChains()) != 1 {
		t.Fatalf("VerifyAudit reported %d chains, want 1", len(resp.GetChains()))
	}
	return resp, resp.GetChains()[0]
}

// A replica signs its chain while records are written, not while idle, and
// once more at shutdown; the next start trusts the same key.
func TestAuditCheckpointsWrittenAndVerified(t *testing.T) {
	dir := t.TempDir()
	mod := func(c *Config) {
		c.Store = "sqlite:" + filepath.Join(dir, "aa.db")
		c.SecretsKeyFile = filepath.Join(dir, "secrets.key")
		c.AuditCheckpointInterval = 100 * time.Millisecond
	}
	g := startGateway(t, examplesDir(t), mod)
	checks := func(n int) {
		for range n {
			if _, err := g.client.CheckAction(t.Context(), toolReq(coder, "git_status", `{"short":true}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	checks(5)
	var rep *v1.ChainReport
	waitFor(t, "a checkpoint at the head after 5 checks", func() bool {
		_, rep = chainReport(t, g, "test-replica")
		return rep.GetCheckpoints() > 0 && rep.GetLastCheckpointSeq() == rep.GetRecords()
	})
	resp, rep := chainReport(t, g, "test-replica")
	if !rep.GetOk() || len(rep.GetCheckpointKeyIds()) != 1 || rep.GetCheckpointKeyIds()[0] != resp.GetCheckpointKeyId() || resp.GetCheckpointKeyId() == "" {
		t.Fatalf("report %+v, gateway key %q: want an intact chain signed by the gateway's key", rep, resp.GetCheckpointKeyId())
	}
	pub, err := base64.StdEncoding.DecodeString(resp.GetCheckpointPublicKey())
	if err != nil || storage.CheckpointKeyID(pub) != resp.GetCheckpointKeyId() {
		t.Fatalf("checkpoint_public_key %q does not match key id %s (%v)", resp.GetCheckpointPublicKey(), resp.GetCheckpointKeyId(), err)
	}

	// Idle: the checkpoint at the head is not followed by more.
	idle := rep.GetCheckpoints()
	time.Sleep(500 * time.Millisecond) // five intervals with nothing written
	if _, rep = chainReport(t, g, "test-replica"); rep.GetCheckpoints() != idle {
		t.Fatalf("%d checkpoints became %d while nothing was written", idle, rep.GetCheckpoints())
	}

	var m dto.Metric
	if err := g.srv.checkpointer.written.WithLabelValues("ok").Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != float64(idle) {
		t.Fatalf("aa_audit_checkpoints_total{result=ok} = %v, want %d", got, idle)
	}

	// A shutdown with nothing new since the last checkpoint signs nothing.
	if err := g.stop(); err != nil {
		t.Fatal(err)
	}
	// Records after the last checkpoint are signed at shutdown. The interval
	// is an hour here, so no periodic checkpoint can land among the checks
	// on a slow machine: the only one after them is the shutdown's.
	g2 := startGateway(t, examplesDir(t), func(c *Config) { mod(c); c.AuditCheckpointInterval = time.Hour })
	resp2, rep := chainReport(t, g2, "test-replica")
	if !rep.GetOk() || rep.GetCheckpoints() != idle {
		t.Fatalf("after an idle shutdown: %+v, want %d checkpoints", rep, idle)
	}
	if resp2.GetCheckpointKeyId() != resp.GetCheckpointKeyId() {
		t.Fatalf("the checkpoint key changed across a restart: %s then %s", resp.GetCheckpointKeyId(), resp2.GetCheckpointKeyId())
	}
	g = g2
	checks(3)
	if err := g2.stop(); err != nil {
		t.Fatal(err)
	}
	g3 := startGateway(t, examplesDir(t), func(c *Config) { mod(c); c.AuditCheckpointInterval = time.Hour })
	if _, rep = chainReport(t, g3, "test-replica"); !rep.GetOk() || rep.GetLastCheckpointSeq() != rep.GetRecords() || rep.GetCheckpoints() != idle+1 {
		t.Fatalf("after restart: %+v, want the last record to be the shutdown checkpoint (%d checkpoints)", rep, idle+1)
	}
}

// A chain whose checkpoints are signed by another key (as a forger who
// rewrote it would sign them) fails verification, naming the record.
func TestAuditCheckpointByUnknownKeyFails(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	forger, err := storage.NewCheckpointSigner(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	recs := []*storage.AuditRecord{
		{Chain: "intruder", ID: "r-1", Time: time.Now(), Event: storage.EventDecision, Reason: "forged"},
		forger.Record("intruder", "cp-1", time.Now()),
	}
	if err := g.srv.store.AppendAudit(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	resp, rep := chainReport(t, g, "intruder")
	if resp.GetOk() || rep.GetOk() || rep.GetFirstBadSeq() != 2 || !strings.Contains(rep.GetProblem(), forger.KeyID()) || !strings.HasPrefix(rep.GetProblem(), storage.ProblemCheckpoint) {
		t.Fatalf("report %+v, want record 2 and key %s named", rep, forger.KeyID())
	}
}

func TestVerifyAuditRejectsBadAnchors(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	client := v1.NewAuditServiceClient(g.conn)
	good := strings.Repeat("ab", 32)
	for field, a := range map[string]*v1.ChainAnchor{
		"anchors[0].chain": {Seq: 1, Hash: good},
		"anchors[0].seq":   {Chain: "c", Hash: good},
		"anchors[0].hash":  {Chain: "c", Seq: 1, Hash: "abcd"},
	} {
		_, err := client.VerifyAudit(t.Context(), &v1.VerifyAuditRequest{Anchors: []*v1.ChainAnchor{a}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), field) {
			t.Errorf("anchor %+v: %v, want InvalidArgument naming %s", a, err, field)
		}
	}
	many := make([]*v1.ChainAnchor, 10001)
	for i := range many {
		many[i] = &v1.ChainAnchor{Chain: "c", Seq: 1, Hash: good}
	}
	if _, err := client.VerifyAudit(t.Context(), &v1.VerifyAuditRequest{Anchors: many}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("10,001 anchors: %v, want InvalidArgument", err)
	}
}

// A check that lands while a checkpoint is being appended is ordered before
// or after it by its sequence number: the next checkpoint is written exactly
// when the chain's last record is not already a checkpoint (no unsigned tail,
// no checkpoint that signs nothing new), whichever way each race went.
func TestCheckpointerSignsExactlyWhenNeeded(t *testing.T) {
	g := startGateway(t, examplesDir(t), func(c *Config) {
		c.Store = "sqlite:" + filepath.Join(t.TempDir(), "aa.db")
		c.AuditCheckpointInterval = time.Hour // only this test's calls write checkpoints
	})
	before, after := 0, 0 // checks that landed before or after the concurrent checkpoint
	for i := range 60 {
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := g.client.CheckAction(t.Context(), toolReq(coder, "git_status", `{}`)); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(time.Duration(i%20) * 50 * time.Microsecond) // vary which lands first
		if err := g.srv.checkpointer.checkpoint(t.Context()); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		_, rep := chainReport(t, g, "test-replica")
		signed := rep.GetLastCheckpointSeq() == rep.GetRecords()
		if signed {
			before++
		} else {
			after++
		}
		if err := g.srv.checkpointer.checkpoint(t.Context()); err != nil {
			t.Fatal(err)
		}
		_, rep2 := chainReport(t, g, "test-replica")
		want := rep.GetCheckpoints()
		if !signed {
			want++
		}
		if rep2.GetCheckpoints() != want || rep2.GetLastCheckpointSeq() != rep2.GetRecords() || !rep2.GetOk() {
			t.Fatalf("head signed before: %v (%+v); after one more checkpoint call: %+v, want %d checkpoints with the head signed",
				signed, rep, rep2, want)
		}
	}
	t.Logf("the check landed before the checkpoint %d times, after it %d times", before, after)
}
