package extproc_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// fakeToken is a generated GitHub-shaped token, not a real secret.
var fakeToken = "ghp_" + strings.Repeat("FAKE", 9)

// envoy plays the sidecar's filter chain against a real gateway: ext_authz
// first, its OK headers applied to the request, then one ext_proc stream
// with the request headers and body and the upstream's response.
type envoy struct {
	t     *testing.T
	authz authv3.AuthorizationClient
	proc  procv3.ExternalProcessorClient
	v1    v1.PolicyServiceClient
	audit v1.AuditServiceClient
}

func newEnvoy(t *testing.T) *envoy {
	t.Helper()
	addr := servertest.Start(t, "testdata/policies", servertest.AgentAuthOff)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &envoy{t: t, authz: authv3.NewAuthorizationClient(conn), proc: procv3.NewExternalProcessorClient(conn),
		v1: v1.NewPolicyServiceClient(conn), audit: v1.NewAuditServiceClient(conn)}
}

// exchange is what Envoy would have done with one request.
type exchange struct {
	authz       *authv3.CheckResponse
	headers     map[string]string // request headers after ext_authz and ext_proc
	body        []byte            // request body sent upstream (nil: unchanged)
	immediate   *procv3.ImmediateResponse
	headersResp *procv3.HeadersResponse
}

// do sends one request through the chain; respStatus/respBody are what the
// upstream answers (respBody nil: the request is not sent upstream).
func (e *envoy) do(agent, host, path string, body []byte, inspect bool, respStatus string, respType string, respBody []byte) exchange {
	e.t.Helper()
	ctx := context.Background()
	hdr := map[string]string{"content-type": "application/json", "x-aa-agent-id": agent, "x-aa-usage-id": "forged"}
	http := &authv3.AttributeContext_HttpRequest{
		Method: "POST", Host: host, Path: path, Scheme: "https", Headers: hdr, Size: int64(len(body)),
	}
	if inspect {
		http.RawBody = body
	}
	ar, err := e.authz.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: http}}})
	if err != nil {
		e.t.Fatalf("ext_authz Check: %v", err)
	}
	x := exchange{authz: ar, headers: map[string]string{}}
	ok := ar.GetOkResponse()
	if ok == nil {
		return x
	}
	for k, v := range hdr {
		x.headers[k] = v
	}
	for _, h := range ok.GetHeaders() {
		x.headers[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	for _, k := range ok.GetHeadersToRemove() {
		delete(x.headers, k)
	}

	stream, err := e.proc.Process(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer stream.CloseSend()
	send := func(r *procv3.ProcessingRequest) *procv3.ProcessingResponse {
		e.t.Helper()
		if err := stream.Send(r); err != nil {
			e.t.Fatalf("ext_proc send: %v", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			e.t.Fatalf("ext_proc recv: %v", err)
		}
		return resp
	}
	hm := &corev3.HeaderMap{}
	for k, v := range x.headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	r := send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{Headers: hm}}})
	if x.immediate = r.GetImmediateResponse(); x.immediate != nil {
		return x
	}
	x.headersResp = r.GetRequestHeaders()
	for _, k := range x.headersResp.GetResponse().GetHeaderMutation().GetRemoveHeaders() {
		delete(x.headers, k)
	}
	r = send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestBody{RequestBody: &procv3.HttpBody{Body: body, EndOfStream: true}}})
	if x.immediate = r.GetImmediateResponse(); x.immediate != nil {
		return x
	}
	if m := r.GetRequestBody().GetResponse().GetBodyMutation(); m != nil {
		x.body = m.GetBody()
		for _, h := range r.GetRequestBody().GetResponse().GetHeaderMutation().GetSetHeaders() {
			x.headers[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
		}
	}
	if respBody == nil {
		return x
	}
	send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &procv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":status", RawValue: []byte(respStatus)}, {Key: "content-type", RawValue: []byte(respType)},
	}}}}})
	if r := send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_ResponseBody{ResponseBody: &procv3.HttpBody{Body: respBody, EndOfStream: true}}}); r.GetResponseBody() == nil {
		e.t.Fatalf("response body answered with %v", r)
	}
	return x
}

// spent reads an agent's daily spend in USD.
func (e *envoy) spent(agent string) float64 {
	e.t.Helper()
	b, err := e.v1.GetBudget(context.Background(), &v1.GetBudgetRequest{Scope: "agent/" + agent})
	if err != nil {
		e.t.Fatalf("GetBudget: %v", err)
	}
	for _, s := range b.GetBudgets() {
		if s.GetWindow() == "daily" {
			return s.GetSpentUsd()
		}
	}
	e.t.Fatalf("no daily budget for %s: %v", agent, b)
	return 0
}

