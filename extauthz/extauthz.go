// Package extauthz serves Envoy's ext_authz v3 gRPC API (envoy.service.auth.v3.Authorization/Check) over the gateway's decision core.
//
// Each Check request is mapped to one NETWORK_CALL action and, when the
// request is recognised, to an LLM_CALL (OpenAI, Anthropic, Google or
// Mistral style JSON bodies) and one TOOL_CALL per MCP `tools/call` JSON-RPC
// message. Every action is decided (and so audited) by the Decider; the most
// restrictive decision answers the request.
//
// Identity, in order of trust (the first that names an agent wins):
//   - the mTLS peer principal (attributes.source.principal) when it is a
//     SPIFFE id spiffe://<trust-domain>/org/<org>/team/<team>/agent/<agent>,
//     or the Istio form spiffe://<trust-domain>/ns/<org>/sa/<agent> whose team
//     is the aa_team context extension (empty when unset); other principals
//     are ignored;
//   - the context extensions aa_org, aa_team and aa_agent, all three set per
//     route or virtual host in the Envoy configuration;
//   - the header Options.AgentHeader (default x-aa-agent-id) as
//     org/team/agent; it can be forged, so prefer the two sources above;
//   - otherwise the agent is Unattributed (empty org and team), which the
//     policy's `unattributed` treatment decides: never a silent allow.
//
// Mapping:
//   - NETWORK_CALL, always: host from the authority without port (lower
//     case), port from the authority or the scheme (443 for https, else 80),
//     protocol = scheme, method, path without query or fragment.
//   - LLM_CALL for a POST to api.openai.com, api.anthropic.com,
//     generativelanguage.googleapis.com or api.mistral.ai (providers openai,
//     anthropic, google, mistral): model from the JSON "model" field or the
//     Gemini path (/models/<model>:generateContent); completion tokens from
//     max_tokens, max_completion_tokens, max_output_tokens or
//     generationConfig.maxOutputTokens (the largest set); prompt tokens are
//     estimated as the body size / 4 (rounded up), the size coming from the
//     body or, when it is not inspected, from Envoy's size or content-length.
//     The inspected body is passed as the prompt, so the core scans it for
//     credentials (it is never stored).
//   - TOOL_CALL for each JSON-RPC message (single or batch) with method
//     tools/call: name from params.name, args_json from params.arguments
//     (compacted), source "mcp", target_url scheme://authority/path.
//
// The body (attributes.request.http.raw_body, else body) is inspected only
// when Envoy sent it whole and it is at most Options.MaxBodyBytes. A larger,
// truncated (x-envoy-auth-partial-body) or missing body is judged on headers
// alone, and the answer says so in the x-aa-note header and the reason
// ("body not inspected: over N bytes").
//
// The headers x-aa-session-id and x-aa-approval-id, when sent, name the
// session in the audit log and present an approval granted earlier.
//
// Answers:
//   - ALLOW: an OK response adding `x-aa-decision: allow` and
//     `x-aa-decision-id`; the agent identity header is always removed, and
//     `authorization` and `x-api-key` too when Options.StripCredentials is set.
//     When Options.Secrets and Options.Injections are set and the destination
//     matches an allowlist entry with `inject: {header, value}`, the header is
//     set (replacing the agent's) to value with each ${NAME} replaced by the
//     secret; a secret that is not set turns the answer into a 403 naming it
//     (the secret value never appears in reasons, logs or audit).
//   - REDACT: allowed for the network hop with `x-aa-decision: redact`. The
//     body is not rewritten here (ext_authz cannot rewrite request bodies);
//     callers that need redaction use the SDK path.
//   - DENY and PENDING: a denied response, 403 for policy, 429 with
//     `retry-after` when a rate limit or budget denied, 503 when the decision
//     did not come back within Options.Timeout (fail closed), with a JSON body
//     {"decision","rule","reason","decision_id","approval_id"}.
//
// The gRPC status inside the CheckResponse is OK for allowed requests and
// PERMISSION_DENIED for every denial. Check never returns a gRPC error, so
// Envoy's failure_mode_allow can never turn a gateway fault into an allow.
package extauthz

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/extauthz/codec"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/internal/monoclock"
	"github.com/agent-assembly/agent-assembly/policy"
)

