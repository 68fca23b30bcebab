// Package sdkclient is the Go library agent code uses to ask for decisions:
// through the host's aa-runtime socket, or directly from the gateway.
package sdkclient

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/internal/gatewaydial"
	"github.com/agent-assembly/agent-assembly/scan"
)

// Environment variables Dial reads when Options leave them empty. aa-runtime
// exec sets the first two for the agent it starts.
const (
	EnvSocket  = "AA_RUNTIME_SOCKET"
	EnvAgent   = "AA_AGENT_ID"
	EnvGateway = "AA_GATEWAY_ADDR"
	EnvToken   = "AA_CREDENTIAL_TOKEN"
	// EnvTokenFile names a file holding the credential token (written by
	// `aa-runtime token --out`), read when AA_CREDENTIAL_TOKEN is unset.
	EnvTokenFile = "AA_CREDENTIAL_TOKEN_FILE"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 500 * time.Millisecond

// Options configures Dial. Empty fields come from the environment.
type Options struct {
	// Socket is the runtime's socket ($AA_RUNTIME_SOCKET). When set, the
	// client talks to the runtime and never to the gateway.
	Socket string
	// Gateway is the gateway's gRPC address ($AA_GATEWAY_ADDR), used when
	// there is no socket. Several replicas are given comma-separated
	// ("10.0.0.1:50051,10.0.0.2:50051"): calls are spread over them and a
	// call that fails because a replica is unavailable is retried on another.
	Gateway string
	// Token is the credential token for the gateway ($AA_CREDENTIAL_TOKEN).
	Token string
	// Agent is "org/team/agent" ($AA_AGENT_ID). Required for the gateway;
	// for the runtime it is checked against the socket's agent.
	Agent string
	// Timeout bounds calls whose context has no deadline. Default 500ms.
	Timeout time.Duration
	// ApprovalTimeout bounds WaitForApproval. Default 10 minutes.
	ApprovalTimeout time.Duration
	// NoPreflight turns off the local scan that redacts obvious secrets
	// before a request leaves the process.
	NoPreflight bool
	// Logger receives the client's logs. Default: discard.
	Logger *slog.Logger
}

// Client asks for decisions and reports events. It is safe for concurrent use.
type Client struct {
	opts    Options
	agent   *v1.AgentId
	scanner *scan.Scanner
	log     *slog.Logger

	mu   sync.Mutex
	sock *socketConn // runtime mode; redialled when broken

	cc        *grpc.ClientConn // gateway mode
	policy    v1.PolicyServiceClient
	audit     v1.AuditServiceClient
	life      v1.AgentLifecycleServiceClient
	approvals v1.ApprovalServiceClient
	reporter  string
	nextEv    atomic.Uint64
}

// Dial connects to the runtime socket, or else to the gateway.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	env := func(v *string, name string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
	}
	env(&opts.Socket, EnvSocket)
	env(&opts.Gateway, EnvGateway)
	env(&opts.Token, EnvToken)
	if opts.Token == "" {
		if f := os.Getenv(EnvTokenFile); f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("dial: read the credential token ($%s): %w", EnvTokenFile, err)
			}
			opts.Token = strings.TrimSpace(string(b))
		}
	}
	env(&opts.Agent, EnvAgent)
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.ApprovalTimeout <= 0 {
		opts.ApprovalTimeout = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: opts.Logger}
	if opts.Agent != "" {
		p := strings.Split(opts.Agent, "/")
		if len(p) != 3 || p[0] == "" || p[1] == "" || p[2] == "" {
			return nil, fmt.Errorf("dial: agent %q must be org/team/agent", opts.Agent)
		}
		c.agent = &v1.AgentId{OrgId: p[0], TeamId: p[1], AgentId: p[2]}
	}
	if !opts.NoPreflight {
		sc, err := scan.New(scan.Options{})
		if err != nil {
			return nil, fmt.Errorf("dial: build scanner: %w", err)
		}
		c.scanner = sc
	}
	switch {
	case opts.Socket != "":
		ctx, cancel := c.bound(ctx)
		defer cancel()
		sc, err := dialSocket(ctx, opts.Socket, c.agent)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		c.sock = sc
		if c.agent == nil {
			c.agent = sc.welcome.GetAgent()
		}
	case opts.Gateway != "":
		if c.agent == nil {
			return nil, fmt.Errorf("dial: the gateway needs the agent's id (Options.Agent or $%s)", EnvAgent)
		}
		target, dialOpts, err := gatewaydial.Target(opts.Gateway)
		if err != nil {
			return nil, fmt.Errorf("dial gateway: %w", err)
		}
		cc, err := grpc.NewClient(target, append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			return nil, fmt.Errorf("dial gateway %s: %w", opts.Gateway, err)
		}
		c.cc = cc
		c.policy, c.audit, c.life = v1.NewPolicyServiceClient(cc), v1.NewAuditServiceClient(cc), v1.NewAgentLifecycleServiceClient(cc)
		c.approvals = v1.NewApprovalServiceClient(cc)
		c.reporter = "sdk/" + opts.Agent + "/" + uuid.NewString()
	default:
		return nil, fmt.Errorf("dial: no runtime socket ($%s) and no gateway address ($%s)", EnvSocket, EnvGateway)
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc != nil {
		return c.cc.Close()
	}
	if c.sock != nil {
		return c.sock.close()
	}
	return nil
}

