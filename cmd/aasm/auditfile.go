package main

import (
	"bufio"
	"cmp"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/storage"
)

// maxExportLine bounds one exported record (a payload of up to 64 MiB of
// request fields, escaped).
const maxExportLine = 256 << 20

// parsePublicKey reads a checkpoint public key given as base64 (what
// aasm audit verify -o json prints as checkpoint_public_key) or @FILE
// holding it.
func parsePublicKey(s string) (ed25519.PublicKey, error) {
	if name, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read --public-key file: %w", err)
		}
		s = strings.TrimSpace(string(b))
	}
	pub, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("--public-key: want the base64 Ed25519 key that aasm audit verify -o json prints as checkpoint_public_key")
	}
	return pub, nil
}

// verifyExport checks records exported by aasm audit export without asking
// a gateway: every chain's hashes and links from its first exported record,
// and its signed checkpoints, judged against pub when it is not nil. A chain
// whose export starts after its first record is verified from there, as
// notes says.
func verifyExport(r io.Reader, pub ed25519.PublicKey) (resp *v1.VerifyAuditResponse, notes []string, err error) {
	chains := map[string][]*storage.AuditRecord{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxExportLine)
	line := 0
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var p v1.AuditRecord
		if err := protojson.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, nil, fmt.Errorf("line %d is not an exported audit record: %w", line, err)
		}
		rec, err := gateway.AuditRecordFromProto(&p)
		if err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", line, err)
		}
		chains[rec.Chain] = append(chains[rec.Chain], rec)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read export after line %d: %w", line, err)
	}
	if len(chains) == 0 {
		return nil, nil, fmt.Errorf("the export holds no audit records")
	}
	resp = &v1.VerifyAuditResponse{Ok: true}
	if pub != nil {
		resp.CheckpointKeyId = storage.CheckpointKeyID(pub)
		resp.CheckpointPublicKey = base64.StdEncoding.EncodeToString(pub)
	}
	for _, name := range slices.Sorted(maps.Keys(chains)) {
		recs := chains[name]
		slices.SortStableFunc(recs, func(a, b *storage.AuditRecord) int { return cmp.Compare(a.Seq, b.Seq) })
		start := storage.ChainHead{}
		if first := recs[0]; first.Seq > 1 {
			start = storage.ChainHead{Seq: first.Seq - 1, Hash: first.PrevHash}
			notes = append(notes, fmt.Sprintf("chain %s: the export starts at record %d, verified from there", name, first.Seq))
		}
		v := storage.NewChainVerifier(name, start)
		for _, rec := range recs {
			if !v.Add(rec) {
				break
			}
		}
		rep := v.Report()
		if pub != nil {
			rep.TrustCheckpointKeys(pub)
		} else if rep.Checkpoints > 0 {
			notes = append(notes, fmt.Sprintf("chain %s: %d checkpoint signature(s) verify, but not against a trusted key: pass --public-key", name, rep.Checkpoints))
		}
		cr := &v1.ChainReport{Chain: name, Records: rep.Records, Ok: rep.OK, FirstBadSeq: rep.FirstBadSeq, Problem: rep.Problem,
			HeadHash: hex.EncodeToString(rep.Head), Checkpoints: rep.Checkpoints, LastCheckpointSeq: rep.LastCheckpointSeq}
		for _, k := range rep.CheckpointKeys {
			cr.CheckpointKeyIds = append(cr.CheckpointKeyIds, k.ID)
		}
		resp.Chains = append(resp.Chains, cr)
		resp.Ok = resp.Ok && rep.OK
	}
	return resp, notes, nil
}