// Defaults applied by New to zero Options fields.
const (
	// DefaultAgentHeader carries the agent id as org/team/agent.
	DefaultAgentHeader = "x-aa-agent-id"
	// DefaultMaxBodyBytes is the largest body that is inspected.
	DefaultMaxBodyBytes = 64 << 10
	// DefaultTimeout bounds one Check; Envoy's own default is 200ms.
	DefaultTimeout = 150 * time.Millisecond
)

// Response header names set by the server.
const (
	// HeaderDecision carries the decision name (allow, redact, deny, pending).
	HeaderDecision = "x-aa-decision"
	// HeaderDecisionID carries the id of the audit record that decided.
	HeaderDecisionID = "x-aa-decision-id"
	// HeaderNote carries a remark about the check, such as an uninspected body.
	HeaderNote = "x-aa-note"
	// HeaderApprovalID, on a request, presents an approval granted earlier.
	HeaderApprovalID = "x-aa-approval-id"
	// HeaderSessionID, on a request, names the agent session for the audit log.
	HeaderSessionID = "x-aa-session-id"
	// HeaderAgent, added to allowed requests, carries the agent identity as
	// resolved by the gateway (org/team/agent), for the ext_proc server later
	// in the filter chain. It replaces any value the agent sent.
	HeaderAgent = "x-aa-agent"
	// HeaderUsageID, added to allowed LLM calls that reserved budget, is the
	// decision id whose reservation the response's actual usage settles.
	HeaderUsageID = "x-aa-usage-id"
)

// Decider decides and audits one action. *gateway.Core satisfies it.
// Decide must not keep a once it has returned: its memory serves a later
// Check.
type Decider interface {
	Decide(ctx context.Context, a *action.Action, start time.Time, opts gateway.CheckOptions) gateway.Outcome
}

// deadlineDecider is a Decider that ends every wait of a decision by
// gateway.CheckOptions.Deadline on its own (*gateway.Core does). A Check
// runs such a decider on its own goroutine; any other runs on a decider
// goroutine that the Check stops waiting for at the deadline.
type deadlineDecider interface {
	Decider
	HonoursDeadline() bool
}

var _ deadlineDecider = (*gateway.Core)(nil)

// Options configures a Server. Zero fields take the documented defaults.
type Options struct {
	// Logger receives timeouts and decider faults; nil discards.
	Logger *slog.Logger
	// AgentHeader is the request header naming the agent as org/team/agent,
	// used when neither the peer principal nor the route's context
	// extensions identify it. Default DefaultAgentHeader.
	AgentHeader string
	// MaxBodyBytes is the largest request body inspected; larger or
	// truncated bodies are judged on headers alone. Default DefaultMaxBodyBytes.
	MaxBodyBytes int
	// Timeout bounds the decision of one Check; past it the request is
	// denied with HTTP 503 (fail closed). Default DefaultTimeout.
	Timeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// StripCredentials removes the `authorization` and `x-api-key` request
	// headers from allowed requests, for deployments where the egress proxy
	// injects the upstream credentials so the agent never holds them.
	StripCredentials bool
	// Secrets resolves the ${NAME} placeholders of injected headers. With
	// Injections it enables credential injection; nil disables it.
	Secrets SecretSource
	// Injections returns the allowlist entries with an inject block that
	// apply to agent (policy.Snapshot.Settings(agent).Injections). On ALLOW
	// of a request whose host and port match one, the header is set to its
	// value with every ${NAME} replaced by the secret, replacing any value
	// the agent sent. A secret that is not set denies the request (403).
	Injections func(agent action.AgentID) []policy.Injection
	// Metrics receives the ext_authz counters; nil keeps them unregistered.
	Metrics *Metrics
	// Auth, when set and enabled, requires every Check to prove its agent
	// (see Server.authenticate); nil trusts the identity sources above.
	Auth Authenticator
}

