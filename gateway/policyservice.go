package gateway

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
)

// MaxBatch is the largest number of checks one BatchCheck may carry.
const MaxBatch = 1000

// PolicyService implements agentassembly.v1.PolicyService on a Core.
type PolicyService struct {
	v1.UnimplementedPolicyServiceServer
	core *Core
	// versions manages stored policy versions (see WithVersions); nil
	// leaves the lifecycle methods failing with FAILED_PRECONDITION.
	versions *Reloader
	// audit is the log SimulatePolicy replays (see WithAudit).
	audit AuditQuerier
	// auth proves the agent of CheckAction, BatchCheck and RecordUsage
	// (see WithAgentAuth); nil trusts the named agent.
	auth *AgentAuth
}

var _ v1.PolicyServiceServer = (*PolicyService)(nil)

// NewPolicyService returns the PolicyService for core.
func NewPolicyService(core *Core) *PolicyService { return &PolicyService{core: core} }

// WithAgentAuth makes CheckAction, BatchCheck and RecordUsage require the
// named agent's credential (see AgentAuth). It returns s.
func (s *PolicyService) WithAgentAuth(a *AgentAuth) *PolicyService {
	s.auth = a
	return s
}

// CheckAction implements PolicyService.CheckAction.
func (s *PolicyService) CheckAction(ctx context.Context, req *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	if err := s.authCheck(ctx, "CheckAction", req); err != nil {
		return nil, err
	}
	resp, err := s.core.Check(ctx, req)
	if err != nil {
		return nil, requestStatus(err)
	}
	return resp, nil
}

// BatchCheck implements PolicyService.BatchCheck. Each request is decided
// and audited on its own; a malformed one is answered DENY with a reason that
// names the field, without failing the others.
func (s *PolicyService) BatchCheck(ctx context.Context, req *v1.BatchCheckRequest) (*v1.BatchCheckResponse, error) {
	n := len(req.GetRequests())
	if n == 0 {
		return nil, requestStatus(badField("requests", "at least one request is required"))
	}
	if n > MaxBatch {
		return nil, requestStatus(badField("requests", "has %d entries, over the limit of %d", n, MaxBatch))
	}
	// Every request must prove its agent before any is decided: a batch
	// with one unauthenticated request changes nothing.
	for _, r := range req.GetRequests() {
		if err := s.authCheck(ctx, "BatchCheck", r); err != nil {
			return nil, err
		}
	}
	out := make([]*v1.CheckActionResponse, n)
	for i, r := range req.GetRequests() {
		resp, err := s.core.Check(ctx, r)
		if err != nil {
			resp = &v1.CheckActionResponse{
				Decision:     v1.Decision_DENY,
				PolicyRuleId: "request",
				Reason:       fmt.Sprintf("invalid request: requests[%d].%s", i, err.Error()),
			}
		}
		out[i] = resp
	}
	return &v1.BatchCheckResponse{Responses: out}, nil
}

// authCheck authenticates the agent a check names; a request that names no
// agent is given the agent its credential proves.
func (s *PolicyService) authCheck(ctx context.Context, surface string, req *v1.CheckActionRequest) error {
	if !s.auth.Enabled() {
		return nil
	}
	id, err := s.auth.AuthenticateProto(ctx, surface, req.GetCredentialToken(), req.GetAgent())
	if err != nil {
		return err
	}
	if req.GetAgent() == nil {
		req.Agent = agentIDTo(id)
	}
	return nil
}

// ExplainAction implements PolicyService.ExplainAction: the decision and the
// evaluation trace, without an audit record.
func (s *PolicyService) ExplainAction(ctx context.Context, req *v1.CheckActionRequest) (*v1.ExplainActionResponse, error) {
	res, trace, err := s.core.Explain(req)
	if err != nil {
		return nil, requestStatus(err)
	}
	return &v1.ExplainActionResponse{Result: res, Trace: trace}, nil
}

// ValidatePolicy implements PolicyService.ValidatePolicy.
func (s *PolicyService) ValidatePolicy(ctx context.Context, req *v1.ValidatePolicyRequest) (*v1.ValidatePolicyResponse, error) {
	if len(req.GetDocuments()) == 0 {
		return nil, requestStatus(badField("documents", "at least one document is required"))
	}
	docs, problems := parseSources(req.GetDocuments())
	if len(problems) == 0 {
		snap, err := policy.Compile(docs, policy.Version(docs))
		if err == nil {
			err = ValidateScanPatterns(snap)
		}
		if err != nil {
			problems = append(problems, policyProblems(err)...)
		}
	}
	resp := &v1.ValidatePolicyResponse{Valid: len(problems) == 0, Problems: problems}
	if resp.Valid {
		resp.Fingerprint = policy.Version(docs)
	}
	return resp, nil
}

// parseSources parses every document, collecting all problems.
func parseSources(srcs []*v1.PolicyDocumentSource) ([]*policy.Document, []*v1.PolicyProblem) {
	var docs []*policy.Document
	var problems []*v1.PolicyProblem
	for i, src := range srcs {
		name := src.GetName()
		if name == "" {
			name = fmt.Sprintf("documents[%d]", i)
		}
		d, err := policy.Parse(name, []byte(src.GetYaml()))
		if err != nil {
			problems = append(problems, policyProblems(err)...)
			continue
		}
		docs = append(docs, d)
	}
	return docs, problems
}

// policyProblems flattens policy errors into wire problems.
func policyProblems(err error) []*v1.PolicyProblem {
	var list policy.Errors
	if errors.As(err, &list) {
		out := make([]*v1.PolicyProblem, 0, len(list))
		for _, e := range list {
			out = append(out, problemOf(e))
		}
		return out
	}
	var ve *policy.ValidationError
	if errors.As(err, &ve) {
		return []*v1.PolicyProblem{problemOf(ve)}
	}
	return []*v1.PolicyProblem{{Message: err.Error()}}
}

func problemOf(e *policy.ValidationError) *v1.PolicyProblem {
	return &v1.PolicyProblem{File: e.File, Line: int32(e.Line), Column: int32(e.Column), Field: e.Field, Message: e.Msg}
}

// requestStatus maps a request error to INVALID_ARGUMENT with a BadRequest
// detail naming the field; other errors become INTERNAL.
func requestStatus(err error) error {
	var re *RequestError
	if !errors.As(err, &re) {
		return status.Error(codes.Internal, err.Error())
	}
	st := status.New(codes.InvalidArgument, "invalid request: "+re.Error())
	if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: re.Field, Description: re.Msg},
	}}); derr == nil {
		st = d
	}
	return st.Err()
}