// Agent is the agent the client acts for.
func (c *Client) Agent() *v1.AgentId { return c.agent }

func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.opts.Timeout)
}

// socket returns a live runtime connection, redialling a broken one.
func (c *Client) socket(ctx context.Context) (*socketConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sock != nil && !c.sock.broken() {
		return c.sock, nil
	}
	sc, err := dialSocket(ctx, c.opts.Socket, c.agent)
	if err != nil {
		return nil, err
	}
	c.sock = sc
	return sc, nil
}

// Check asks whether the action in req may proceed. It returns the decision
// and nil for ALLOW and REDACT (apply Decision.Redactions first), and an
// *Error matching ErrDenied, ErrPending, ErrUnavailable or ErrInvalid
// otherwise. req is not modified.
func (c *Client) Check(ctx context.Context, req *v1.CheckActionRequest) (*Decision, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	req = proto.Clone(req).(*v1.CheckActionRequest)
	local := c.preflight(req)
	d, err := c.check(ctx, req, false)
	if d != nil && len(local) > 0 {
		d.Redactions = append(local, d.Redactions...)
		if d.Decision == v1.Decision_ALLOW {
			d.Decision = v1.Decision_REDACT
		}
	}
	var e *Error
	if errors.As(err, &e) {
		e.req = req
	}
	return d, err
}

func (c *Client) check(ctx context.Context, req *v1.CheckActionRequest, approval bool) (*Decision, error) {
	if c.cc != nil {
		req.Agent, req.CredentialToken = c.agent, c.opts.Token
		resp, err := c.policy.CheckAction(ctx, req)
		if err != nil {
			return nil, grpcErr(err)
		}
		return verdict(decisionOf(resp, false))
	}
	sc, err := c.socket(ctx)
	if err != nil {
		return nil, unavailableErr(err)
	}
	var rep *v1.RuntimeReply
	if approval {
		m := &v1.RuntimeApproval{ApprovalId: req.GetApprovalId(), Check: req}
		rep, err = sc.call(ctx, v1.RuntimeFrameTag_RUNTIME_FRAME_APPROVAL, m, func(id uint64) { m.RequestId = id })
	} else {
		m := &v1.RuntimeQuery{Check: req, Claims: &v1.SdkClaims{Scanned: c.scanner != nil}}
		rep, err = sc.call(ctx, v1.RuntimeFrameTag_RUNTIME_FRAME_QUERY, m, func(id uint64) { m.RequestId = id })
	}
	if err != nil {
		return nil, unavailableErr(err)
	}
	return replyVerdict(rep)
}

