package gateway

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage"
)

// ApprovalService implements agentassembly.v1.ApprovalService on a Core.
type ApprovalService struct {
	v1.UnimplementedApprovalServiceServer
	core *Core
	// auth proves that WaitApproval's caller is the approval's agent (see
	// WithAgentAuth).
	auth *AgentAuth
}

var _ v1.ApprovalServiceServer = (*ApprovalService)(nil)

// NewApprovalService returns the ApprovalService for core.
func NewApprovalService(core *Core) *ApprovalService { return &ApprovalService{core: core} }

// WithAgentAuth makes WaitApproval require the credential of the approval's
// agent (x-aa-credential-token metadata or an agent client certificate). It
// returns s.
func (s *ApprovalService) WithAgentAuth(a *AgentAuth) *ApprovalService {
	s.auth = a
	return s
}

func (s *ApprovalService) store() (ApprovalStore, error) {
	if s.core.approvals == nil {
		return nil, status.Error(codes.FailedPrecondition, "this gateway has no approval store")
	}
	return s.core.approvals, nil
}

// ListPending implements ApprovalService.ListPending.
func (s *ApprovalService) ListPending(ctx context.Context, req *v1.ListPendingRequest) (*v1.ListApprovalsResponse, error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	f := storage.ApprovalFilter{Status: storage.ApprovalPending, Org: req.GetOrgId(), Team: req.GetTeamId(), Limit: int(req.GetLimit())}
	if req.GetStatus() != v1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED {
		if f.Status = approvalStatusFrom(req.GetStatus()); f.Status == "" {
			return nil, requestStatus(badField("status", "unknown value %d", req.GetStatus()))
		}
	}
	if f.Limit < 0 || f.Limit > 1000 {
		return nil, requestStatus(badField("limit", "must be between 0 and 1000"))
	}
	list, err := st.ListApprovals(ctx, f)
	if err != nil {
		return nil, s.core.metrics.storeStatus(storeOpApprovals, "list approvals", err)
	}
	out := &v1.ListApprovalsResponse{Approvals: make([]*v1.Approval, len(list))}
	for i, a := range list {
		out.Approvals[i] = ApprovalToProto(a)
	}
	return out, nil
}

// GetApproval implements ApprovalService.GetApproval.
func (s *ApprovalService) GetApproval(ctx context.Context, req *v1.GetApprovalRequest) (*v1.Approval, error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, requestStatus(badField("id", "is required"))
	}
	a, err := st.GetApproval(ctx, req.GetId())
	if err != nil {
		return nil, s.core.metrics.storeStatus(storeOpApprovals, "get approval "+req.GetId(), err)
	}
	return ApprovalToProto(a), nil
}

// Decide implements ApprovalService.Decide.
func (s *ApprovalService) Decide(ctx context.Context, req *v1.DecideRequest) (*v1.Approval, error) {
	if _, err := s.store(); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, requestStatus(badField("id", "is required"))
	}
	if req.GetDecidedBy() == "" && auth.Principal(ctx) == "" {
		return nil, requestStatus(badField("decided_by", "is required: who decides (recorded in the audit log)"))
	}
	if err := checkID("decided_by", req.GetDecidedBy(), false); err != nil {
		return nil, requestStatus(err)
	}
	// decided_by defaults to the authenticated operator's key name; the
	// audit record names the key either way (auditApproval).
	by := authorOf(ctx, req.GetDecidedBy())
	if len(req.GetComment()) > 4096 {
		return nil, requestStatus(badField("comment", "is over 4096 bytes"))
	}
	a, err := s.core.DecideApproval(ctx, req.GetId(), req.GetApprove(), by, req.GetComment())
	if err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, status.Errorf(codes.FailedPrecondition, "decide approval %s: %v (it was already decided or has expired)", req.GetId(), err)
		}
		return nil, storeStatus("decide approval "+req.GetId(), err)
	}
	return ApprovalToProto(a), nil
}

