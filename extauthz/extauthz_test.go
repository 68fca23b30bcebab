package extauthz

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// fakeDecider records actions and answers with decide (allow by default).
type fakeDecider struct {
	mu      sync.Mutex
	actions []action.Action
	opts    []gateway.CheckOptions
	decide  func(a *action.Action) gateway.Outcome
	delay   time.Duration
}

func (f *fakeDecider) Decide(ctx context.Context, a *action.Action, _ time.Time, opts gateway.CheckOptions) gateway.Outcome {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.mu.Lock()
	f.actions = append(f.actions, *a)
	f.opts = append(f.opts, opts)
	f.mu.Unlock()
	if f.decide != nil {
		return f.decide(a)
	}
	return gateway.Outcome{Decision: action.Allow, DecisionID: "d-" + a.Kind.String(), RuleID: "allow-all"}
}

// allowAll allows everything without recording, for benchmarks.
type allowAll struct{}

func (allowAll) Decide(context.Context, *action.Action, time.Time, gateway.CheckOptions) gateway.Outcome {
	return gateway.Outcome{Decision: action.Allow, DecisionID: "d"}
}

func (f *fakeDecider) recorded() []action.Action {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]action.Action(nil), f.actions...)
}

// serve starts the ext_authz service on loopback and returns a client that
// calls it as Envoy would.
func serve(t *testing.T, s *Server) authv3.AuthorizationClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return authv3.NewAuthorizationClient(cc)
}

// request builds a check request as Envoy's HTTP ext_authz filter sends it.
func request(method, url string, hdr map[string]string, body string) *authv3.CheckRequest {
	scheme, rest, _ := strings.Cut(url, "://")
	authority, path, _ := strings.Cut(rest, "/")
	h := map[string]string{":authority": authority, ":method": method, ":path": "/" + path, ":scheme": scheme}
	for k, v := range hdr {
		h[k] = v
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Host: authority, Path: "/" + path, Scheme: scheme,
			Headers: h, Body: body, Size: int64(len(body)),
		}},
	}}
}

func check(t *testing.T, c authv3.AuthorizationClient, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Check(ctx, req)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return resp
}