func replyVerdict(rep *v1.RuntimeReply) (*Decision, error) {
	var d *Decision
	if rep.GetCheck() != nil {
		d = decisionOf(rep.GetCheck(), rep.GetCached())
	}
	if e := rep.GetError(); e != nil {
		kind := ErrInvalid
		if e.GetCode() == v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_UNAVAILABLE || e.GetCode() == v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_INTERNAL {
			kind = ErrUnavailable
		}
		if d != nil && d.Decision == v1.Decision_ALLOW { // failed open by the runtime's configuration
			return d, nil
		}
		return d, &Error{Kind: kind, Decision: d, Reason: e.GetMessage()}
	}
	if d == nil {
		return nil, &Error{Kind: ErrUnavailable, Reason: "the runtime sent no decision"}
	}
	return verdict(d)
}

func grpcErr(err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return &Error{Kind: ErrInvalid, Reason: st.Message(), Err: err}
	case codes.PermissionDenied, codes.Unauthenticated:
		return &Error{Kind: ErrDenied, Reason: st.Message(), Err: err}
	}
	return unavailableErr(err)
}

// WaitForApproval waits until a human decides the pending action of err (an
// *Error matching ErrPending from Check) and returns the final decision.
func (c *Client) WaitForApproval(ctx context.Context, err error) (*Decision, error) {
	var e *Error
	if !errors.As(err, &e) || !errors.Is(e, ErrPending) || e.req == nil || e.ApprovalID() == "" {
		return nil, fmt.Errorf("wait for approval: %w is not a pending check", err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.ApprovalTimeout)
		defer cancel()
	}
	req := proto.Clone(e.req).(*v1.CheckActionRequest)
	req.ApprovalId = e.ApprovalID()
	if c.cc != nil {
		// Wait for the human, then present the approval with the action.
		if _, err := c.approvals.WaitApproval(c.withToken(ctx), &v1.GetApprovalRequest{Id: req.ApprovalId}); err != nil && status.Code(err) != codes.DeadlineExceeded {
			return nil, grpcErr(err)
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.Timeout)
		defer cancel()
		return c.check(cctx, req, false)
	}
	return c.check(ctx, req, true)
}

// CheckToolCall checks a call of tool name with args (marshalled to JSON).
func (c *Client) CheckToolCall(ctx context.Context, name string, args any) (*Decision, error) {
	b, err := json.Marshal(args)
	if err != nil {
		return nil, &Error{Kind: ErrInvalid, Reason: "tool arguments are not JSON: " + err.Error(), Err: err}
	}
	return c.Check(ctx, &v1.CheckActionRequest{ActionType: v1.ActionType_TOOL_CALL,
		Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: string(b)}}})
}

// CheckLLMCall checks a call of model at provider expecting about
// promptTokens (for the budget); prompt, when given, is scanned.
func (c *Client) CheckLLMCall(ctx context.Context, provider, model string, promptTokens int64, prompt string) (*Decision, error) {
	return c.Check(ctx, &v1.CheckActionRequest{ActionType: v1.ActionType_LLM_CALL,
		Context: &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: provider, Model: model, PromptTokens: promptTokens, Prompt: prompt}}})
}

// CheckHTTP checks an HTTP request to rawURL.
func (c *Client) CheckHTTP(ctx context.Context, method, rawURL string) (*Decision, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Hostname() == "" {
		return nil, &Error{Kind: ErrInvalid, Reason: fmt.Sprintf("url %q has no host", rawURL), Err: err}
	}
	port := 80
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return nil, &Error{Kind: ErrInvalid, Reason: fmt.Sprintf("url %q has a bad port", rawURL), Err: err}
		}
	}
	return c.Check(ctx, &v1.CheckActionRequest{ActionType: v1.ActionType_NETWORK_CALL,
		Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{
			Host: u.Hostname(), Port: uint32(port), Protocol: u.Scheme, Method: method, Path: u.EscapedPath()}}})
}

// CheckExec checks running command with args.
func (c *Client) CheckExec(ctx context.Context, command string, args ...string) (*Decision, error) {
	return c.Check(ctx, &v1.CheckActionRequest{ActionType: v1.ActionType_PROCESS_EXEC,
		Context: &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: command, Args: args}}})
}

