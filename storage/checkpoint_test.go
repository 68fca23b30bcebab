package storage_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

func signer(t *testing.T, b byte) *storage.CheckpointSigner {
	t.Helper()
	s, err := storage.NewCheckpointSigner(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkpointedChain links 10 records of chain "c" with checkpoints signed by
// s at seq 4 and 8.
func checkpointedChain(t *testing.T, s *storage.CheckpointSigner) []*storage.AuditRecord {
	t.Helper()
	var recs []*storage.AuditRecord
	for i := 1; i <= 10; i++ {
		at := time.Unix(int64(100+i), 0)
		if i == 4 || i == 8 {
			recs = append(recs, s.Record("c", fmt.Sprintf("cp-%d", i), at))
			continue
		}
		recs = append(recs, &storage.AuditRecord{Chain: "c", ID: fmt.Sprintf("r-%d", i), Time: at, Payload: []byte(`{"tool":"x"}`)})
	}
	relink(t, recs)
	return recs
}

// relink links recs afresh from the genesis, as someone rewriting the whole
// chain would: records whose Seal is nil keep their payloads.
func relink(t *testing.T, recs []*storage.AuditRecord) {
	t.Helper()
	if _, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { return storage.ChainHead{}, nil }); err != nil {
		t.Fatal(err)
	}
}

func TestCheckpointsVouchForTheChain(t *testing.T) {
	s := signer(t, 1)
	recs := checkpointedChain(t, s)
	rep := storage.VerifyChain("c", recs, storage.ChainHead{})
	if !rep.OK || rep.Records != 10 || rep.Checkpoints != 2 || rep.LastCheckpointSeq != 8 {
		t.Fatalf("report = %+v, want OK with 10 records and checkpoints at 4 and 8", rep)
	}
	if len(rep.CheckpointKeys) != 1 || rep.CheckpointKeys[0].ID != s.KeyID() || !rep.CheckpointKeys[0].PublicKey.Equal(s.PublicKey()) || rep.CheckpointKeys[0].FirstSeq != 4 {
		t.Fatalf("checkpoint keys = %+v, want %s first at 4", rep.CheckpointKeys, s.KeyID())
	}
	rep.TrustCheckpointKeys(s.PublicKey())
	if !rep.OK {
		t.Fatalf("trusting the signer's key failed the report: %s", rep.Problem)
	}
	var p map[string]any
	if err := json.Unmarshal(recs[3].Payload, &p); err != nil || p["signed_seq"] != float64(3) || p["key_id"] != s.KeyID() {
		t.Fatalf("checkpoint payload = %s (%v)", recs[3].Payload, err)
	}
	if recs[3].Clone().Seal != nil {
		t.Error("a clone of a linked record keeps its Seal")
	}
}

// A rewrite of the whole chain (records changed and every hash and link
// recomputed) verifies as a plain hash chain; the checkpoints catch it.
func TestCheckpointsCatchARewrittenChain(t *testing.T) {
	s := signer(t, 1)
	forge := func(recs []*storage.AuditRecord, resign *storage.CheckpointSigner) {
		recs[1].Payload = []byte(`{"tool":"forged"}`)
		for i, r := range recs {
			r.Seal = nil
			if storage.IsCheckpoint(r) && resign != nil {
				recs[i] = resign.Record(r.Chain, r.ID, r.Time)
			}
		}
		relink(t, recs)
	}

	plain := chainOf(t, 10)
	plain[1].Payload = []byte(`{"tool":"forged"}`)
	relink(t, plain)
	if rep := storage.VerifyChain("c", plain, storage.ChainHead{}); !rep.OK {
		t.Fatalf("control: a rewritten chain without checkpoints should verify, got %+v", rep)
	}

	recs := checkpointedChain(t, s)
	forge(recs, nil)
	rep := storage.VerifyChain("c", recs, storage.ChainHead{})
	if rep.OK || rep.FirstBadSeq != 4 || !strings.HasPrefix(rep.Problem, storage.ProblemCheckpoint) || !strings.Contains(rep.Problem, "signs record 3 with hash") {
		t.Fatalf("report = %+v, want the checkpoint at 4 named", rep)
	}

	// Re-signed with the forger's own key: every signature verifies, but
	// the key is not the gateway's.
	recs = checkpointedChain(t, s)
	forger := signer(t, 2)
	forge(recs, forger)
	rep = storage.VerifyChain("c", recs, storage.ChainHead{})
	if !rep.OK || rep.Checkpoints != 2 {
		t.Fatalf("re-signed chain: report = %+v, want every checkpoint to verify", rep)
	}
	rep.TrustCheckpointKeys(s.PublicKey())
	if rep.OK || rep.FirstBadSeq != 4 || !strings.Contains(rep.Problem, forger.KeyID()) {
		t.Fatalf("re-signed chain trusted with the real key: report = %+v, want record 4 and key %s named", rep, forger.KeyID())
	}
}

func TestCheckpointTamperingNamed(t *testing.T) {
	s := signer(t, 1)
	cases := map[string]func(p map[string]any, r *storage.AuditRecord){
		"signature": func(p map[string]any, _ *storage.AuditRecord) {
			sig := []byte(p["signature"].(string))
			sig[5] ^= 1
			p["signature"] = string(sig)
		},
		"signed seq": func(p map[string]any, _ *storage.AuditRecord) { p["signed_seq"] = 2 },
		"key id":     func(p map[string]any, _ *storage.AuditRecord) { p["key_id"] = signer(t, 3).KeyID() },
		"public key": func(p map[string]any, _ *storage.AuditRecord) {
			p["public_key"] = signer(t, 3).PublicKey()
		},
		"time": func(_ map[string]any, r *storage.AuditRecord) { r.Time = r.Time.Add(time.Second) },
		"not json": func(p map[string]any, _ *storage.AuditRecord) {
			clear(p)
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			recs := checkpointedChain(t, s)
			cp := recs[7]
			var p map[string]any
			if err := json.Unmarshal(cp.Payload, &p); err != nil {
				t.Fatal(err)
			}
			tamper(p, cp)
			cp.Payload, _ = json.Marshal(p)
			if len(p) == 0 {
				cp.Payload = []byte("not json")
			}
			for _, r := range recs {
				r.Seal = nil
			}
			relink(t, recs) // hashes recomputed: only the checkpoint can tell
			rep := storage.VerifyChain("c", recs, storage.ChainHead{})
			if rep.OK || rep.FirstBadSeq != 8 || !strings.HasPrefix(rep.Problem, storage.ProblemCheckpoint) {
				t.Fatalf("report = %+v, want the checkpoint at 8 named", rep)
			}
		})
	}
}

