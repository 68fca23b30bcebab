package gateway

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// An exported record (AuditRecordToProto, then JSON as aasm audit export
// writes it) read back with AuditRecordFromProto hashes exactly as stored,
// for every value of every enum and with every optional field empty or set.
func TestAuditRecordProtoRoundTripKeepsHash(t *testing.T) {
	signer, err := storage.NewCheckpointSigner(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	decisions := []action.Decision{action.DecisionUnspecified, action.Allow, action.Deny, action.Pending, action.Redact}
	modes := []action.Mode{action.ModeUnspecified, action.ModeEnforce, action.ModeObserve, action.ModeDisabled}
	events := []storage.RecordEvent{storage.EventDecision, storage.EventRejected, storage.EventGovernance}
	kinds := append([]action.Kind{0}, action.Kinds()...)
	var recs []*storage.AuditRecord
	for i := range 60 {
		r := &storage.AuditRecord{
			Chain: "gw-1", ID: fmt.Sprintf("dec-%d", i), Time: time.Unix(1_800_000_000, int64(i)*7919),
			Event: events[i%len(events)], Kind: kinds[i%len(kinds)],
			Decision: decisions[i%len(decisions)], ShadowDecision: decisions[(i/2)%len(decisions)], Mode: modes[i%len(modes)],
		}
		if i%2 == 0 {
			r.Agent = action.AgentID{Org: "acme", Team: "eng", Agent: fmt.Sprintf("a%d", i)}
			r.SessionID, r.TraceID, r.SpanID = "s", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
			r.Payload = []byte(`{"tool":"search","args":{"q":"caf\u00e9 \"quoted\" \\ <tag>"}}`)
			r.RuleID, r.PolicyVersion, r.Reason, r.Latency = "r1", "v3", "allowed: ünïcode", time.Duration(i)*time.Microsecond+3
		}
		recs = append(recs, r)
		if i%20 == 19 {
			recs = append(recs, signer.Record("gw-1", fmt.Sprintf("cp-%d", i), time.Unix(1_800_000_100, int64(i))))
		}
	}
	if _, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { return storage.ChainHead{}, nil }); err != nil {
		t.Fatal(err)
	}
	back := make([]*storage.AuditRecord, len(recs))
	for i, r := range recs {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(AuditRecordToProto(r))
		if err != nil {
			t.Fatal(err)
		}
		var p v1.AuditRecord
		if err := protojson.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		if back[i], err = AuditRecordFromProto(&p); err != nil {
			t.Fatalf("record %d: %v", r.Seq, err)
		}
		if got := storage.HashRecord(back[i]); !bytes.Equal(got, r.Hash) {
			t.Fatalf("record %d (%s) read back hashes to %x, stored %x\n%s", r.Seq, r.ID, got, r.Hash, b)
		}
	}
	rep := storage.VerifyChain("gw-1", back, storage.ChainHead{})
	if !rep.OK || rep.Checkpoints != 3 {
		t.Fatalf("the read-back chain: %+v", rep)
	}
}

func TestAuditRecordFromProtoRejectsMalformed(t *testing.T) {
	for name, p := range map[string]*v1.AuditRecord{
		"previous_hash": {Chain: "c", Seq: 2, PreviousHash: "zz"},
		"entry_hash":    {Chain: "c", Seq: 2, EntryHash: "not hex"},
		"decision":      {Chain: "c", Seq: 2, Decision: 42},
		"mode":          {Chain: "c", Seq: 2, EnforcementMode: 9},
	} {
		if _, err := AuditRecordFromProto(p); err == nil || !strings.Contains(err.Error(), "c/2") {
			t.Errorf("%s: err = %v, want an error naming record c/2", name, err)
		}
	}
}
