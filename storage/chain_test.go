package storage_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// goldenRecords are the records whose encodings and hashes are pinned in
// testdata/audit_hash_golden.json. Add cases; never change existing ones.
func goldenRecords() map[string]*storage.AuditRecord {
	t0 := time.Date(2026, 11, 25, 9, 30, 0, 123456789, time.UTC)
	full := &storage.AuditRecord{
		Chain: "gw-1", Seq: 42, ID: "dec-0001", Time: t0, Event: storage.EventDecision,
		Agent:     action.AgentID{Org: "acme", Team: "eng", Agent: "coder"},
		SessionID: "sess-1", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7",
		Kind: action.KindToolCall, Payload: []byte(`{"tool":"deploy","args":{"env":"prod"}}`),
		Decision: action.Deny, RuleID: "no-prod-deploys", PolicyVersion: "v12", Mode: action.ModeEnforce,
		ShadowDecision: action.Allow, Reason: "production deploys are blocked", Latency: 183 * time.Microsecond,
		PrevHash: bytes.Repeat([]byte{0xab}, 32),
	}
	unicode := *full
	unicode.Reason = "überprüft: 検証済み ✓"
	unicode.Time = t0.In(time.FixedZone("JST", 9*3600)) // same instant, other zone
	return map[string]*storage.AuditRecord{
		"minimal":    {Chain: "c", Seq: 1, Time: time.Unix(1, 0), PrevHash: storage.GenesisHash()},
		"full":       full,
		"unicode":    &unicode,
		"governance": {Chain: "gw-2", Seq: 7, ID: "gov-1", Time: t0, Event: storage.EventGovernance, Reason: "policy v13 activated by alice", Latency: -1, PrevHash: bytes.Repeat([]byte{1}, 32)},
	}
}

type golden struct {
	Encoding string `json:"encoding"`
	Hash     string `json:"hash"`
}

func TestHashRecordGolden(t *testing.T) {
	path := filepath.Join("testdata", "audit_hash_golden.json")
	got := map[string]golden{}
	for name, r := range goldenRecords() {
		got[name] = golden{Encoding: hex.EncodeToString(storage.AppendRecordEncoding(nil, r)), Hash: hex.EncodeToString(storage.HashRecord(r))}
	}
	if *update {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -run TestHashRecordGolden -update once to create it): %v", err)
	}
	var want map[string]golden
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	for name, g := range want {
		if got[name] != g {
			t.Errorf("%s: the canonical encoding changed; stored audit logs would no longer verify.\n got %+v\nwant %+v", name, got[name], g)
		}
	}
	if len(want) != len(got) {
		t.Errorf("golden file has %d cases, the test %d: run with -update after adding a case", len(want), len(got))
	}
}