// Server implements envoy.service.auth.v3.Authorization.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	d   Decider
	o   Options
	log *slog.Logger
	// gone lists the headers removed from allowed requests, by whether the
	// answer names no agent and whether it carries no usage id (the
	// gateway's own headers are then removed too). Built once in New and
	// shared read-only by every answer.
	gone [2][2][]string
	// overNote is the note of a body over Options.MaxBodyBytes.
	overNote string
	// inline: d honours CheckOptions.Deadline, so Checks decide on their
	// own goroutine (decideInline).
	inline bool
	// checkInfo and checkCall are what the gRPC server's interceptor gets
	// with every Check (checkHandler), made once.
	checkInfo *grpc.UnaryServerInfo
	checkCall grpc.UnaryHandler
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New builds a Server over d, applying defaults to opts.
func New(d Decider, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.AgentHeader == "" {
		opts.AgentHeader = DefaultAgentHeader
	}
	opts.AgentHeader = lower(opts.AgentHeader)
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	gone := []string{opts.AgentHeader, gateway.CredentialTokenHeader}
	if opts.StripCredentials {
		gone = append(gone, "authorization", "x-api-key")
	}
	srv := &Server{d: d, o: opts, log: opts.Logger,
		overNote: fmt.Sprintf("body not inspected: over %d bytes", opts.MaxBodyBytes)}
	if dd, ok := d.(deadlineDecider); ok {
		srv.inline = dd.HonoursDeadline()
	}
	srv.checkInfo = &grpc.UnaryServerInfo{Server: srv, FullMethod: authv3.Authorization_Check_FullMethodName}
	srv.checkCall = srv.check
	for noAgent := range 2 {
		for noUsage := range 2 {
			g := slices.Clip(gone)
			if noAgent == 1 {
				g = append(g, HeaderAgent)
			}
			if noUsage == 1 {
				g = append(g, HeaderUsageID)
			}
			srv.gone[noAgent][noUsage] = slices.Clip(g)
		}
	}
	return srv
}

// Register adds the Authorization service to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&serviceDesc, s)
}

// serviceDesc is authv3.Authorization_ServiceDesc with checkHandler for
// Check. The generated handler allocated the interceptor's
// grpc.UnaryServerInfo and a closure over the server for every call; Envoy
// calls Check for every request it forwards.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: authv3.Authorization_ServiceDesc.ServiceName,
	HandlerType: (*authv3.AuthorizationServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Check", Handler: checkHandler}},
	Metadata:    authv3.Authorization_ServiceDesc.Metadata,
}

// checkHandler decodes a Check call's request and runs it through the
// server's interceptor, as the generated handler does. The request is a
// pooled codec.Request, released once Check has answered: nothing keeps a
// request's messages past its Check (mapping copies what it keeps, and a
// late decision reads its own actions), and the response shares none of
// them.
func checkHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (resp any, err error) {
	s := srv.(*Server)
	in := codec.NewRequest()
	defer in.Release()
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return s.Check(ctx, &in.CheckRequest)
	}
	return interceptor(ctx, &in.CheckRequest, s.checkInfo, s.checkCall)
}

// check is Check as a grpc.UnaryHandler.
func (s *Server) check(ctx context.Context, req any) (any, error) {
	return s.Check(ctx, req.(*authv3.CheckRequest))
}

// verdict is the combined outcome of every action of one request.
type verdict struct {
	gateway.Outcome
	status int    // HTTP status for denials
	note   string // remark for the caller, e.g. body not inspected
	inject []*corev3.HeaderValueOption
	agent  action.AgentID
	// usageID is the decision id of an allowed LLM call, whose budget
	// reservation the response's actual usage settles.
	usageID string
}