func okHeaders(t *testing.T, resp *authv3.CheckResponse) map[string]string {
	t.Helper()
	ok := resp.GetOkResponse()
	if resp.GetStatus().GetCode() != int32(code.Code_OK) || ok == nil {
		t.Fatalf("want OK, got %v", resp)
	}
	m := map[string]string{}
	for _, h := range ok.GetHeaders() {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

type deniedAnswer struct {
	status  int
	headers map[string]string
	body    denial
}

func denied(t *testing.T, resp *authv3.CheckResponse) deniedAnswer {
	t.Helper()
	d := resp.GetDeniedResponse()
	if resp.GetStatus().GetCode() != int32(code.Code_PERMISSION_DENIED) || d == nil {
		t.Fatalf("want PERMISSION_DENIED, got %v", resp)
	}
	a := deniedAnswer{status: int(d.GetStatus().GetCode()), headers: map[string]string{}}
	for _, h := range d.GetHeaders() {
		a.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	if a.headers["content-type"] != "application/json" {
		t.Fatalf("content-type %q", a.headers["content-type"])
	}
	if err := json.Unmarshal([]byte(d.GetBody()), &a.body); err != nil {
		t.Fatalf("denial body %q: %v", d.GetBody(), err)
	}
	return a
}

func TestNetworkMapping(t *testing.T) {
	f := &fakeDecider{}
	c := serve(t, New(f, Options{}))
	h := okHeaders(t, check(t, c, request("GET", "https://En.Wikipedia.org/wiki/Go?x=1#frag",
		map[string]string{"x-aa-agent-id": "acme/research/researcher-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "")))
	if h[HeaderDecision] != "allow" || h[HeaderDecisionID] != "d-network_call" {
		t.Fatalf("headers %v", h)
	}
	got := f.recorded()
	if len(got) != 1 {
		t.Fatalf("want one action, got %d", len(got))
	}
	want := action.NetworkCall{Host: "en.wikipedia.org", Port: 443, Protocol: "https", Method: "GET", Path: "/wiki/Go"}
	if got[0].Kind != action.KindNetworkCall || got[0].Network != want ||
		got[0].Agent != (action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}) ||
		got[0].TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("action %+v", got[0])
	}
}

func TestSplitAuthority(t *testing.T) {
	for _, tc := range []struct {
		in, scheme string
		host       string
		port       uint32
	}{
		{"example.com", "http", "example.com", 80},
		{"example.com", "https", "example.com", 443},
		{"example.com:8443", "https", "example.com", 8443},
		{"[::1]:9000", "http", "::1", 9000},
		{"[::1]", "https", "::1", 443},
		{"EXAMPLE.com.", "http", "example.com", 80},
		{"example.com:bad", "http", "example.com", 80},
	} {
		h, p := splitAuthority(tc.in, tc.scheme)
		if h != tc.host || p != tc.port {
			t.Errorf("splitAuthority(%q, %q) = %q, %d; want %q, %d", tc.in, tc.scheme, h, p, tc.host, tc.port)
		}
	}
}

func TestIdentity(t *testing.T) {
	for _, tc := range []struct {
		name      string
		principal string
		ext       map[string]string
		header    string
		want      action.AgentID
	}{
		{"spiffe org/team/agent", "spiffe://acme.example/org/acme/team/research/agent/researcher-1", nil, "evil/x/y",
			action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}},
		{"spiffe istio", "spiffe://cluster.local/ns/acme/sa/researcher-1", map[string]string{"aa_team": "research"}, "",
			action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}},
		{"context extensions", "", map[string]string{"aa_org": "acme", "aa_team": "eng", "aa_agent": "coder-1"}, "evil/x/y",
			action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}},
		{"unknown principal falls through", "spiffe://td/other/thing", nil, "acme/eng/coder-1",
			action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}},
		{"spiffe trailing slash falls through", "spiffe://td/org/acme/team/research/agent/researcher-1/", nil, "",
			action.AgentID{Agent: Unattributed}},
		{"spiffe too deep falls through", "spiffe://td/org/acme/team/research/agent/r/x", nil, "",
			action.AgentID{Agent: Unattributed}},
		{"spiffe empty segment falls through", "spiffe://td/org//team/research/agent/r", nil, "",
			action.AgentID{Agent: Unattributed}},
		{"spiffe five segments falls through", "spiffe://td/ns/acme/sa/r/x", nil, "",
			action.AgentID{Agent: Unattributed}},
		{"header", "", nil, "acme/eng/coder-1", action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}},
		{"partial extensions", "", map[string]string{"aa_org": "acme"}, "", action.AgentID{Agent: Unattributed}},
		{"bad header", "", nil, "acme/eng", action.AgentID{Agent: Unattributed}},
		{"header too deep", "", nil, "a/b/c/d", action.AgentID{Agent: Unattributed}},
		{"nothing", "", nil, "", action.AgentID{Agent: Unattributed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDecider{}
			c := serve(t, New(f, Options{}))
			hdr := map[string]string{}
			if tc.header != "" {
				hdr["x-aa-agent-id"] = tc.header
			}
			req := request("GET", "https://example.com/", hdr, "")
			req.Attributes.Source.Principal = tc.principal
			req.Attributes.ContextExtensions = tc.ext
			check(t, c, req)
			if got := f.recorded()[0].Agent; got != tc.want {
				t.Fatalf("agent %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestLLMCall(t *testing.T) {
	f := &fakeDecider{}
	c := serve(t, New(f, Options{}))
	body := `{"model":"gpt-4o-mini","max_completion_tokens":256,"messages":[{"role":"user","content":"hello there"}]}`
	check(t, c, request("POST", "https://api.openai.com/v1/chat/completions",
		map[string]string{"x-aa-agent-id": "acme/eng/coder-1", "content-type": "application/json"}, body))
	got := f.recorded()
	if len(got) != 2 || got[0].Kind != action.KindNetworkCall || got[1].Kind != action.KindLLMCall {
		t.Fatalf("actions %+v", got)
	}
	llm := got[1].LLM
	if llm.Provider != "openai" || llm.Model != "gpt-4o-mini" || llm.CompletionTokens != 256 ||
		llm.PromptTokens != int64((len(body)+3)/4) || llm.Prompt != body {
		t.Fatalf("llm %+v", llm)
	}

	// The same body as raw_body (Envoy's pack_as_bytes) is the prompt too.
	fr := &fakeDecider{}
	cr := serve(t, New(fr, Options{}))
	req := request("POST", "https://api.openai.com/v1/chat/completions",
		map[string]string{"x-aa-agent-id": "acme/eng/coder-1", "content-type": "application/json"}, "")
	req.Attributes.Request.Http.RawBody, req.Attributes.Request.Http.Size = []byte(body), int64(len(body))
	check(t, cr, req)
	if got := fr.recorded(); len(got) != 2 || got[1].LLM.Prompt != body || got[1].LLM.Model != "gpt-4o-mini" {
		t.Fatalf("raw_body actions %+v", got)
	}

	f2 := &fakeDecider{}
	c2 := serve(t, New(f2, Options{}))
	check(t, c2, request("POST", "https://generativelanguage.googleapis.com/v1beta/models/gemini-1.5-pro:generateContent",
		nil, `{"contents":[],"generationConfig":{"maxOutputTokens":100}}`))
	g := f2.recorded()
	if len(g) != 2 || g[1].LLM.Provider != "google" || g[1].LLM.Model != "gemini-1.5-pro" || g[1].LLM.CompletionTokens != 100 {
		t.Fatalf("google actions %+v", g)
	}
}

func TestMCPToolCall(t *testing.T) {
	f := &fakeDecider{}
	c := serve(t, New(f, Options{}))
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"git_status","arguments":{ "short": true }}}`
	check(t, c, request("POST", "http://mcp.internal:8080/mcp", map[string]string{"x-aa-agent-id": "acme/eng/coder-1"}, body))
	got := f.recorded()
	if len(got) != 2 || got[1].Kind != action.KindToolCall {
		t.Fatalf("actions %+v", got)
	}
	want := action.ToolCall{Name: "git_status", Source: "mcp", ArgsJSON: `{"short":true}`, TargetURL: "http://mcp.internal:8080/mcp"}
	if got[1].Tool != want {
		t.Fatalf("tool %+v, want %+v", got[1].Tool, want)
	}

	f2 := &fakeDecider{}
	c2 := serve(t, New(f2, Options{}))
	batch := `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a"}},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b","arguments":{}}}]`
	check(t, c2, request("POST", "http://mcp.internal/mcp", nil, batch))
	if g := f2.recorded(); len(g) != 3 || g[1].Tool.Name != "a" || g[2].Tool.Name != "b" || g[2].Tool.ArgsJSON != "{}" {
		t.Fatalf("batch actions %+v", g)
	}
}

func TestMostRestrictiveWins(t *testing.T) {
	f := &fakeDecider{decide: func(a *action.Action) gateway.Outcome {
		if a.Kind == action.KindToolCall {
			return gateway.Outcome{Decision: action.Deny, DecisionID: "d-tool", RuleID: "coding-agent/tools", Reason: "tool not allowed"}
		}
		return gateway.Outcome{Decision: action.Allow, DecisionID: "d-net", RuleID: "net"}
	}}
	c := serve(t, New(f, Options{}))
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm_rf","arguments":{"path":"/"}}}`
	d := denied(t, check(t, c, request("POST", "http://mcp.internal/mcp", nil, body)))
	if d.status != 403 || d.body.Rule != "coding-agent/tools" || d.body.DecisionID != "d-tool" || d.body.Decision != "deny" || d.headers[HeaderDecision] != "deny" {
		t.Fatalf("denial %+v", d)
	}
}