func cost(t *testing.T, provider, model string, prompt, completion int64) float64 {
	t.Helper()
	p, err := budget.DefaultPricing()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := p.Lookup(provider, model)
	return r.Cost(prompt, completion).USD()
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestLLMUsageReconciledFromResponse(t *testing.T) {
	e := newEnvoy(t)
	req := []byte(`{"model":"gpt-4o","max_tokens":4000,"messages":[{"role":"user","content":"hello"}]}`)
	resp := []byte(`{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}`)
	x := e.do("t/llm/a1", "api.openai.com", "/v1/chat/completions", req, true, "200", "application/json", resp)
	if x.authz.GetOkResponse() == nil {
		t.Fatalf("ext_authz denied the call: %s", x.authz.GetDeniedResponse().GetBody())
	}
	if x.headers["x-aa-usage-id"] != "" || x.headers["x-aa-agent"] != "" {
		t.Fatalf("internal headers reach the upstream: %v", x.headers)
	}
	if got, want := e.spent("t/llm/a1"), cost(t, "openai", "gpt-4o", 12, 30); !near(got, want) {
		t.Fatalf("spent %.6f USD after the response, want the actual usage's %.6f (the estimate for 4000 completion tokens is %.6f)",
			got, want, cost(t, "openai", "gpt-4o", int64(len(req)+3)/4, 4000))
	}
}

func TestLLMUsageFromAnthropicStream(t *testing.T) {
	e := newEnvoy(t)
	req := []byte(`{"model":"claude-sonnet-4","max_tokens":2000,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	stream := []byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n")
	e.do("t/llm/a2", "api.anthropic.com", "/v1/messages", req, true, "200", "text/event-stream", stream)
	if got, want := e.spent("t/llm/a2"), cost(t, "anthropic", "claude-sonnet-4", 25, 15); !near(got, want) {
		t.Fatalf("spent %.6f USD, want %.6f", got, want)
	}
}

func TestFailedLLMCallReleasesReservation(t *testing.T) {
	e := newEnvoy(t)
	req := []byte(`{"model":"gpt-4o","max_tokens":4000,"messages":[]}`)
	e.do("t/llm/a3", "api.openai.com", "/v1/chat/completions", req, true, "429", "application/json", []byte(`{"error":{"type":"rate_limit"}}`))
	if got := e.spent("t/llm/a3"); got != 0 {
		t.Fatalf("spent %.6f USD for a call the provider refused, want 0", got)
	}
}

func TestRedactDecisionRewritesBody(t *testing.T) {
	e := newEnvoy(t)
	req := []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"deploy with ` + fakeToken + `"}]}`)
	x := e.do("t/llm/a4", "api.openai.com", "/v1/chat/completions", req, true, "", "", nil)
	if d := x.headers["x-aa-decision"]; d != "redact" {
		t.Fatalf("ext_authz decision %q, want redact (headers %v)", d, x.headers)
	}
	if x.body == nil {
		t.Fatal("body not rewritten")
	}
	if strings.Contains(string(x.body), fakeToken) || !strings.Contains(string(x.body), "[REDACTED:github_token]") {
		t.Fatalf("rewritten body %s", x.body)
	}
	if !json.Valid(x.body) {
		t.Fatalf("rewritten body is not JSON: %s", x.body)
	}
	if x.headers["content-length"] != itoa(len(x.body)) {
		t.Fatalf("content-length %q for a %d byte body", x.headers["content-length"], len(x.body))
	}
}

func TestUninspectedBodyRedactedOrBlocked(t *testing.T) {
	e := newEnvoy(t)
	big := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("lorem ipsum ", 7000) + fakeToken + `"}]}`
	// ext_authz only sees the headers (the body is over its 64 KiB limit).
	x := e.do("t/llm/a5", "api.openai.com", "/v1/chat/completions", []byte(big), false, "", "", nil)
	if x.authz.GetOkResponse() == nil || !strings.HasPrefix(x.headers["x-aa-note"], "body not inspected") {
		t.Fatalf("ext_authz answer %v, headers %v", x.authz, x.headers)
	}
	if x.body == nil || strings.Contains(string(x.body), fakeToken) {
		t.Fatal("credential in an uninspected body reached the upstream")
	}

	x = e.do("t/strict/s1", "api.openai.com", "/v1/chat/completions", []byte(big), false, "", "", nil)
	if x.immediate == nil || x.immediate.GetStatus().GetCode() != 403 || !strings.Contains(string(x.immediate.GetBody()), "github_token") {
		t.Fatalf("blocking policy: immediate response %v", x.immediate)
	}

	recs, err := e.audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, r := range recs.GetRecords() {
		if r.GetRuleId() == "extproc.body" {
			found++
			if strings.Contains(r.String(), fakeToken) {
				t.Fatal("the audit record holds the credential")
			}
		}
	}
	if found != 2 {
		t.Fatalf("%d extproc.body audit records, want 2", found)
	}
}

func TestUncheckedRequestDenied(t *testing.T) {
	e := newEnvoy(t)
	stream, err := e.proc.Process(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":authority", RawValue: []byte("api.openai.com")}, {Key: "x-aa-decision", RawValue: []byte("deny")}}}
	if err := stream.Send(&procv3.ProcessingRequest{Request: &procv3.ProcessingRequest_RequestHeaders{RequestHeaders: &procv3.HttpHeaders{Headers: hm}}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if im := r.GetImmediateResponse(); im == nil || im.GetStatus().GetCode() != 403 || !strings.Contains(string(im.GetBody()), "without an ext_authz decision") {
		t.Fatalf("answer %v", r)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
