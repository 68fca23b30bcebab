package gateway

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// AuditReader is what AuditService needs from the store.
type AuditReader interface {
	QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error)
	TailAudit(ctx context.Context) (<-chan *storage.AuditRecord, error)
	AuditChains(ctx context.Context) ([]string, error)
	VerifyAudit(ctx context.Context, chain string, anchors ...storage.ChainHead) (storage.VerifyReport, error)
}

// AuditService implements agentassembly.v1.AuditService.
type AuditService struct {
	v1.UnimplementedAuditServiceServer
	log     AuditReader
	reports *reports // nil until WithReports
	// ckey is the checkpoint signing key VerifyAudit trusts (nil: any key's
	// checkpoints are reported but not judged).
	ckey ed25519.PublicKey
}

var _ v1.AuditServiceServer = (*AuditService)(nil)

// NewAuditService returns the AuditService over log.
func NewAuditService(log AuditReader) *AuditService { return &AuditService{log: log} }

// WithCheckpointKey makes VerifyAudit fail a chain at the first checkpoint
// signed by a key other than pub (see storage.CheckpointRule).
func (s *AuditService) WithCheckpointKey(pub ed25519.PublicKey) *AuditService {
	s.ckey = pub
	return s
}

// ListAuditRecords implements AuditService.ListAuditRecords.
func (s *AuditService) ListAuditRecords(ctx context.Context, req *v1.ListAuditRecordsRequest) (*v1.ListAuditRecordsResponse, error) {
	q, err := auditQuery(req.GetFilter())
	if err != nil {
		return nil, requestStatus(err)
	}
	if req.GetLimit() < 0 || req.GetLimit() > 1000 {
		return nil, requestStatus(badField("limit", "must be between 0 and 1000, not %d", req.GetLimit()))
	}
	q.Cursor, q.Limit, q.Ascending = req.GetCursor(), int(req.GetLimit()), req.GetAscending()
	return s.page(ctx, q)
}

// GetTrace implements AuditService.GetTrace: every record of one trace, oldest first.
func (s *AuditService) GetTrace(ctx context.Context, req *v1.GetTraceRequest) (*v1.ListAuditRecordsResponse, error) {
	if req.GetTraceId() == "" {
		return nil, requestStatus(badField("trace_id", "is required"))
	}
	q := storage.AuditQuery{TraceID: req.GetTraceId(), Ascending: true, Limit: 1000}
	var all []*v1.AuditRecord
	for {
		page, err := s.page(ctx, q)
		if err != nil {
			return nil, err
		}
		all = append(all, page.GetRecords()...)
		if page.GetNextCursor() == "" || len(all) >= 10000 {
			return &v1.ListAuditRecordsResponse{Records: all, NextCursor: page.GetNextCursor()}, nil
		}
		q.Cursor = page.GetNextCursor()
	}
}

func (s *AuditService) page(ctx context.Context, q storage.AuditQuery) (*v1.ListAuditRecordsResponse, error) {
	page, err := s.log.QueryAudit(ctx, q)
	if err != nil {
		return nil, storeStatus("query audit log", err)
	}
	out := &v1.ListAuditRecordsResponse{NextCursor: page.NextCursor, Records: make([]*v1.AuditRecord, len(page.Records))}
	for i, r := range page.Records {
		out.Records[i] = AuditRecordToProto(r)
	}
	return out, nil
}

// TailAudit implements AuditService.TailAudit: records matching the filter
// as they are appended, until the client goes away.
func (s *AuditService) TailAudit(req *v1.TailAuditRequest, stream grpc.ServerStreamingServer[v1.AuditRecord]) error {
	q, err := auditQuery(req.GetFilter())
	if err != nil {
		return requestStatus(err)
	}
	ch, err := s.log.TailAudit(stream.Context())
	if err != nil {
		return storeStatus("tail audit log", err)
	}
	// Headers go out once the tail is registered: a client that waits for
	// them (stream.Header()) misses no record appended afterwards.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case r, ok := <-ch:
			if !ok {
				if stream.Context().Err() != nil {
					return nil
				}
				return status.Error(codes.Unavailable, "audit tail ended: the store stopped delivering records; reconnect")
			}
			if !q.Matches(r) {
				continue
			}
			if err := stream.Send(AuditRecordToProto(r)); err != nil {
				return err
			}
		}
	}
}

// maxAnchors bounds VerifyAuditRequest.anchors.
const maxAnchors = 10000

