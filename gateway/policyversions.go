package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Limits on what ApplyPolicy and SimulatePolicy accept.
const (
	// MaxPolicyDocuments is the most documents one version may hold.
	MaxPolicyDocuments = 200
	// MaxPolicyBytes caps the total size of one version's documents.
	MaxPolicyBytes = 4 << 20
	// DefaultHistoryLimit is ListPolicyVersions' page size when none is asked.
	DefaultHistoryLimit = 50
	// MaxHistoryLimit caps ListPolicyVersions.
	MaxHistoryLimit = 1000
	// AuthorHeader is the gRPC metadata key naming who applies or rolls back
	// a policy when the request's author field is empty. It is recorded as
	// given: operator authentication is not enforced by this service.
	AuthorHeader = "aa-author"
	// maxMessage caps the free-text reason stored with a version.
	maxMessage = 1000
)

// WithVersions enables ApplyPolicy, GetPolicy, ListPolicyVersions,
// RollbackPolicy and SimulatePolicy over r's store, and returns s.
func (s *PolicyService) WithVersions(r *Reloader) *PolicyService {
	s.versions = r
	return s
}

// store returns the policy store or a FAILED_PRECONDITION status.
func (s *PolicyService) store() (PolicyVersions, error) {
	if s.versions == nil || !s.versions.HasStore() {
		return nil, status.Error(codes.FailedPrecondition, "this gateway keeps no policy versions (it serves policy files only); start it with a store")
	}
	return s.versions.Store(), nil
}

// ApplyPolicy implements PolicyService.ApplyPolicy: validate, store, activate
// on this replica, publish to every replica, and audit who did it and why.
// Invalid documents are rejected with every problem as file:line:column and
// nothing is stored.
func (s *PolicyService) ApplyPolicy(ctx context.Context, req *v1.ApplyPolicyRequest) (*v1.PolicyVersionInfo, error) {
	if _, err := s.store(); err != nil {
		return nil, err
	}
	srcs, err := documentSources(req.GetDocuments())
	if err != nil {
		return nil, requestStatus(err)
	}
	if len(req.GetMessage()) > maxMessage {
		return nil, requestStatus(badField("message", "is %d bytes, over the limit of %d", len(req.GetMessage()), maxMessage))
	}
	if problems := candidateProblems(req.GetDocuments()); len(problems) > 0 {
		return nil, problemsStatus(problems)
	}
	author := authorOf(ctx, req.GetAuthor())
	prev := s.versions.Current()
	pv, err := s.versions.Activate(ctx, srcs, author, req.GetMessage())
	if err != nil {
		return nil, lifecycleStatus("apply policy", err)
	}
	if err := s.auditChange(ctx, "policy.apply", pv.Version, prev, author, req.GetMessage()); err != nil {
		return nil, err
	}
	return versionInfo(pv, true), nil
}

// RollbackPolicy implements PolicyService.RollbackPolicy: activate an
// earlier stored version on every replica.
func (s *PolicyService) RollbackPolicy(ctx context.Context, req *v1.RollbackPolicyRequest) (*v1.PolicyVersionInfo, error) {
	if _, err := s.store(); err != nil {
		return nil, err
	}
	if err := checkVersionName(req.GetVersion()); err != nil {
		return nil, requestStatus(err)
	}
	if len(req.GetMessage()) > maxMessage {
		return nil, requestStatus(badField("message", "is %d bytes, over the limit of %d", len(req.GetMessage()), maxMessage))
	}
	author := authorOf(ctx, req.GetAuthor())
	prev := s.versions.Current()
	pv, err := s.versions.Rollback(ctx, req.GetVersion())
	if err != nil {
		return nil, lifecycleStatus("roll back policy", err)
	}
	if err := s.auditChange(ctx, "policy.rollback", pv.Version, prev, author, req.GetMessage()); err != nil {
		return nil, err
	}
	return versionInfo(pv, true), nil
}

// GetPolicy implements PolicyService.GetPolicy.
func (s *PolicyService) GetPolicy(ctx context.Context, req *v1.GetPolicyRequest) (*v1.PolicyVersionInfo, error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	var pv *storage.PolicyVersion
	switch v := req.GetVersion(); v {
	case "", "active":
		pv, err = st.ActivePolicyVersion(ctx)
	default:
		if err := checkVersionName(v); err != nil {
			return nil, requestStatus(err)
		}
		pv, err = st.GetPolicyVersion(ctx, v)
	}
	if err != nil {
		return nil, lifecycleStatus("get policy", err)
	}
	return versionInfo(pv, true), nil
}