// ReportUsage reports the actual tokens of an allowed LLM call.
func (c *Client) ReportUsage(ctx context.Context, decisionID, provider, model string, promptTokens, completionTokens int64) (*v1.RecordUsageResponse, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	u := &v1.RecordUsageRequest{DecisionId: decisionID, Provider: provider, Model: model, PromptTokens: promptTokens, CompletionTokens: completionTokens}
	if c.cc != nil {
		u.Agent, u.CredentialToken = c.agent, c.opts.Token
		resp, err := c.policy.RecordUsage(ctx, u)
		if err != nil {
			return nil, grpcErr(err)
		}
		return resp, nil
	}
	sc, err := c.socket(ctx)
	if err != nil {
		return nil, unavailableErr(err)
	}
	m := &v1.RuntimeUsage{Usage: u}
	rep, err := sc.call(ctx, v1.RuntimeFrameTag_RUNTIME_FRAME_USAGE, m, func(id uint64) { m.RequestId = id })
	if err != nil {
		return nil, unavailableErr(err)
	}
	if _, err := replyVerdict(&v1.RuntimeReply{Error: rep.GetError(), Check: &v1.CheckActionResponse{Decision: v1.Decision_ALLOW}}); err != nil {
		return nil, err
	}
	if rep.GetError() != nil {
		return nil, &Error{Kind: ErrUnavailable, Reason: rep.GetError().GetMessage()}
	}
	return rep.GetUsage(), nil
}

// Report records events (what the agent did, after the fact). Through the
// runtime it returns once they are on the runtime's disk.
func (c *Client) Report(ctx context.Context, events ...*v1.RuntimeEvent) error {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	for _, ev := range events {
		if ev.GetAction() != nil {
			ev.Action = proto.Clone(ev.GetAction()).(*v1.CheckActionRequest)
			c.preflight(ev.Action)
		}
	}
	if c.cc != nil {
		req := &v1.ReportEventsRequest{Reporter: c.reporter}
		for _, ev := range events {
			a := ev.GetAction()
			if a != nil {
				a.Agent = c.agent
			}
			req.Events = append(req.Events, &v1.ReportedEvent{
				EventId: strconv.FormatUint(c.nextEv.Add(1), 10), Layer: v1.Layer_LAYER_SDK, Time: timestamppb.Now(),
				Action: a, DecisionId: ev.GetDecisionId(), Reason: ev.GetOutcome(), RuleId: "sdk/event",
			})
		}
		_, err := c.audit.ReportEvents(c.withToken(ctx), req)
		if err != nil {
			return grpcErr(err)
		}
		return nil
	}
	sc, err := c.socket(ctx)
	if err != nil {
		return unavailableErr(err)
	}
	m := &v1.RuntimeEvents{Events: events}
	rep, err := sc.call(ctx, v1.RuntimeFrameTag_RUNTIME_FRAME_EVENTS, m, func(id uint64) { m.RequestId = id })
	if err != nil {
		return unavailableErr(err)
	}
	if e := rep.GetError(); e != nil {
		return &Error{Kind: ErrUnavailable, Reason: e.GetMessage()}
	}
	return nil
}

// Health asks the runtime for its health (runtime mode only).
func (c *Client) Health(ctx context.Context) (*v1.RuntimeHealth, error) {
	if c.cc != nil {
		return nil, errors.New("health: only the runtime answers heartbeats")
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	sc, err := c.socket(ctx)
	if err != nil {
		return nil, unavailableErr(err)
	}
	m := &v1.RuntimeHeartbeat{}
	rep, err := sc.call(ctx, v1.RuntimeFrameTag_RUNTIME_FRAME_HEARTBEAT, m, func(id uint64) { m.RequestId = id })
	if err != nil {
		return nil, unavailableErr(err)
	}
	return rep.GetHealth(), nil
}

// Register proves the agent's identity with key (Ed25519) to the gateway's
// AgentLifecycleService and keeps the credential token it issues for later
// calls. Through a runtime, the runtime holds the identity and Register is
// not needed: it returns an error saying so.
func (c *Client) Register(ctx context.Context, key ed25519.PrivateKey, labels map[string]string) (*v1.RegisterResponse, error) {
	if c.cc == nil {
		return nil, errors.New("register: the runtime registers the agent; call Register only in gateway mode")
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	ch, err := c.life.RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: c.agent})
	if err != nil {
		return nil, fmt.Errorf("register: request challenge: %w", grpcErr(err))
	}
	resp, err := c.life.Register(ctx, &v1.RegisterRequest{
		Agent: c.agent, PublicKey: key.Public().(ed25519.PublicKey), Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, ch.GetNonce()), Labels: labels,
	})
	if err != nil {
		return nil, fmt.Errorf("register: %w", grpcErr(err))
	}
	c.opts.Token = resp.GetCredentialToken()
	return resp, nil
}