func TestHashCoversEveryField(t *testing.T) {
	r := goldenRecords()["full"]
	h := storage.HashRecord(r)
	mutations := map[string]func(r *storage.AuditRecord){
		"Chain": func(r *storage.AuditRecord) { r.Chain += "x" }, "Seq": func(r *storage.AuditRecord) { r.Seq++ },
		"ID": func(r *storage.AuditRecord) { r.ID += "x" }, "Time": func(r *storage.AuditRecord) { r.Time = r.Time.Add(1) },
		"Event": func(r *storage.AuditRecord) { r.Event = storage.EventRejected }, "Org": func(r *storage.AuditRecord) { r.Agent.Org += "x" },
		"Team": func(r *storage.AuditRecord) { r.Agent.Team += "x" }, "Agent": func(r *storage.AuditRecord) { r.Agent.Agent += "x" },
		"SessionID": func(r *storage.AuditRecord) { r.SessionID += "x" }, "TraceID": func(r *storage.AuditRecord) { r.TraceID += "x" },
		"SpanID": func(r *storage.AuditRecord) { r.SpanID += "x" }, "Kind": func(r *storage.AuditRecord) { r.Kind++ },
		"Payload":  func(r *storage.AuditRecord) { r.Payload = append([]byte(nil), r.Payload...); r.Payload[3] ^= 1 },
		"Decision": func(r *storage.AuditRecord) { r.Decision-- }, "RuleID": func(r *storage.AuditRecord) { r.RuleID += "x" },
		"PolicyVersion": func(r *storage.AuditRecord) { r.PolicyVersion += "x" }, "Mode": func(r *storage.AuditRecord) { r.Mode++ },
		"ShadowDecision": func(r *storage.AuditRecord) { r.ShadowDecision++ }, "Reason": func(r *storage.AuditRecord) { r.Reason += "x" },
		"Latency": func(r *storage.AuditRecord) { r.Latency++ }, "PrevHash": func(r *storage.AuditRecord) { r.PrevHash = storage.GenesisHash() },
	}
	for name, m := range mutations {
		c := *r
		m(&c)
		if bytes.Equal(storage.HashRecord(&c), h) {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
	c := *r
	c.Hash = []byte("ignored")
	if !bytes.Equal(storage.HashRecord(&c), h) {
		t.Error("the Hash field is part of its own hash")
	}
	// Moving bytes between adjacent fields changes the hash (length prefixes).
	a := storage.AuditRecord{Chain: "c", Time: time.Unix(1, 0), Agent: action.AgentID{Org: "ab", Team: "c"}}
	b := storage.AuditRecord{Chain: "c", Time: time.Unix(1, 0), Agent: action.AgentID{Org: "a", Team: "bc"}}
	if bytes.Equal(storage.HashRecord(&a), storage.HashRecord(&b)) {
		t.Error("field boundaries are ambiguous")
	}
}

func chainOf(t *testing.T, n int) []*storage.AuditRecord {
	t.Helper()
	recs := make([]*storage.AuditRecord, n)
	for i := range recs {
		recs[i] = &storage.AuditRecord{Chain: "c", ID: string(rune('a' + i)), Time: time.Unix(int64(100+i), 0), Reason: "r"}
	}
	if _, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { return storage.ChainHead{}, nil }); err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestVerifyChainNamesFirstProblem(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(recs []*storage.AuditRecord) []*storage.AuditRecord
		badSeq  int64
		problem string
		good    int64
	}{
		{"intact", func(r []*storage.AuditRecord) []*storage.AuditRecord { return r }, 0, "", 8},
		{"content", func(r []*storage.AuditRecord) []*storage.AuditRecord { r[4].Reason = "s"; return r }, 5, storage.ProblemHashMismatch, 4},
		{"stored hash", func(r []*storage.AuditRecord) []*storage.AuditRecord { r[2].Hash[0] ^= 1; return r }, 3, storage.ProblemHashMismatch, 2},
		{"rewritten record", func(r []*storage.AuditRecord) []*storage.AuditRecord {
			r[3].Reason = "forged"
			r[3].Hash = storage.HashRecord(r[3])
			return r
		}, 5, storage.ProblemPrevHash + " 4", 4},
		{"deleted record", func(r []*storage.AuditRecord) []*storage.AuditRecord { return append(r[:2:2], r[3:]...) }, 3, storage.ProblemSequenceGap + ": record 3 is missing", 2},
		{"deleted records", func(r []*storage.AuditRecord) []*storage.AuditRecord { return append(r[:2:2], r[5:]...) }, 3, storage.ProblemSequenceGap + ": records 3 to 5 are missing", 2},
		{"duplicate", func(r []*storage.AuditRecord) []*storage.AuditRecord { return append(r[:3:3], r[2:]...) }, 3, storage.ProblemSequenceGap, 3},
		{"first record", func(r []*storage.AuditRecord) []*storage.AuditRecord { r[0].ID = "z"; return r }, 1, storage.ProblemHashMismatch, 0},
		{"wrong chain", func(r []*storage.AuditRecord) []*storage.AuditRecord { r[1].Chain = "d"; return r }, 2, storage.ProblemWrongChain, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := storage.VerifyChain("c", c.tamper(chainOf(t, 8)), storage.ChainHead{})
			if rep.OK != (c.badSeq == 0) || rep.FirstBadSeq != c.badSeq || !strings.HasPrefix(rep.Problem, c.problem) || rep.Records != c.good {
				t.Fatalf("VerifyChain = %+v\nwant FirstBadSeq %d, Problem starting %q, %d good records", rep, c.badSeq, c.problem, c.good)
			}
			t.Log(rep.Problem)
		})
	}
}