// GetAgentPolicy implements PolicyService.GetAgentPolicy: the active version,
// for the runtime of the agent the credential proves (it compiles the agent's
// kernel rules from it). The documents are the whole policy, as an operator
// with the viewer role would read them: they name secrets, never hold them.
func (s *PolicyService) GetAgentPolicy(ctx context.Context, req *v1.GetAgentPolicyRequest) (*v1.PolicyVersionInfo, error) {
	if s.auth.Enabled() {
		if _, err := s.auth.AuthenticateProto(ctx, "get_agent_policy", req.GetCredentialToken(), req.GetAgent()); err != nil {
			return nil, err
		}
	} else if req.GetAgent() == nil {
		return nil, requestStatus(badField("agent", "is required: the agent whose runtime reads the policy"))
	}
	return s.GetPolicy(ctx, &v1.GetPolicyRequest{})
}

// ListPolicyVersions implements PolicyService.ListPolicyVersions: versions
// newest first, without their documents.
func (s *PolicyService) ListPolicyVersions(ctx context.Context, req *v1.ListPolicyVersionsRequest) (*v1.ListPolicyVersionsResponse, error) {
	st, err := s.store()
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, requestStatus(badField("limit", "must not be negative"))
	case limit == 0:
		limit = DefaultHistoryLimit
	case limit > MaxHistoryLimit:
		limit = MaxHistoryLimit
	}
	list, err := st.PolicyHistory(ctx, limit)
	if err != nil {
		return nil, lifecycleStatus("list policy versions", err)
	}
	out := &v1.ListPolicyVersionsResponse{Versions: make([]*v1.PolicyVersionInfo, 0, len(list))}
	for _, pv := range list {
		out.Versions = append(out.Versions, versionInfo(pv, false))
	}
	return out, nil
}

// auditChange records a policy change as a governance record.
func (s *PolicyService) auditChange(ctx context.Context, rule, version, prev, author, message string) error {
	payload, _ := json.Marshal(map[string]string{"version": version, "previous": prev, "author": author, "message": message})
	reason := fmt.Sprintf("policy version %s activated by %s (previous %s)", version, author, prev)
	if err := s.core.AuditGovernance(ctx, action.AgentID{}, rule, reason, payload); err != nil {
		return status.Errorf(codes.Unavailable, "policy version %s is active but its audit record failed: %v", version, err)
	}
	return nil
}

// candidateProblems parses, compiles and checks documents as the reloader
// will, and returns every problem.
func candidateProblems(srcs []*v1.PolicyDocumentSource) []*v1.PolicyProblem {
	docs, problems := parseSources(srcs)
	if len(problems) > 0 {
		return problems
	}
	if _, err := compile(docs, policy.Version(docs)); err != nil {
		return policyProblems(err)
	}
	return nil
}

// documentSources checks the wire documents and converts them.
func documentSources(docs []*v1.PolicyDocumentSource) ([]storage.PolicyDocument, error) {
	if len(docs) == 0 {
		return nil, badField("documents", "at least one document is required")
	}
	if len(docs) > MaxPolicyDocuments {
		return nil, badField("documents", "has %d entries, over the limit of %d", len(docs), MaxPolicyDocuments)
	}
	seen := make(map[string]bool, len(docs))
	total := 0
	out := make([]storage.PolicyDocument, 0, len(docs))
	for i, d := range docs {
		name := d.GetName()
		field := fmt.Sprintf("documents[%d].name", i)
		switch {
		case name == "":
			return nil, badField(field, "is required (a file name such as team.yaml)")
		case len(name) > 255 || strings.ContainsAny(name, "/\\\x00") || name == "." || name == "..":
			return nil, badField(field, "%q is not a plain file name", name)
		case path.Ext(name) != ".yaml" && path.Ext(name) != ".yml":
			return nil, badField(field, "%q must end in .yaml or .yml", name)
		case seen[name]:
			return nil, badField(field, "%q appears twice", name)
		}
		seen[name] = true
		total += len(d.GetYaml())
		if total > MaxPolicyBytes {
			return nil, badField("documents", "total size is over the limit of %d bytes", MaxPolicyBytes)
		}
		out = append(out, storage.PolicyDocument{Name: name, Source: []byte(d.GetYaml())})
	}
	return out, nil
}