// tokenHeader is the metadata key of the agent's credential token on calls
// whose request has no credential_token field (gateway.CredentialTokenHeader).
const tokenHeader = "x-aa-credential-token"

// withToken adds the credential token, when the client has one, to the
// metadata of a call that has no credential_token field (ReportEvents,
// WaitApproval); the gateway refuses those calls without it.
func (c *Client) withToken(ctx context.Context) context.Context {
	if c.opts.Token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, tokenHeader, c.opts.Token)
}

// WrapTool returns fn guarded by policy: each call checks tool name with its
// arguments first (a denied, pending or unavailable check returns the
// *Error without calling fn), then reports the outcome and duration.
func WrapTool[A, R any](c *Client, name string, fn func(context.Context, A) (R, error)) func(context.Context, A) (R, error) {
	return func(ctx context.Context, args A) (R, error) {
		var zero R
		d, err := c.CheckToolCall(ctx, name, args)
		if err != nil {
			return zero, err
		}
		start := time.Now()
		res, ferr := fn(ctx, args)
		outcome := "ok"
		if ferr != nil {
			outcome = "error: " + ferr.Error()
		}
		b, _ := json.Marshal(args)
		ev := &v1.RuntimeEvent{
			Action: &v1.CheckActionRequest{ActionType: v1.ActionType_TOOL_CALL,
				Context: &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: name, ArgsJson: string(b)}}},
			DecisionId: d.DecisionID, Outcome: outcome, Duration: durationpb.New(time.Since(start)),
		}
		if rerr := c.Report(context.WithoutCancel(ctx), ev); rerr != nil {
			c.log.Warn("report tool outcome", "tool", name, "err", rerr)
		}
		return res, ferr
	}
}

// preflight redacts obvious secrets in req's free-form fields in place and
// returns what it replaced, so they never leave the process.
func (c *Client) preflight(req *v1.CheckActionRequest) []*v1.Redaction {
	if c.scanner == nil {
		return nil
	}
	var out []*v1.Redaction
	str := func(p *string, path string) {
		if *p == "" {
			return
		}
		if fs := c.scanner.ScanString(*p); len(fs) > 0 {
			for _, f := range fs {
				out = append(out, &v1.Redaction{Kind: string(f.Kind), Path: path, Start: int32(f.Start), End: int32(f.End), Replacement: f.Redacted})
			}
			*p = scan.Redact(*p, fs)
		}
	}
	switch x := req.GetContext().(type) {
	case *v1.CheckActionRequest_ToolCall:
		if red, fs, err := c.scanner.RedactJSON([]byte(x.ToolCall.GetArgsJson())); err == nil && len(fs) > 0 {
			x.ToolCall.ArgsJson = string(red)
			for _, f := range fs {
				out = append(out, &v1.Redaction{Kind: string(f.Kind), Path: f.Path, Start: int32(f.Start), End: int32(f.End), Replacement: f.Redacted})
			}
		}
		str(&x.ToolCall.TargetUrl, "$.target_url")
	case *v1.CheckActionRequest_LlmCall:
		str(&x.LlmCall.Prompt, "$.prompt")
	case *v1.CheckActionRequest_ToolResult:
		str(&x.ToolResult.Output, "$.output")
	case *v1.CheckActionRequest_ProcessExec:
		for i := range x.ProcessExec.Args {
			str(&x.ProcessExec.Args[i], "$.args["+strconv.Itoa(i)+"]")
		}
	case *v1.CheckActionRequest_NetworkCall:
		str(&x.NetworkCall.Path, "$.path")
	}
	return out
}
