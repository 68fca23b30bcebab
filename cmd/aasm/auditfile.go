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
func verifyExport(r io.Reader, pub ed25519.PublicKey, anchors map[string][]storage.ChainHead) (resp *v1.VerifyAuditResponse, notes []string, err error) {
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
		for _, a := range anchors[name] {
			if a.Seq < start.Seq {
				notes = append(notes, fmt.Sprintf("chain %s: the anchor at record %d precedes the export (from record %d): not checked", name, a.Seq, start.Seq+1))
				continue
			}
			v.Anchor(a)
		}
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
		resp.Chains = append(resp.Chains, gateway.ChainReportToProto(rep))
		resp.Ok = resp.Ok && rep.OK
	}
	for _, name := range slices.Sorted(maps.Keys(anchors)) {
		if _, ok := chains[name]; !ok {
			notes = append(notes, fmt.Sprintf("chain %s is anchored but has no records in the export: not checked (verify against the gateway to tell a deleted chain)", name))
		}
	}
	return resp, notes, nil
}

// readAnchors reads the heads of an earlier aasm audit verify -o json
// (online or --file) as anchors: every intact chain's head_seq and
// head_hash.
func readAnchors(path string) (map[string][]storage.ChainHead, []*v1.ChainAnchor, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read --anchors: %w", err)
	}
	var prev v1.VerifyAuditResponse
	if err := protojson.Unmarshal(b, &prev); err != nil {
		return nil, nil, nil, fmt.Errorf("--anchors %s is not the output of aasm audit verify -o json: %w", path, err)
	}
	byChain := map[string][]storage.ChainHead{}
	var wire []*v1.ChainAnchor
	var notes []string
	for _, c := range prev.GetChains() {
		if !c.GetOk() || c.GetHeadSeq() <= 0 {
			notes = append(notes, fmt.Sprintf("--anchors: chain %s was not intact (or empty) when anchored: skipped", c.GetChain()))
			continue
		}
		hash, err := hex.DecodeString(c.GetHeadHash())
		if err != nil || len(hash) != storage.HashSize {
			return nil, nil, nil, fmt.Errorf("--anchors: chain %s has head_hash %q, not a SHA-256 in hex", c.GetChain(), c.GetHeadHash())
		}
		byChain[c.GetChain()] = append(byChain[c.GetChain()], storage.ChainHead{Seq: c.GetHeadSeq(), Hash: hash})
		wire = append(wire, &v1.ChainAnchor{Chain: c.GetChain(), Seq: c.GetHeadSeq(), Hash: c.GetHeadHash()})
	}
	if len(wire) == 0 {
		return nil, nil, nil, fmt.Errorf("--anchors %s holds no intact chain head", path)
	}
	return byChain, wire, notes, nil
}