func TestVerifyChainHeadAndSegments(t *testing.T) {
	recs := chainOf(t, 6)
	v := storage.NewChainVerifier("c", storage.ChainHead{})
	for _, r := range recs[:4] {
		v.Add(r)
	}
	v.CheckHead(storage.ChainHead{Seq: 6, Hash: recs[5].Hash})
	if rep := v.Report(); rep.OK || rep.FirstBadSeq != 5 || !strings.HasPrefix(rep.Problem, storage.ProblemTruncated) {
		t.Fatalf("truncated chain: %+v", rep)
	}
	// Verifying a segment from a trusted head.
	rep := storage.VerifyChain("c", recs[3:], storage.ChainHead{Seq: 3, Hash: recs[2].Hash})
	if !rep.OK || rep.Records != 3 || !bytes.Equal(rep.Head, recs[5].Hash) {
		t.Fatalf("segment: %+v", rep)
	}
	rep = storage.VerifyChain("c", recs[3:], storage.ChainHead{Seq: 3, Hash: recs[1].Hash})
	if rep.OK || rep.FirstBadSeq != 4 {
		t.Fatalf("segment from the wrong head: %+v", rep)
	}
}

func TestLinkRecordsValidates(t *testing.T) {
	recs := []*storage.AuditRecord{{Chain: "c", Time: time.Unix(1, 0)}, {Time: time.Unix(1, 0)}}
	called := false
	_, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { called = true; return storage.ChainHead{}, nil })
	if err == nil || called || recs[0].Seq != 0 {
		t.Fatalf("LinkRecords with an invalid record: err %v, head read %v, first seq %d", err, called, recs[0].Seq)
	}
}

func TestCursorRoundTrip(t *testing.T) {
	p := storage.AuditPosition{TimeNanos: -5, Chain: "gw/1", Seq: 9}
	got, ok, err := storage.ParseAuditCursor(p.Cursor())
	if err != nil || !ok || got != p {
		t.Fatalf("ParseAuditCursor(Cursor()) = %+v %v %v", got, ok, err)
	}
}

func BenchmarkHashRecord(b *testing.B) {
	r := goldenRecords()["full"]
	b.ReportAllocs()
	for b.Loop() {
		storage.HashRecord(r)
	}
}

// TestDecodeRecordEncodingRoundTrip: every golden record decodes back to an
// equal record that hashes the same, and damaged encodings are refused.
func TestDecodeRecordEncodingRoundTrip(t *testing.T) {
	for name, r := range goldenRecords() {
		enc := storage.AppendRecordEncoding(nil, r)
		got, err := storage.DecodeRecordEncoding(enc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(storage.AppendRecordEncoding(nil, got), enc) || !bytes.Equal(storage.HashRecord(got), storage.HashRecord(r)) {
			t.Errorf("%s: decoded %+v, which encodes differently from %+v", name, got, r)
		}
		if !got.Time.Equal(r.Time) || got.Reason != r.Reason || got.Latency != r.Latency || got.Agent != r.Agent {
			t.Errorf("%s: decoded %+v, want %+v", name, got, r)
		}
		for cut := 1; cut < len(enc); cut += 7 {
			if d, err := storage.DecodeRecordEncoding(enc[:cut]); err == nil && bytes.Equal(storage.AppendRecordEncoding(nil, d), enc) {
				t.Errorf("%s: truncated at %d decoded to the whole record", name, cut)
			}
		}
	}
	full := storage.AppendRecordEncoding(nil, goldenRecords()["full"])
	for label, b := range map[string][]byte{
		"no magic":     full[1:],
		"empty":        nil,
		"unknown tag":  append(bytes.Clone(full), 99, 1, 'x'),
		"out of order": append(bytes.Clone(full), 1, 1, 'x'),
		"overlong":     append(bytes.Clone(full), 30, 200, 'x'),
	} {
		if _, err := storage.DecodeRecordEncoding(b); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", label, err)
		}
	}
}