// Check decides one HTTP request forwarded by Envoy. It always answers; it
// never returns an error.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := s.o.Now()
	m, err := s.mapRequest(req, start)
	var v verdict
	if err != nil {
		v = verdict{Outcome: gateway.Outcome{
			Decision: action.Deny, RuleID: "extauthz", Reason: err.Error(),
		}, status: 403}
		s.o.Metrics.Malformed.Inc()
	} else if id, aerr := s.authenticated(ctx, m); aerr != nil {
		v = authDenial(aerr)
	} else {
		for i := range m.actions {
			m.actions[i].Agent = id
		}
		if s.inline {
			v = s.decideInline(ctx, m, start)
		} else {
			v = s.decide(ctx, m, start)
		}
		v = s.withInjected(ctx, m, v)
		v.agent = m.actions[0].Agent
		if m.note != "" {
			s.o.Metrics.Uninspected.Inc()
		}
	}
	resp := s.answer(v)
	s.o.Metrics.observe(v, s.o.Now().Sub(start))
	if m != nil && !m.late {
		recycle(m) // nothing refers to it any more: resp holds copies
	}
	return resp, nil
}

// decide runs every action through the decider within the timeout: it
// answers a 503 denial at Options.Timeout, or at the caller's deadline or
// cancellation when sooner, even while the decision is still running.
//
// The decider gets the Check's own context. A gRPC server cancels it as
// soon as Check has answered, so a decision still running at the deadline
// sees its context cancelled once the 503 is sent; the stores' own timeouts
// (the core's registry, limit and audit timeouts) bound it otherwise. No
// context is derived per Check: a context.WithTimeout (a timer, a cancel
// context registered with gRPC's, its done channel) cost about 0.8 µs and 7
// allocations of each check; the deadline is a timer reused from check to
// check instead.
func (s *Server) decide(ctx context.Context, m *mapped, start time.Time) verdict {
	j := decisions.Get().(*decision)
	j.s, j.ctx, j.m, j.start = s, ctx, m, start
	j.timer.Reset(s.o.Timeout)
	deciders().run(j.run)
	var v verdict
	got := false
	select {
	case v = <-j.done:
		got = true
		j.timer.Stop()
	case <-j.timer.C:
	case <-ctx.Done():
		j.timer.Stop()
	}
	if !got && !j.claimed.CompareAndSwap(false, true) {
		v, got = <-j.done, true // the decider finished as the deadline passed: its verdict is on its way
	}
	if got {
		j.s, j.ctx, j.m = nil, nil, nil
		j.claimed.Store(false)
		decisions.Put(j)
		v.note = m.note // the decider has already added it to the reason
		return v
	}
	// Given up: the decision may still be running, so neither j nor m is
	// ever reused; j.late tells it to decide no further action.
	j.late.Store(true)
	m.late = true
	return s.timedOut(ctx, m)
}

// timedOut is the 503 denial of a Check whose decision did not come back by
// its deadline, or before the caller cancelled it (fail closed).
func (s *Server) timedOut(ctx context.Context, m *mapped) verdict {
	reason := fmt.Sprintf("decision not made within %s: failing closed", s.o.Timeout)
	if ctx.Err() == context.Canceled {
		reason = "check cancelled by the caller: failing closed"
	}
	s.log.Warn("ext_authz check timed out", "agent", m.actions[0].Agent.String(), "host", m.actions[0].Network.Host, "timeout", s.o.Timeout)
	return verdict{Outcome: gateway.Outcome{Decision: action.Deny, RuleID: "timeout", Reason: reason}, status: 503, note: m.note}
}