// WaitApproval implements ApprovalService.WaitApproval: it returns when the
// approval is decided or expires, or when the caller's deadline passes.
func (s *ApprovalService) WaitApproval(ctx context.Context, req *v1.GetApprovalRequest) (*v1.Approval, error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	// Prove the caller first: an unauthenticated caller learns nothing, not
	// even whether the approval exists. A runtime may present the tokens of
	// all its agents; one must be the approval's agent's.
	proven, err := s.auth.AuthenticateAll(ctx, "WaitApproval")
	if err != nil {
		return nil, err
	}
	a, err := st.GetApproval(ctx, req.GetId())
	if err != nil {
		return nil, s.core.metrics.storeStatus(storeOpApprovals, "get approval "+req.GetId(), err)
	}
	if proven != nil && !proven[a.Agent] {
		return nil, s.auth.RefuseMismatch(ctx, "WaitApproval", a.Agent)
	}
	wctx, cancel := context.WithDeadline(ctx, a.ExpiresAt)
	defer cancel()
	got, err := st.WaitApproval(wctx, a.ID)
	switch {
	case err == nil:
		return ApprovalToProto(got), nil
	case ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case wctx.Err() != nil:
		s.core.expireApproval(a)
		if got, err := st.GetApproval(context.WithoutCancel(ctx), a.ID); err == nil {
			return ApprovalToProto(got), nil
		}
		a.Status = storage.ApprovalExpired
		return ApprovalToProto(a), nil
	}
	return nil, storeStatus("wait for approval "+a.ID, err)
}

// WatchApprovals implements ApprovalService.WatchApprovals: every approval
// created or decided after the call, on any replica, filtered by org/team.
func (s *ApprovalService) WatchApprovals(req *v1.WatchApprovalsRequest, stream grpc.ServerStreamingServer[v1.Approval]) error {
	st, err := s.store()
	if err != nil {
		return err
	}
	ch, err := st.Subscribe(stream.Context(), TopicApprovalEvents)
	if err != nil {
		return s.core.metrics.storeStatus(storeOpApprovals, "watch approvals", err)
	}
	// Headers go out once the subscription is in place: a client that waits
	// for them (stream.Header()) misses no approval created afterwards.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case id, ok := <-ch:
			if !ok {
				return status.Error(codes.Unavailable, "approval stream ended; reconnect")
			}
			a, err := st.GetApproval(stream.Context(), string(id))
			if err != nil {
				continue
			}
			if (req.GetOrgId() != "" && a.Agent.Org != req.GetOrgId()) || (req.GetTeamId() != "" && a.Agent.Team != req.GetTeamId()) {
				continue
			}
			if err := stream.Send(ApprovalToProto(a)); err != nil {
				return err
			}
		}
	}
}

// ApprovalToProto renders a stored approval on the wire.
func ApprovalToProto(a *storage.Approval) *v1.Approval {
	return &v1.Approval{
		Id: a.ID, DecisionId: a.DecisionID,
		Agent:      &v1.AgentId{OrgId: a.Agent.Org, TeamId: a.Agent.Team, AgentId: a.Agent.Agent},
		ActionType: v1.ActionType(a.Kind), PayloadJson: string(a.Payload), RuleId: a.RuleID, Reason: a.Reason,
		Status:    approvalStatusTo(a.Status),
		CreatedAt: ts(a.CreatedAt), ExpiresAt: ts(a.ExpiresAt), DecidedAt: ts(a.DecidedAt),
		DecidedBy: a.DecidedBy, Comment: a.Comment,
	}
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func approvalStatusTo(s storage.ApprovalStatus) v1.ApprovalStatus {
	switch s {
	case storage.ApprovalPending:
		return v1.ApprovalStatus_APPROVAL_STATUS_PENDING
	case storage.ApprovalApproved:
		return v1.ApprovalStatus_APPROVAL_STATUS_APPROVED
	case storage.ApprovalRejected:
		return v1.ApprovalStatus_APPROVAL_STATUS_REJECTED
	case storage.ApprovalExpired:
		return v1.ApprovalStatus_APPROVAL_STATUS_EXPIRED
	}
	return v1.ApprovalStatus_APPROVAL_STATUS_UNSPECIFIED
}

func approvalStatusFrom(s v1.ApprovalStatus) storage.ApprovalStatus {
	switch s {
	case v1.ApprovalStatus_APPROVAL_STATUS_PENDING:
		return storage.ApprovalPending
	case v1.ApprovalStatus_APPROVAL_STATUS_APPROVED:
		return storage.ApprovalApproved
	case v1.ApprovalStatus_APPROVAL_STATUS_REJECTED:
		return storage.ApprovalRejected
	case v1.ApprovalStatus_APPROVAL_STATUS_EXPIRED:
		return storage.ApprovalExpired
	}
	return ""
}