func TestNewCheckpointSignerRejectsBadSeed(t *testing.T) {
	if _, err := storage.NewCheckpointSigner(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "16 bytes, want 32") {
		t.Fatalf("err = %v, want the seed size named", err)
	}
}

// Anchors (heads kept outside the database) catch a chain cut short or
// rewritten, even one without checkpoints and with its stored head redone.
func TestAnchors(t *testing.T) {
	verify := func(recs []*storage.AuditRecord, start storage.ChainHead, anchors ...storage.ChainHead) storage.VerifyReport {
		v := storage.NewChainVerifier("c", start)
		v.Anchor(anchors...)
		for _, r := range recs {
			if !v.Add(r) {
				break
			}
		}
		return v.Report()
	}
	recs := chainOf(t, 10)
	at := func(seq int64) storage.ChainHead { return storage.ChainHead{Seq: seq, Hash: recs[seq-1].Hash} }
	if rep := verify(recs, storage.ChainHead{}, at(4), at(10)); !rep.OK || rep.HeadSeq != 10 {
		t.Fatalf("intact chain with anchors at 4 and 10: %+v", rep)
	}
	if rep := verify(recs[:7], storage.ChainHead{}, at(4), at(10)); rep.OK || rep.FirstBadSeq != 8 || !strings.HasPrefix(rep.Problem, storage.ProblemTruncated) || !strings.Contains(rep.Problem, "record 10 is anchored") {
		t.Fatalf("chain cut after 7, anchored at 10: %+v", rep)
	}
	// Verified from record 5 on (an export), anchored at 4: its hash is the start.
	if rep := verify(recs[4:], storage.ChainHead{Seq: 4, Hash: recs[3].Hash}, at(4)); !rep.OK {
		t.Fatalf("export from 5 anchored at 4: %+v", rep)
	}
	rewritten := chainOf(t, 10)
	rewritten[2].Payload = []byte(`{"rewritten":true}`)
	relink(t, rewritten)
	if rep := verify(rewritten, storage.ChainHead{}, at(4)); rep.OK || rep.FirstBadSeq != 4 || !strings.HasPrefix(rep.Problem, storage.ProblemAnchor) {
		t.Fatalf("chain rewritten from 3, anchored at 4: %+v", rep)
	}
	if rep := verify(rewritten[4:], storage.ChainHead{Seq: 4, Hash: rewritten[3].Hash}, at(4)); rep.OK || rep.FirstBadSeq != 4 {
		t.Fatalf("rewritten export anchored at its start: %+v", rep)
	}
}