// decideInline decides every action on the Check's own goroutine, with the
// Check's deadline (Options.Timeout, or the caller's deadline when sooner)
// in CheckOptions.Deadline: the decider ends each of its waits on a store
// by then. Handing the decision to another goroutine and back, as decide
// does, cost about 4–6 µs of CPU per check under load (two goroutine
// switches, the deadline's timer, the select).
//
// A decision that ends past the deadline, or after the caller cancelled,
// is answered as decide answers one that did not come back in time: a 503,
// failing closed, and what its verdict reserved is released. A panic in the
// decider is a 503 as well.
func (s *Server) decideInline(ctx context.Context, m *mapped, start time.Time) (v verdict) {
	began := monoclock.Now()
	deadline := monoclock.Time(began + s.o.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	m.opts.Deadline = deadline
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("ext_authz decider failed", "panic", fmt.Sprint(p))
			v = verdict{Outcome: gateway.Outcome{
				Decision: action.Deny, RuleID: "extauthz", Reason: "decision failed: failing closed",
			}, status: 503, note: m.note}
		}
	}()
	v = s.decideAll(ctx, m, start, nil, deadline)
	if ctx.Err() != nil || monoclock.Now()-began > s.o.Timeout {
		// The request never goes ahead: an LLM call the verdict allowed
		// must not keep its budget reservation. Released in the
		// background, so the 503 does not wait for the budget store (m is
		// recycled once the Check returns: the agent is copied).
		if v.usageID != "" {
			go s.release(context.WithoutCancel(ctx), m.actions[0].Agent, v)
		}
		return s.timedOut(ctx, m)
	}
	v.note = m.note
	return v
}

// decision is one Check's decision handed to a decider goroutine. Checks
// answered in time return it to decisions for the next Check, so handing a
// decision over allocates nothing: no closure, no channel, no timer.
type decision struct {
	s     *Server
	ctx   context.Context
	m     *mapped
	start time.Time
	done  chan verdict // buffered: a late decider never blocks
	timer *time.Timer  // the Check's deadline, stopped between uses
	late  atomic.Bool  // the Check has answered without this decision
	// claimed is set by whichever comes first: the decider with its verdict
	// (the Check then waits for it) or the Check giving up (the decider then
	// releases what its verdict reserved, as the request never goes ahead).
	claimed atomic.Bool
	run     func() // work, bound once
}

// decisions pools the decision of Checks answered in time.
var decisions = sync.Pool{New: func() any {
	j := &decision{done: make(chan verdict, 1), timer: time.NewTimer(time.Hour)}
	j.timer.Stop()
	j.run = j.work
	return j
}}

// work decides every action of the Check and sends the verdict; a panic in
// the decider is a 503 denial (fail closed).
func (j *decision) work() {
	defer func() {
		if p := recover(); p != nil {
			j.s.log.Error("ext_authz decider failed", "panic", fmt.Sprint(p))
			if j.claimed.CompareAndSwap(false, true) {
				j.done <- verdict{Outcome: gateway.Outcome{
					Decision: action.Deny, RuleID: "extauthz", Reason: "decision failed: failing closed",
				}, status: 503}
			}
		}
	}()
	v := j.s.decideAll(j.ctx, j.m, j.start, &j.late, time.Time{})
	if j.claimed.CompareAndSwap(false, true) {
		j.done <- v
		return
	}
	// The Check answered 503 without this verdict, so the request never
	// reaches its upstream: an LLM call it allowed must not keep its
	// budget reservation.
	j.s.release(j.ctx, j.m.actions[0].Agent, v)
}

// decideAll decides each action and keeps the most restrictive outcome; the
// first of equally restrictive outcomes wins. It stops before the next
// action once the Check has answered without it (late, when not nil), ctx
// is done or the deadline (when set) has passed.
func (s *Server) decideAll(ctx context.Context, m *mapped, start time.Time, late *atomic.Bool, deadline time.Time) verdict {
	var best gateway.Outcome
	var usageID string
	for i := range m.actions {
		if i > 0 && ((late != nil && late.Load()) || ctx.Err() != nil || (!deadline.IsZero() && time.Now().After(deadline))) {
			break // the caller has already answered (fail closed)
		}
		out := s.d.Decide(ctx, &m.actions[i], start, m.opts)
		if i == 0 || out.Decision > best.Decision {
			best = out
		}
		if m.actions[i].Kind == action.KindLLMCall && (out.Decision == action.Allow || out.Decision == action.Redact) {
			usageID = out.DecisionID
		}
	}
	v := verdict{Outcome: best, status: 403, usageID: usageID}
	if best.Limited {
		v.status = 429
	}
	return v
}

