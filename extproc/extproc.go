// Package extproc serves Envoy's external processing API
// (envoy.service.ext_proc.v3.ExternalProcessor/Process) for the two things
// ext_authz cannot do: rewrite a request body and read a response body.
//
// The sidecar's HTTP filter chain is ext_authz, then ext_proc, then the
// router (the xDS server builds it so). ext_authz decides the request and, on
// ALLOW or REDACT, adds the headers x-aa-decision, x-aa-decision-id,
// x-aa-agent (the resolved identity) and, for an LLM call that reserved
// budget, x-aa-usage-id. This server then:
//
//   - request headers: requires the x-aa-decision header (a request that
//     reaches it without an ext_authz decision is answered 403: failing
//     closed) and removes the gateway's internal headers x-aa-agent and
//     x-aa-usage-id so the upstream never sees them;
//   - request body (processing mode BUFFERED): when the decision is redact,
//     or ext_authz judged the request on headers alone because the body was
//     too large (x-aa-note "body not inspected"), scans the body with the
//     agent's scanner and replaces every credential with
//     [REDACTED:<kind>]; when the agent's policy blocks credentials, a body
//     ext_authz did not see is answered 403 instead. Findings in an
//     uninspected body are recorded as a governance audit event that names
//     the kinds, never the values;
//   - response body (BUFFERED): for an LLM call with x-aa-usage-id, reads the
//     provider's usage (OpenAI, Anthropic, Google, Mistral and Cohere JSON
//     bodies, and server-sent event streams) and settles the budget
//     reservation with the tokens actually used; an error response (status
//     not 2xx) releases it.
//
// Every message is answered; a failure inside the server never turns into
// an allow of something that should have been stopped.
package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// Header names shared with the ext_authz server.
const (
	headerDecision   = "x-aa-decision"
	headerDecisionID = "x-aa-decision-id"
	headerAgent      = "x-aa-agent"
	headerUsageID    = "x-aa-usage-id"
	headerNote       = "x-aa-note"
)

// Gateway is what the processor needs from the decision core.
// *gateway.Core satisfies it.
type Gateway interface {
	ScanBody(agent action.AgentID, body []byte, asJSON bool) (gateway.BodyScan, error)
	ReconcileUsage(ctx context.Context, decisionID string, agent *action.AgentID, promptTokens, completionTokens int64) (gateway.Usage, error)
	AuditGovernance(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error
}

var _ Gateway = (*gateway.Core)(nil)

// Options configures a Server.
type Options struct {
	// Logger receives faults and findings; nil discards.
	Logger *slog.Logger
	// Metrics receives the counters; nil keeps them unregistered.
	Metrics *Metrics
	// Auth, when set and enabled, requires every Process stream to prove
	// its agent (x-aa-credential-token metadata, which Envoy's
	// grpc_initial_metadata carries, or an agent client certificate), and
	// the agent ext_authz resolved (x-aa-agent) to be that agent.
	Auth Authenticator
}

// Authenticator proves the agent of a stream. *gateway.AgentAuth
// satisfies it.
type Authenticator interface {
	Enabled() bool
	AuthenticateStream(ctx context.Context, surface string) (action.AgentID, string, error)
}

var _ Authenticator = (*gateway.AgentAuth)(nil)

// Server implements envoy.service.ext_proc.v3.ExternalProcessor.
type Server struct {
	procv3.UnimplementedExternalProcessorServer
	g    Gateway
	log  *slog.Logger
	m    *Metrics
	auth Authenticator
}

var _ procv3.ExternalProcessorServer = (*Server)(nil)

// New builds a Server over g.
func New(g Gateway, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	return &Server{g: g, log: o.Logger, m: o.Metrics, auth: o.Auth}
}

// Register adds the ExternalProcessor service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	procv3.RegisterExternalProcessorServer(r, s)
}

// exchange is what one HTTP request's stream has learnt so far.
type exchange struct {
	proven      *action.AgentID // the stream's authenticated agent (Options.Auth)
	checked     bool            // ext_authz decided the request
	decision    string
	decisionID  string
	usageID     string
	agent       action.AgentID
	uninspected bool // ext_authz judged it on headers alone
	reqJSON     bool
	respStatus  int
	respType    string
	settled     bool
}