// VerifyAudit implements AuditService.VerifyAudit over one chain or all,
// checking the anchors given for them. An anchored chain with no records
// left fails.
func (s *AuditService) VerifyAudit(ctx context.Context, req *v1.VerifyAuditRequest) (*v1.VerifyAuditResponse, error) {
	anchors, err := chainAnchors(req.GetAnchors())
	if err != nil {
		return nil, requestStatus(err)
	}
	chains := []string{req.GetChain()}
	if req.GetChain() == "" {
		if chains, err = s.log.AuditChains(ctx); err != nil {
			return nil, storeStatus("list audit chains", err)
		}
		for c := range anchors {
			if !slices.Contains(chains, c) {
				chains = append(chains, c)
			}
		}
		slices.Sort(chains)
	}
	resp := &v1.VerifyAuditResponse{Ok: true}
	if s.ckey != nil {
		resp.CheckpointKeyId = storage.CheckpointKeyID(s.ckey)
		resp.CheckpointPublicKey = base64.StdEncoding.EncodeToString(s.ckey)
	}
	for _, c := range chains {
		rep, err := s.log.VerifyAudit(ctx, c, anchors[c]...)
		if errors.Is(err, storage.ErrNotFound) && len(anchors[c]) > 0 {
			rep = storage.VerifyReport{Chain: c, FirstBadSeq: 1, Problem: fmt.Sprintf("%s: chain %s has no records, but record %d of it is anchored outside the database", storage.ProblemTruncated, c, slices.MinFunc(anchors[c], func(a, b storage.ChainHead) int { return cmp.Compare(a.Seq, b.Seq) }).Seq)}
			err = nil
		}
		if err != nil {
			return nil, storeStatus("verify audit chain "+c, err)
		}
		if s.ckey != nil {
			rep.TrustCheckpointKeys(s.ckey)
		}
		resp.Chains = append(resp.Chains, ChainReportToProto(rep))
		resp.Ok = resp.Ok && rep.OK
		if s.reports != nil {
			s.reports.core.alertChainBreak(rep)
		}
	}
	return resp, nil
}

// ChainReportToProto converts one chain's verification report.
func ChainReportToProto(rep storage.VerifyReport) *v1.ChainReport {
	cr := &v1.ChainReport{
		Chain: rep.Chain, Records: rep.Records, Ok: rep.OK, FirstBadSeq: rep.FirstBadSeq,
		Problem: rep.Problem, HeadHash: hex.EncodeToString(rep.Head), HeadSeq: rep.HeadSeq,
		Checkpoints: rep.Checkpoints, LastCheckpointSeq: rep.LastCheckpointSeq,
	}
	for _, k := range rep.CheckpointKeys {
		cr.CheckpointKeyIds = append(cr.CheckpointKeyIds, k.ID)
	}
	return cr
}

// chainAnchors validates anchors and groups them by chain.
func chainAnchors(in []*v1.ChainAnchor) (map[string][]storage.ChainHead, error) {
	if len(in) > maxAnchors {
		return nil, badField("anchors", "has %d entries, over the limit of %d", len(in), maxAnchors)
	}
	out := make(map[string][]storage.ChainHead, len(in))
	for i, a := range in {
		hash, err := hex.DecodeString(a.GetHash())
		switch {
		case a.GetChain() == "":
			return nil, badField(fmt.Sprintf("anchors[%d].chain", i), "is required")
		case a.GetSeq() <= 0:
			return nil, badField(fmt.Sprintf("anchors[%d].seq", i), "must be positive, not %d", a.GetSeq())
		case err != nil || len(hash) != storage.HashSize:
			return nil, badField(fmt.Sprintf("anchors[%d].hash", i), "must be %d bytes of hex (an entry_hash or head_hash)", storage.HashSize)
		}
		out[a.GetChain()] = append(out[a.GetChain()], storage.ChainHead{Seq: a.GetSeq(), Hash: hash})
	}
	return out, nil
}

// auditQuery converts a wire filter, validating enum values.
func auditQuery(f *v1.AuditFilter) (storage.AuditQuery, error) {
	q := storage.AuditQuery{
		Org: f.GetOrgId(), Team: f.GetTeamId(), Agent: f.GetAgentId(),
		SessionID: f.GetSessionId(), TraceID: f.GetTraceId(),
	}
	if t := f.GetActionType(); t != v1.ActionType_ACTION_TYPE_UNSPECIFIED {
		if _, ok := v1.ActionType_name[int32(t)]; !ok {
			return q, badField("filter.action_type", "unknown value %d", t)
		}
		q.Kind = action.Kind(t)
	}
	if d := f.GetDecision(); d != v1.Decision_DECISION_UNSPECIFIED {
		if q.Decision = decisionFromProto(d); q.Decision == action.DecisionUnspecified {
			return q, badField("filter.decision", "unknown value %d", d)
		}
	}
	switch ev := storage.RecordEvent(f.GetEvent()); ev {
	case "", storage.EventDecision, storage.EventRejected, storage.EventGovernance:
		q.Event = ev
	default:
		return q, badField("filter.event", "must be decision, rejected or governance, not %q", ev)
	}
	if f.GetSince() != nil {
		q.Since = f.GetSince().AsTime()
	}
	if f.GetUntil() != nil {
		q.Until = f.GetUntil().AsTime()
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return q, badField("filter.until", "is before filter.since")
	}
	return q, nil
}