// answer renders a verdict as an ext_authz response.
func (s *Server) answer(v verdict) *authv3.CheckResponse {
	if allowed(v) {
		a := new(okAnswer) // one allocation for the whole OK response
		a.add(HeaderDecision, v.Decision.String())
		a.add(HeaderDecisionID, v.DecisionID)
		if v.note != "" {
			a.add(HeaderNote, v.note)
		}
		// The gateway's own headers are set by the gateway or removed, never
		// passed on as the agent sent them.
		noAgent, noUsage := 1, 1
		if !v.agent.IsZero() {
			a.add(HeaderAgent, v.agent.String())
			noAgent = 0
		}
		if v.usageID != "" {
			a.add(HeaderUsageID, v.usageID)
			noUsage = 0
		}
		gone := s.gone[noAgent][noUsage]
		headers := slices.Clip(a.headers) // an injection appends to a copy
		if len(v.inject) > 0 {
			headers = append(headers, v.inject...)
			gone = withoutInjected(gone, v.inject)
		}
		a.status.Code = int32(code.Code_OK)
		a.ok.Headers, a.ok.HeadersToRemove = headers, gone
		a.http.OkResponse = &a.ok
		a.resp.Status, a.resp.HttpResponse = &a.status, &a.http
		return &a.resp
	}
	decision := v.Decision
	if decision == action.DecisionUnspecified {
		decision = action.Deny
	}
	body, err := json.Marshal(denial{
		Decision: decision.String(), Rule: v.RuleID, Reason: v.Reason,
		DecisionID: v.DecisionID, ApprovalID: v.ApprovalID,
	})
	if err != nil { // cannot happen for strings; keep the denial anyway
		body = []byte(`{"decision":"deny"}`)
	}
	headers := []*corev3.HeaderValueOption{
		setHeader("content-type", "application/json"),
		setHeader(HeaderDecision, decision.String()),
	}
	if v.DecisionID != "" {
		headers = append(headers, setHeader(HeaderDecisionID, v.DecisionID))
	}
	if v.note != "" {
		headers = append(headers, setHeader(HeaderNote, v.note))
	}
	if v.status == 429 {
		headers = append(headers, setHeader("retry-after", retryAfter(v.RetryAfter)))
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code.Code_PERMISSION_DENIED), Message: v.Reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(v.status)},
			Headers: headers,
			Body:    string(body),
		}},
	}
}

// denial is the JSON body of a denied response.
type denial struct {
	Decision   string `json:"decision"`
	Rule       string `json:"rule"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
	ApprovalID string `json:"approval_id"`
}

// retryAfter renders d as whole seconds, rounded up, at least 1.
func retryAfter(d time.Duration) string {
	sec := int64((d + time.Second - 1) / time.Second)
	if sec < 1 {
		sec = 1
	}
	return strconv.FormatInt(sec, 10)
}

// okAnswer holds every message of an OK response, so that answering an
// allowed request allocates once: the response, its status and the first
// four headers the gateway sets (decision, decision id, agent, and the note
// or usage id; a fifth is allocated on its own). gRPC marshals the response
// after Check returns; nothing in it is reused.
type okAnswer struct {
	resp    authv3.CheckResponse
	status  rpcstatus.Status
	http    authv3.CheckResponse_OkResponse
	ok      authv3.OkHttpResponse
	opts    [4]corev3.HeaderValueOption
	vals    [4]corev3.HeaderValue
	headers []*corev3.HeaderValueOption
	list    [5]*corev3.HeaderValueOption
}

// add sets header k to v, replacing any value the agent sent.
func (a *okAnswer) add(k, v string) {
	if a.headers == nil {
		a.headers = a.list[:0]
	}
	n := len(a.headers)
	if n >= len(a.opts) {
		a.headers = append(a.headers, setHeader(k, v))
		return
	}
	o, h := &a.opts[n], &a.vals[n]
	h.Key, h.Value = k, v
	o.Header, o.AppendAction = h, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	a.headers = append(a.headers, o)
}

// setHeader builds a header that replaces any value the agent sent.
func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