func TestOversizedBody(t *testing.T) {
	f := &fakeDecider{}
	c := serve(t, New(f, Options{MaxBodyBytes: 64}))
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"pad":"` + strings.Repeat("a", 100) + `"}}}`
	h := okHeaders(t, check(t, c, request("POST", "http://mcp.internal/mcp", nil, body)))
	if h[HeaderNote] != "body not inspected: over 64 bytes" {
		t.Fatalf("headers %v", h)
	}
	if got := f.recorded(); len(got) != 1 || got[0].Kind != action.KindNetworkCall {
		t.Fatalf("want the network call only, got %+v", got)
	}

	// Envoy truncated the body (allow_partial_message): not inspected either.
	f2 := &fakeDecider{decide: func(*action.Action) gateway.Outcome {
		return gateway.Outcome{Decision: action.Deny, RuleID: "r", Reason: "no"}
	}}
	c2 := serve(t, New(f2, Options{}))
	req := request("POST", "http://mcp.internal/mcp", map[string]string{"x-envoy-auth-partial-body": "true"}, `{"jsonrpc":"2.0"`)
	req.Attributes.Request.Http.Size = 1 << 20
	d := denied(t, check(t, c2, req))
	if d.headers[HeaderNote] != "body not inspected: over 65536 bytes" {
		t.Fatalf("denial %+v", d)
	}
	// The decider is told, so the audit record is flagged too.
	f2.mu.Lock()
	defer f2.mu.Unlock()
	if len(f2.opts) != 1 || f2.opts[0].Note != "body not inspected: over 65536 bytes" {
		t.Fatalf("decider options %+v", f2.opts)
	}
}

func TestTimeoutFailsClosed(t *testing.T) {
	f := &fakeDecider{delay: 300 * time.Millisecond}
	c := serve(t, New(f, Options{Timeout: 20 * time.Millisecond}))
	start := time.Now()
	d := denied(t, check(t, c, request("GET", "https://example.com/", nil, "")))
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Fatalf("answered after %s", el)
	}
	if d.status != 503 || d.body.Decision != "deny" || d.body.Rule != "timeout" || !strings.Contains(d.body.Reason, "failing closed") {
		t.Fatalf("denial %+v", d)
	}
}

// deciderFunc adapts a function to Decider.
type deciderFunc func(ctx context.Context, a *action.Action) gateway.Outcome

func (f deciderFunc) Decide(ctx context.Context, a *action.Action, _ time.Time, _ gateway.CheckOptions) gateway.Outcome {
	return f(ctx, a)
}

// TestLateDecisionCancelled: a decision still running when its Check has
// answered 503 sees its context cancelled (gRPC cancels the call's context
// once it is answered), so a store call it is blocked in can give up.
func TestLateDecisionCancelled(t *testing.T) {
	cancelled := make(chan error, 1)
	d := deciderFunc(func(ctx context.Context, _ *action.Action) gateway.Outcome {
		<-ctx.Done()
		cancelled <- ctx.Err()
		return gateway.Outcome{Decision: action.Allow, DecisionID: "late"}
	})
	c := serve(t, New(d, Options{Timeout: 20 * time.Millisecond}))
	if d := denied(t, check(t, c, request("GET", "https://example.com/", nil, ""))); d.status != 503 || d.body.Rule != "timeout" {
		t.Fatalf("denial %+v", d)
	}
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("context done without an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late decision's context was never cancelled")
	}
}

// settlingDecider allows every action, the LLM call after slow, and records
// the budget settlements asked of it (a gateway.Core does both).
type settlingDecider struct {
	slow    time.Duration
	settled chan string
}

func (d *settlingDecider) Decide(_ context.Context, a *action.Action, _ time.Time, _ gateway.CheckOptions) gateway.Outcome {
	if a.Kind == action.KindLLMCall {
		time.Sleep(d.slow)
	}
	return gateway.Outcome{Decision: action.Allow, DecisionID: "d-" + a.Kind.String()}
}

func (d *settlingDecider) ReconcileUsage(_ context.Context, id string, agent *action.AgentID, prompt, completion int64) (gateway.Usage, error) {
	d.settled <- fmt.Sprintf("%s %s %d+%d", id, agent, prompt, completion)
	return gateway.Usage{}, nil
}

// TestLateAllowReleasesBudget: an LLM call allowed only after its Check has
// answered 503 never reaches the provider, so its budget reservation is
// released at zero; one allowed in time keeps it for its usage.
func TestLateAllowReleasesBudget(t *testing.T) {
	body := `{"model":"gpt-4o","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}`
	req := request("POST", "https://api.openai.com/v1/chat/completions", map[string]string{"x-aa-agent-id": "acme/research/researcher-1"}, body)

	d := &settlingDecider{slow: 200 * time.Millisecond, settled: make(chan string, 4)}
	c := serve(t, New(d, Options{Timeout: 20 * time.Millisecond}))
	if v := denied(t, check(t, c, req)); v.status != 503 || v.body.Rule != "timeout" {
		t.Fatalf("denial %+v", v)
	}
	select {
	case got := <-d.settled:
		if got != "d-llm_call acme/research/researcher-1 0+0" {
			t.Fatalf("settled %q, want the LLM call's reservation released at zero", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late LLM call's reservation was never released")
	}

	d = &settlingDecider{settled: make(chan string, 4)}
	c = serve(t, New(d, Options{Timeout: 5 * time.Second}))
	if h := okHeaders(t, check(t, c, req)); h[HeaderDecision] != "allow" {
		t.Fatalf("headers %v", h)
	}
	time.Sleep(50 * time.Millisecond)
	if len(d.settled) != 0 {
		t.Fatalf("an LLM call allowed in time was settled: %q", <-d.settled)
	}
}

// TestLateVerdictNotReused: the verdict of a decision that came too late
// never answers a later Check (its decision is not handed to another).
func TestLateVerdictNotReused(t *testing.T) {
	release, returned := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	d := deciderFunc(func(context.Context, *action.Action) gateway.Outcome {
		if calls.Add(1) == 1 {
			<-release
			defer close(returned)
			return gateway.Outcome{Decision: action.Deny, DecisionID: "late", RuleID: "late"}
		}
		return gateway.Outcome{Decision: action.Allow, DecisionID: "on-time"}
	})
	s := New(d, Options{Timeout: 20 * time.Millisecond})
	ctx := context.Background()
	resp, _ := s.Check(ctx, request("GET", "https://example.com/", nil, ""))
	if d := denied(t, resp); d.status != 503 || d.body.Rule != "timeout" {
		t.Fatalf("first check: %+v", d)
	}
	close(release)
	<-returned
	s = New(d, Options{Timeout: 10 * time.Second})
	for i := range 50 {
		resp, _ := s.Check(ctx, request("GET", "https://example.com/", nil, ""))
		if h := okHeaders(t, resp); h[HeaderDecisionID] != "on-time" {
			t.Fatalf("check %d answered by %v", i, h)
		}
	}
}

func TestDeciderPanicFailsClosed(t *testing.T) {
	f := &fakeDecider{decide: func(*action.Action) gateway.Outcome { panic("boom") }}
	c := serve(t, New(f, Options{}))
	if d := denied(t, check(t, c, request("GET", "https://example.com/", nil, ""))); d.status != 503 {
		t.Fatalf("denial %+v", d)
	}
}

func TestRateLimited(t *testing.T) {
	f := &fakeDecider{decide: func(*action.Action) gateway.Outcome {
		return gateway.Outcome{Decision: action.Deny, DecisionID: "d1", RuleID: "research-agent/tools.fetch_url.limit", Reason: "rate limit", Limited: true, RetryAfter: 1500 * time.Millisecond}
	}}
	c := serve(t, New(f, Options{}))
	d := denied(t, check(t, c, request("GET", "https://example.com/", nil, "")))
	if d.status != 429 || d.headers["retry-after"] != "2" || d.body.Rule != "research-agent/tools.fetch_url.limit" {
		t.Fatalf("denial %+v", d)
	}
}

func TestPendingAndRedact(t *testing.T) {
	f := &fakeDecider{decide: func(*action.Action) gateway.Outcome {
		return gateway.Outcome{Decision: action.Pending, DecisionID: "d1", RuleID: "approve", Reason: "needs a human", ApprovalID: "ap-1"}
	}}
	c := serve(t, New(f, Options{}))
	d := denied(t, check(t, c, request("GET", "https://example.com/", map[string]string{HeaderApprovalID: "ap-0"}, "")))
	if d.status != 403 || d.body.Decision != "pending" || d.body.ApprovalID != "ap-1" {
		t.Fatalf("denial %+v", d)
	}
	f.mu.Lock()
	opts := f.opts[0]
	f.mu.Unlock()
	if opts.ApprovalID != "ap-0" {
		t.Fatalf("approval id not passed: %+v", opts)
	}

	r := &fakeDecider{decide: func(*action.Action) gateway.Outcome {
		return gateway.Outcome{Decision: action.Redact, DecisionID: "d2"}
	}}
	cr := serve(t, New(r, Options{StripCredentials: true}))
	resp := check(t, cr, request("GET", "https://example.com/", nil, ""))
	if h := okHeaders(t, resp); h[HeaderDecision] != "redact" || h[HeaderDecisionID] != "d2" {
		t.Fatalf("headers %v", h)
	}
	rm := strings.Join(resp.GetOkResponse().GetHeadersToRemove(), ",")
	if rm != "x-aa-agent-id,x-aa-credential-token,authorization,x-api-key,x-aa-usage-id" {
		t.Fatalf("headers to remove %q (the gateway's own x-aa-usage-id must never pass as the agent sent it)", rm)
	}
}

func TestNoHTTPAttributesDenied(t *testing.T) {
	c := serve(t, New(&fakeDecider{}, Options{}))
	if d := denied(t, check(t, c, &authv3.CheckRequest{})); d.status != 403 || d.body.Rule != "extauthz" {
		t.Fatalf("denial %+v", d)
	}
}

func BenchmarkCheck(b *testing.B) {
	s := New(allowAll{}, Options{})
	req := request("POST", "https://api.openai.com/v1/chat/completions",
		map[string]string{"x-aa-agent-id": "acme/eng/coder-1", "content-type": "application/json"},
		`{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}`)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRawHeaderMap(t *testing.T) {
	f := &fakeDecider{}
	c := serve(t, New(f, Options{}))
	req := request("GET", "https://example.com/a", nil, "")
	hr := req.Attributes.Request.Http
	hr.Headers, hr.Host, hr.Scheme, hr.Method, hr.Path = nil, "", "", "", ""
	hr.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":authority", RawValue: []byte("Example.com:8443")},
		{Key: ":scheme", RawValue: []byte("https")},
		{Key: ":method", RawValue: []byte("PUT")},
		{Key: ":path", RawValue: []byte("/b?c=d")},
		{Key: "X-AA-Agent-Id", RawValue: []byte("acme/eng/coder-1")},
	}}
	check(t, c, req)
	a := f.recorded()[0]
	want := action.NetworkCall{Host: "example.com", Port: 8443, Protocol: "https", Method: "PUT", Path: "/b"}
	if a.Network != want || a.Agent.Agent != "coder-1" {
		t.Fatalf("action %+v", a)
	}
}

// TestRegisterUnderInterceptor: Check served through a server's interceptor
// gets the method's full name and the Server in its UnaryServerInfo and
// answers through the handler the interceptor is given, as with the
// generated service description.
func TestRegisterUnderInterceptor(t *testing.T) {
	s := New(allowAll{}, Options{})
	var method string
	var server any
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		method, server = info.FullMethod, info.Server
		if _, ok := req.(*authv3.CheckRequest); !ok {
			t.Errorf("the interceptor got a %T", req)
		}
		return h(ctx, req)
	}))
	s.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	for range 2 {
		resp, err := authv3.NewAuthorizationClient(cc).Check(t.Context(), request("GET", "https://api.example.com/v1", nil, ""))
		if err != nil || resp.GetOkResponse() == nil {
			t.Fatalf("Check through the interceptor: %v, %v", resp, err)
		}
	}
	if method != authv3.Authorization_Check_FullMethodName || server != s {
		t.Fatalf("the interceptor saw method %q and server %v; want %q and the Server", method, server, authv3.Authorization_Check_FullMethodName)
	}
	if _, ok := g.GetServiceInfo()["envoy.service.auth.v3.Authorization"]; !ok {
		t.Fatalf("service not registered under Envoy's name: %v", g.GetServiceInfo())
	}
}