func checkVersionName(v string) error {
	if v == "" {
		return badField("version", "is required")
	}
	if len(v) > 64 || strings.ContainsAny(v, "/\\ \x00") {
		return badField("version", "%q is not a policy version", v)
	}
	return nil
}

// problemsStatus rejects a policy with every problem in the message and as
// BadRequest field violations "file:line:column field".
func problemsStatus(problems []*v1.PolicyProblem) error {
	lines := make([]string, len(problems))
	violations := make([]*errdetails.BadRequest_FieldViolation, len(problems))
	for i, p := range problems {
		lines[i] = problemLine(p)
		violations[i] = &errdetails.BadRequest_FieldViolation{Field: fmt.Sprintf("%s:%d:%d %s", p.GetFile(), p.GetLine(), p.GetColumn(), p.GetField()), Description: p.GetMessage()}
	}
	st := status.New(codes.InvalidArgument, fmt.Sprintf("policy rejected, nothing stored (%d problem(s)):\n%s", len(problems), strings.Join(lines, "\n")))
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: violations}); err == nil {
		st = d
	}
	return st.Err()
}

func problemLine(p *v1.PolicyProblem) string {
	var b strings.Builder
	if p.GetFile() != "" {
		b.WriteString(p.GetFile())
		if p.GetLine() > 0 {
			fmt.Fprintf(&b, ":%d:%d", p.GetLine(), p.GetColumn())
		}
		b.WriteString(": ")
	}
	if p.GetField() != "" {
		b.WriteString(p.GetField() + ": ")
	}
	b.WriteString(p.GetMessage())
	return b.String()
}

// lifecycleStatus maps reloader and store errors to gRPC codes.
func lifecycleStatus(op string, err error) error {
	var list policy.Errors
	var ve *policy.ValidationError
	switch {
	case errors.As(err, &list) || errors.As(err, &ve):
		return problemsStatus(policyProblems(err))
	case errors.Is(err, storage.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v (list versions with `aasm policy list`)", op, err)
	case errors.Is(err, storage.ErrNotSupported):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", op, err)
	case errors.Is(err, storage.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.Unavailable, "%s: %v", op, err)
	}
	var re *RequestError
	if errors.As(err, &re) {
		return requestStatus(err)
	}
	return status.Errorf(codes.Internal, "%s: %v", op, err)
}

// authorOf names the caller: the request's author, else the aa-author
// metadata, else the authenticated operator (the API key's name, see
// auth.Principal), else the peer address. The governance record of the
// change names the key in any case ("by", see withActor).
func authorOf(ctx context.Context, given string) string {
	clean := func(a string) string {
		a = strings.Join(strings.Fields(a), " ")
		if len(a) > 128 {
			a = a[:128]
		}
		return a
	}
	claimed := clean(given)
	if md, ok := metadata.FromIncomingContext(ctx); ok && claimed == "" {
		if v := md.Get(AuthorHeader); len(v) > 0 {
			claimed = clean(v[0])
		}
	}
	if claimed != "" {
		return claimed
	}
	if p := auth.Principal(ctx); p != "" {
		return p
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return "api:" + p.Addr.String()
	}
	return "api"
}

// versionInfo converts a stored version; withDocs includes the documents.
func versionInfo(pv *storage.PolicyVersion, withDocs bool) *v1.PolicyVersionInfo {
	info := &v1.PolicyVersionInfo{Version: pv.Version, Author: pv.Author, Message: pv.Message, Active: pv.Active}
	if !pv.CreatedAt.IsZero() {
		info.CreatedAt = timestamppb.New(pv.CreatedAt)
	}
	if !pv.ActivatedAt.IsZero() {
		info.ActivatedAt = timestamppb.New(pv.ActivatedAt)
	}
	if withDocs {
		for _, d := range pv.Documents {
			info.Documents = append(info.Documents, &v1.PolicyDocumentSource{Name: d.Name, Yaml: string(d.Source)})
		}
	}
	return info
}