// Process handles the messages of one HTTP request, in order.
func (s *Server) Process(stream procv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	var x exchange
	if s.auth != nil && s.auth.Enabled() {
		id, _, err := s.auth.AuthenticateStream(ctx, "ext_proc")
		if err != nil {
			return err
		}
		x.proven = &id
	}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		resp := s.handle(ctx, &x, req)
		if err := stream.Send(resp); err != nil {
			return err
		}
		if _, done := resp.Response.(*procv3.ProcessingResponse_ImmediateResponse); done {
			return nil
		}
	}
}

// handle answers one message.
func (s *Server) handle(ctx context.Context, x *exchange, req *procv3.ProcessingRequest) *procv3.ProcessingResponse {
	switch r := req.Request.(type) {
	case *procv3.ProcessingRequest_RequestHeaders:
		return s.requestHeaders(x, r.RequestHeaders)
	case *procv3.ProcessingRequest_RequestBody:
		return s.requestBody(ctx, x, r.RequestBody)
	case *procv3.ProcessingRequest_ResponseHeaders:
		h := headerMap(r.ResponseHeaders.GetHeaders())
		x.respStatus, _ = strconv.Atoi(h[":status"])
		x.respType = h["content-type"]
		if r.ResponseHeaders.GetEndOfStream() {
			s.settle(ctx, x, nil)
		}
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &procv3.HeadersResponse{}}}
	case *procv3.ProcessingRequest_ResponseBody:
		if r.ResponseBody.GetEndOfStream() {
			s.settle(ctx, x, r.ResponseBody.GetBody())
		}
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseBody{ResponseBody: &procv3.BodyResponse{}}}
	case *procv3.ProcessingRequest_RequestTrailers:
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestTrailers{RequestTrailers: &procv3.TrailersResponse{}}}
	case *procv3.ProcessingRequest_ResponseTrailers:
		s.settle(ctx, x, nil)
		return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &procv3.TrailersResponse{}}}
	}
	s.m.Requests.WithLabelValues("malformed").Inc()
	return deny(403, "extproc", "unknown processing message: failing closed", "")
}

// requestHeaders reads ext_authz's decision and strips the internal headers.
func (s *Server) requestHeaders(x *exchange, h *procv3.HttpHeaders) *procv3.ProcessingResponse {
	m := headerMap(h.GetHeaders())
	x.decision, x.decisionID, x.usageID = m[headerDecision], m[headerDecisionID], m[headerUsageID]
	x.checked = x.decision == "allow" || x.decision == "redact"
	x.uninspected = strings.HasPrefix(m[headerNote], "body not inspected")
	x.reqJSON = strings.Contains(m["content-type"], "json")
	if p := strings.SplitN(m[headerAgent], "/", 3); len(p) == 3 {
		x.agent = action.AgentID{Org: p[0], Team: p[1], Agent: p[2]} // as ext_authz resolved it
	}
	if !x.checked {
		s.m.Requests.WithLabelValues("unchecked").Inc()
		return deny(403, "extproc", "request reached the external processor without an ext_authz decision: failing closed (put the ext_authz filter before ext_proc)", "")
	}
	if x.proven != nil && x.agent != *x.proven {
		s.m.Requests.WithLabelValues("unauthenticated").Inc()
		return deny(403, "agent-auth", "agent credential does not match the request's agent", "")
	}
	s.m.Requests.WithLabelValues(x.decision).Inc()
	return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestHeaders{RequestHeaders: &procv3.HeadersResponse{
		Response: &procv3.CommonResponse{HeaderMutation: &procv3.HeaderMutation{RemoveHeaders: []string{headerAgent, headerUsageID}}},
	}}}
}