// AuditRecordToProto renders a stored record on the wire.
func AuditRecordToProto(r *storage.AuditRecord) *v1.AuditRecord {
	return &v1.AuditRecord{
		Chain: r.Chain, Seq: r.Seq, Id: r.ID, Time: timestamppb.New(r.Time), Event: string(r.Event),
		Agent:     &v1.AgentId{OrgId: r.Agent.Org, TeamId: r.Agent.Team, AgentId: r.Agent.Agent},
		SessionId: r.SessionID, TraceId: r.TraceID, SpanId: r.SpanID,
		ActionType: v1.ActionType(r.Kind), PayloadJson: string(r.Payload),
		Decision: decisionToProto(r.Decision), RuleId: r.RuleID, PolicyVersion: r.PolicyVersion,
		EnforcementMode: modeToProto(r.Mode), ShadowDecision: decisionToProto(r.ShadowDecision),
		Reason: r.Reason, Latency: durationpb.New(r.Latency),
		PreviousHash: hex.EncodeToString(r.PrevHash), EntryHash: hex.EncodeToString(r.Hash),
	}
}

// AuditRecordFromProto is the inverse of AuditRecordToProto, for records read
// back from an export: every field the hash covers is restored exactly, so
// storage.HashRecord of the result matches entry_hash when the record is
// intact. Malformed hashes and unknown enum values are errors.
func AuditRecordFromProto(p *v1.AuditRecord) (*storage.AuditRecord, error) {
	prev, err := hex.DecodeString(p.GetPreviousHash())
	if err != nil {
		return nil, fmt.Errorf("previous_hash of record %s/%d is not hex: %w", p.GetChain(), p.GetSeq(), err)
	}
	hash, err := hex.DecodeString(p.GetEntryHash())
	if err != nil {
		return nil, fmt.Errorf("entry_hash of record %s/%d is not hex: %w", p.GetChain(), p.GetSeq(), err)
	}
	r := &storage.AuditRecord{
		Chain: p.GetChain(), Seq: p.GetSeq(), ID: p.GetId(), Event: storage.RecordEvent(p.GetEvent()),
		Agent:     action.AgentID{Org: p.GetAgent().GetOrgId(), Team: p.GetAgent().GetTeamId(), Agent: p.GetAgent().GetAgentId()},
		SessionID: p.GetSessionId(), TraceID: p.GetTraceId(), SpanID: p.GetSpanId(), Kind: action.Kind(p.GetActionType()),
		Decision: decisionFromProto(p.GetDecision()), RuleID: p.GetRuleId(), PolicyVersion: p.GetPolicyVersion(),
		Mode: modeFromProto(p.GetEnforcementMode()), ShadowDecision: decisionFromProto(p.GetShadowDecision()),
		Reason: p.GetReason(), PrevHash: prev, Hash: hash,
	}
	if p.GetPayloadJson() != "" {
		r.Payload = []byte(p.GetPayloadJson())
	}
	if p.GetTime() != nil {
		r.Time = p.GetTime().AsTime()
	}
	if p.GetLatency() != nil {
		r.Latency = p.GetLatency().AsDuration()
	}
	for name, ok := range map[string]bool{
		"decision":         decisionToProto(r.Decision) == p.GetDecision(),
		"shadow_decision":  decisionToProto(r.ShadowDecision) == p.GetShadowDecision(),
		"enforcement_mode": modeToProto(r.Mode) == p.GetEnforcementMode(),
	} {
		if !ok {
			return nil, fmt.Errorf("record %s/%d has an unknown %s", p.GetChain(), p.GetSeq(), name)
		}
	}
	return r, nil
}

// storeStatus maps storage errors to gRPC codes; a bad cursor is the caller's fault.
func storeStatus(what string, err error) error {
	switch {
	case errors.Is(err, storage.ErrUnavailable):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	case errors.Is(err, storage.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	case errors.Is(err, storage.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	}
	return status.Error(codes.Internal, fmt.Sprintf("%s: %v", what, err))
}
