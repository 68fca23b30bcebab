package postgres

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/agent-assembly/agent-assembly/storage"
)

// rewriteChain changes the payload of record seq and recomputes, as a
// database superuser who knows the hash format could, every hash and link
// after it and the chain head, so that the chain is consistent again.
func rewriteChain(t *testing.T, s *Store, chain string, seq int64) {
	t.Helper()
	page, err := s.QueryAudit(t.Context(), storage.AuditQuery{Ascending: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var recs []*storage.AuditRecord
	for _, r := range page.Records {
		if r.Chain == chain {
			recs = append(recs, r)
		}
	}
	var head storage.ChainHead
	for _, r := range recs {
		if r.Seq == seq {
			r.Payload = []byte(`{"tool":"rewritten"}`)
		}
		head, _ = storage.LinkRecord(r, head, nil)
	}
	err = pgx.BeginFunc(t.Context(), rawConn(t, s), func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		for _, r := range recs {
			if _, err := tx.Exec(t.Context(), `UPDATE audit_records SET payload = $3, prev_hash = $4, hash = $5 WHERE chain = $1 AND seq = $2`,
				chain, r.Seq, r.Payload, r.PrevHash, r.Hash); err != nil {
				return err
			}
		}
		_, err := tx.Exec(t.Context(), `UPDATE audit_chains SET head_hash = $2 WHERE chain = $1`, chain, head.Hash)
		return err
	})
	if err != nil {
		t.Fatalf("rewrite: %v", err)
	}
}

// A chain rewritten as a whole verifies as a hash chain; a signed
// checkpoint after the change is what names it.
func TestRewrittenChainCaughtByCheckpoint(t *testing.T) {
	s := openTest(t, "", Options{})
	signer, err := storage.NewCheckpointSigner(bytes.Repeat([]byte{5}, 32))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_800_000_000, 0)
	var recs []*storage.AuditRecord
	for i := range 6 {
		recs = append(recs, &storage.AuditRecord{Chain: "plain", ID: fmt.Sprintf("p-%d", i), Time: at.Add(time.Duration(i) * time.Second),
			Event: storage.EventDecision, Payload: []byte(`{"tool":"git_status"}`), Reason: "allowed"})
	}
	for i := range 6 {
		recs = append(recs, &storage.AuditRecord{Chain: "signed", ID: fmt.Sprintf("s-%d", i), Time: at.Add(time.Duration(i) * time.Second),
			Event: storage.EventDecision, Payload: []byte(`{"tool":"git_status"}`), Reason: "allowed"})
	}
	recs = append(recs, signer.Record("signed", "cp", at.Add(time.Minute)))
	if err := s.AppendAudit(t.Context(), recs); err != nil {
		t.Fatal(err)
	}

	rewriteChain(t, s, "plain", 3)
	rep, err := s.VerifyAudit(t.Context(), "plain")
	if err != nil || !rep.OK {
		t.Fatalf("control: a consistently rewritten chain without checkpoints should pass as a hash chain: %+v %v", rep, err)
	}

	rewriteChain(t, s, "signed", 3)
	rep, err = s.VerifyAudit(t.Context(), "signed")
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.FirstBadSeq != 7 || !strings.HasPrefix(rep.Problem, storage.ProblemCheckpoint) {
		t.Fatalf("VerifyAudit of the rewritten signed chain = %+v, want the checkpoint (record 7) named", rep)
	}
}

// Records cut from the end together with the stored head pass as a shorter
// chain; an anchor kept outside the database names the cut.
func TestTruncatedChainCaughtByAnchor(t *testing.T) {
	s := openTest(t, "", Options{})
	at := time.Unix(1_800_000_000, 0)
	var recs []*storage.AuditRecord
	for i := range 8 {
		recs = append(recs, &storage.AuditRecord{Chain: "cut", ID: fmt.Sprintf("c-%d", i), Time: at.Add(time.Duration(i) * time.Second),
			Event: storage.EventDecision, Payload: []byte(`{"tool":"rm"}`), Reason: "allowed"})
	}
	if err := s.AppendAudit(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	anchor := storage.ChainHead{Seq: 8, Hash: recs[7].Hash}
	err := pgx.BeginFunc(t.Context(), rawConn(t, s), func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		if _, err := tx.Exec(t.Context(), `DELETE FROM audit_records WHERE chain = 'cut' AND seq > 5`); err != nil {
			return err
		}
		_, err := tx.Exec(t.Context(), `UPDATE audit_chains SET head_seq = 5, head_hash = $1 WHERE chain = 'cut'`, recs[4].Hash)
		return err
	})
	if err != nil {
		t.Fatalf("truncate: %v", err)
	}
	if rep, err := s.VerifyAudit(t.Context(), "cut"); err != nil || !rep.OK {
		t.Fatalf("control: a chain cut with its head should pass without anchors: %+v %v", rep, err)
	}
	rep, err := s.VerifyAudit(t.Context(), "cut", anchor)
	if err != nil || rep.OK || rep.FirstBadSeq != 6 || !strings.HasPrefix(rep.Problem, storage.ProblemTruncated) {
		t.Fatalf("VerifyAudit anchored at 8 = %+v %v, want the cut from record 6 named", rep, err)
	}
}