// requestBody redacts the body of a REDACT decision or of a body ext_authz
// did not inspect.
func (s *Server) requestBody(ctx context.Context, x *exchange, b *procv3.HttpBody) *procv3.ProcessingResponse {
	pass := &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestBody{RequestBody: &procv3.BodyResponse{}}}
	if !x.checked {
		return deny(403, "extproc", "request body without an ext_authz decision: failing closed", "")
	}
	body := b.GetBody()
	if len(body) == 0 || (x.decision != "redact" && !x.uninspected) {
		return pass
	}
	res, err := s.g.ScanBody(x.agent, body, x.reqJSON)
	if err != nil {
		s.log.Error("ext_proc body scan failed; denying", "decision_id", x.decisionID, "err", err)
		return deny(503, "extproc", "credential scan failed: failing closed", x.decisionID)
	}
	if len(res.Findings) == 0 {
		return pass
	}
	kinds := res.Kinds()
	if x.uninspected {
		s.auditFindings(ctx, x, res, kinds)
		if res.Action.Blocks() {
			s.m.Bodies.WithLabelValues("blocked").Inc()
			return deny(403, "data.credential_action",
				"credentials found in the request body ("+strings.Join(kinds, ", ")+"); the policy blocks actions that carry them", x.decisionID)
		}
		if !res.Action.Redacts() {
			s.m.Bodies.WithLabelValues("alerted").Inc()
			return pass
		}
	}
	s.m.Bodies.WithLabelValues("redacted").Inc()
	s.log.Info("ext_proc redacted a request body", "decision_id", x.decisionID, "agent", x.agent.String(), "kinds", strings.Join(kinds, ","))
	return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_RequestBody{RequestBody: &procv3.BodyResponse{
		Response: &procv3.CommonResponse{
			HeaderMutation: &procv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				setHeader("content-length", strconv.Itoa(len(res.Redacted))),
			}},
			BodyMutation: &procv3.BodyMutation{Mutation: &procv3.BodyMutation_Body{Body: res.Redacted}},
		},
	}}}
}

// auditFindings records credentials found in a body ext_authz did not see.
func (s *Server) auditFindings(ctx context.Context, x *exchange, res gateway.BodyScan, kinds []string) {
	paths := make([]string, 0, len(res.Findings))
	for _, f := range res.Findings {
		if f.Path != "" {
			paths = append(paths, f.Path)
		}
	}
	payload, _ := json.Marshal(struct {
		DecisionID       string   `json:"decision_id"`
		Kinds            []string `json:"kinds"`
		Paths            []string `json:"paths,omitempty"`
		CredentialAction string   `json:"credential_action"`
	}{x.decisionID, kinds, paths, string(res.Action)})
	reason := fmt.Sprintf("credentials in a request body ext_authz did not inspect (%s): %s", strings.Join(kinds, ", "), res.Action)
	if err := s.g.AuditGovernance(context.WithoutCancel(ctx), x.agent, "extproc.body", reason, payload); err != nil {
		s.log.Error("ext_proc audit of body findings failed", "decision_id", x.decisionID, "err", err)
	}
}

// settle reconciles the budget reservation of an LLM call once its
// response is complete. body is nil when the response had none.
func (s *Server) settle(ctx context.Context, x *exchange, body []byte) {
	if x.usageID == "" || x.settled {
		return
	}
	x.settled = true
	var prompt, completion int64
	result := "released"
	if x.respStatus >= 200 && x.respStatus < 300 {
		u, ok := ParseUsage(body, strings.Contains(x.respType, "event-stream"))
		if !ok {
			s.m.Usage.WithLabelValues("unknown").Inc()
			s.log.Warn("ext_proc found no usage in an LLM response; the reservation keeps its estimate", "decision_id", x.usageID, "agent", x.agent.String())
			return
		}
		prompt, completion, result = u.Prompt, u.Completion, "reconciled"
	}
	if _, err := s.g.ReconcileUsage(context.WithoutCancel(ctx), x.usageID, &x.agent, prompt, completion); err != nil {
		s.m.Usage.WithLabelValues("error").Inc()
		s.log.Warn("ext_proc could not settle an LLM budget reservation", "decision_id", x.usageID, "err", err)
		return
	}
	s.m.Usage.WithLabelValues(result).Inc()
}

// deny answers the request immediately with a JSON body like ext_authz's.
func deny(code int, rule, reason, decisionID string) *procv3.ProcessingResponse {
	body, _ := json.Marshal(struct {
		Decision   string `json:"decision"`
		Rule       string `json:"rule"`
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id"`
	}{"deny", rule, reason, decisionID})
	return &procv3.ProcessingResponse{Response: &procv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &procv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)},
		Headers: &procv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
			setHeader("content-type", "application/json"),
			setHeader(headerDecision, "deny"),
		}},
		Body:    body,
		Details: "aa_" + strings.ReplaceAll(rule, ".", "_"),
	}}}
}

// headerMap flattens Envoy's header map (values in value or raw_value),
// keys lower-cased.
func headerMap(hm *corev3.HeaderMap) map[string]string {
	out := make(map[string]string, len(hm.GetHeaders()))
	for _, h := range hm.GetHeaders() {
		v := h.GetValue()
		if v == "" {
			v = string(h.GetRawValue())
		}
		out[strings.ToLower(h.GetKey())] = v
	}
	return out
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
