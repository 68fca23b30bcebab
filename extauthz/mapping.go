package extauthz

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// errNoHTTP reports a check request without HTTP attributes (for example
// from Envoy's network ext_authz filter, which this server does not serve).
var errNoHTTP = errors.New("map check request: no HTTP request attributes: failing closed")

// providers maps LLM API hosts to the provider names used in policies.
var providers = map[string]string{
	"api.openai.com":                    "openai",
	"api.anthropic.com":                 "anthropic",
	"generativelanguage.googleapis.com": "google",
	"api.mistral.ai":                    "mistral",
}

// bytesPerToken is the prompt token estimate: about 4 bytes of JSON body per
// token, which over-counts the prompt slightly (the JSON framing is counted
// too) and so errs towards the budget.
const bytesPerToken = 4

// mapped is a request normalised into actions.
type mapped struct {
	actions []action.Action // actions[0] is the NETWORK_CALL
	// buf holds the actions of a request that maps to at most two (a
	// NETWORK_CALL, and an LLM_CALL or one MCP tool call), so they cost no
	// allocation of their own: m is recycled.
	buf    [2]action.Action
	opts   gateway.CheckOptions
	note   string // set when the body was not inspected
	source string // what named the agent: principal, context_extensions, header or none
	token  string // the x-aa-credential-token request header
	// extToken is the ExtToken context extension the gateway's xDS set.
	extToken string
	// late is set when the Check answered without waiting for the
	// decision, which may still read the actions: m is then not recycled.
	late bool
}

// mappeds recycles the mapped requests of answered Checks: a mapped is
// about 1.1 KB with its actions, more than the rest of a Check allocates in
// BenchmarkCheckCore.
var mappeds = sync.Pool{New: func() any { return new(mapped) }}

// recycle hands m to a later Check. Only Check calls it, once nothing
// refers to m or its actions.
func recycle(m *mapped) {
	*m = mapped{}
	mappeds.Put(m)
}

// headers reads request headers from either the map or the HeaderMap form.
type headers struct {
	m   map[string]string
	raw *authv3.AttributeContext_HttpRequest
}

func (h headers) get(k string) string {
	if h.m != nil {
		return h.m[k]
	}
	for _, hv := range h.raw.GetHeaderMap().GetHeaders() {
		if lower(hv.GetKey()) == k {
			if hv.GetValue() != "" {
				return hv.GetValue()
			}
			return string(hv.GetRawValue())
		}
	}
	return ""
}

// mapRequest builds the actions of one check request.
func (s *Server) mapRequest(req *authv3.CheckRequest, now time.Time) (*mapped, error) {
	attrs := req.GetAttributes()
	hr := attrs.GetRequest().GetHttp()
	if hr == nil {
		return nil, errNoHTTP
	}
	h := headers{m: hr.GetHeaders(), raw: hr}
	if len(h.m) == 0 {
		h.m = nil
	}
	agent, source := identify(attrs.GetSource().GetPrincipal(), attrs.GetContextExtensions(), h.get(s.o.AgentHeader))

	authority := hr.GetHost()
	if authority == "" {
		if authority = h.get(":authority"); authority == "" {
			authority = h.get("host")
		}
	}
	scheme := lower(hr.GetScheme())
	if scheme == "" {
		if scheme = lower(h.get(":scheme")); scheme == "" {
			scheme = "http"
		}
	}
	host, port := splitAuthority(authority, scheme)
	method := hr.GetMethod()
	if method == "" {
		method = h.get(":method")
	}
	path := hr.GetPath()
	if path == "" {
		path = h.get(":path")
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}

	base := action.Action{
		Agent: agent, Time: now,
		TraceID:   traceID(h),
		SessionID: h.get(HeaderSessionID),
	}
	m := mappeds.Get().(*mapped) // zero: recycle clears it
	m.opts = gateway.CheckOptions{ApprovalID: h.get(HeaderApprovalID), Layer: gateway.LayerEnvoy}
	m.source, m.token, m.extToken = source, h.get(gateway.CredentialTokenHeader), attrs.GetContextExtensions()[ExtToken]

	body, size, note := s.body(hr, h)
	m.note = note
	m.opts.Note = note // flagged in the audit record of every action
	var p *probe
	if len(body) > 0 && looksJSON(body) {
		p = parseProbe(body)
	}
	prov, llm := providers[host]
	llm = llm && method == "POST"

	n := 1 + len(p.toolCalls())
	if llm {
		n++
	}
	if n <= len(m.buf) {
		m.actions = m.buf[:1]
	} else {
		m.actions = make([]action.Action, 1, n)
	}
	m.actions[0] = base
	m.actions[0].Kind = action.KindNetworkCall
	m.actions[0].Network = action.NetworkCall{Host: host, Port: port, Protocol: scheme, Method: method, Path: path}

	if llm {
		a := base
		a.Kind = action.KindLLMCall
		a.LLM = action.LLMCall{Provider: prov, PromptTokens: (size + bytesPerToken - 1) / bytesPerToken}
		if p != nil {
			a.LLM.Model = p.Model
			a.LLM.CompletionTokens = p.MaxTokens
			a.LLM.Prompt = hr.GetBody() // scanned for credentials, never stored
			if len(hr.GetRawBody()) > 0 {
				a.LLM.Prompt = string(body) // body is raw_body (else it is a copy of Body)
			}
		}
		if a.LLM.Model == "" && prov == "google" {
			a.LLM.Model = googleModel(path)
		}
		m.actions = append(m.actions, a)
	}
	if calls := p.toolCalls(); len(calls) > 0 {
		target := scheme + "://" + authority + path
		for _, c := range calls {
			a := base
			a.Kind = action.KindToolCall
			a.Tool = action.ToolCall{Name: c.Params.Name, Source: "mcp", ArgsJSON: compactJSON(c.Params.Arguments), TargetURL: target}
			m.actions = append(m.actions, a)
		}
	}
	return m, nil
}

// body returns the request body when it can be inspected, the body size
// (known even when the body is not sent) and a note when it is not inspected.
func (s *Server) body(hr *authv3.AttributeContext_HttpRequest, h headers) ([]byte, int64, string) {
	body := hr.GetRawBody()
	if len(body) == 0 && hr.GetBody() != "" {
		body = []byte(hr.GetBody())
	}
	size := hr.GetSize()
	if size <= 0 {
		if v := h.get("content-length"); v != "" {
			if cl, err := strconv.ParseInt(v, 10, 64); err == nil && cl > 0 {
				size = cl
			}
		}
	}
	if size < int64(len(body)) {
		size = int64(len(body))
	}
	max := s.o.MaxBodyBytes
	switch {
	case size > int64(max) || len(body) > max:
		return nil, size, s.overNote
	case h.get("x-envoy-auth-partial-body") == "true" || (len(body) > 0 && size > int64(len(body))):
		return nil, size, "body not inspected: truncated by the proxy"
	case len(body) == 0 && size > 0:
		return nil, size, "body not inspected: not sent by the proxy"
	}
	return body, size, ""
}

// splitAuthority splits host[:port] (IPv6 in brackets), lower-cases the
// host and defaults the port from the scheme.
func splitAuthority(authority, scheme string) (string, uint32) {
	host, portStr := authority, ""
	if strings.HasPrefix(host, "[") {
		if end := strings.IndexByte(host, ']'); end > 0 {
			host, portStr = authority[1:end], strings.TrimPrefix(authority[end+1:], ":")
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.Count(host, ":") == 1 {
		host, portStr = authority[:i], authority[i+1:]
	}
	host = strings.TrimSuffix(lower(host), ".")
	if portStr != "" { // parsing "" would allocate its error
		if p, err := strconv.ParseUint(portStr, 10, 16); err == nil && p > 0 {
			return host, uint32(p)
		}
	}
	switch scheme {
	case "https", "grpcs", "wss":
		return host, 443
	}
	return host, 80
}

// traceID takes the trace id from W3C traceparent or B3 headers.
func traceID(h headers) string {
	if tp := h.get("traceparent"); len(tp) >= 35 && tp[2] == '-' {
		return tp[3:35]
	}
	return h.get("x-b3-traceid")
}

// googleModel reads the model from a Gemini path such as
// /v1beta/models/gemini-1.5-pro:generateContent.
func googleModel(path string) string {
	_, rest, ok := strings.Cut(path, "/models/")
	if !ok {
		return ""
	}
	model, _, _ := strings.Cut(rest, ":")
	model, _, _ = strings.Cut(model, "/")
	return model
}

// probe holds the fields of a JSON body that the mapping recognises.
type probe struct {
	Model     string
	MaxTokens int64 // completion tokens asked for
	calls     []rpcMessage
}

// llmBody is the union of the LLM request fields read.
type llmBody struct {
	Model               string `json:"model"`
	MaxTokens           int64  `json:"max_tokens"`
	MaxCompletionTokens int64  `json:"max_completion_tokens"`
	MaxOutputTokens     int64  `json:"max_output_tokens"`
	GenerationConfig    *struct {
		MaxOutputTokens int64 `json:"maxOutputTokens"`
	} `json:"generationConfig"`
	rpcMessage
}

// rpcMessage is the part of a JSON-RPC message read for MCP tool calls.
type rpcMessage struct {
	JSONRPC string `json:"jsonrpc"`
	Method  string `json:"method"`
	Params  struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"params"`
}

// toolCalls returns the MCP tool calls of the body; none when p is nil.
func (p *probe) toolCalls() []rpcMessage {
	if p == nil {
		return nil
	}
	return p.calls
}

func (m *rpcMessage) isToolCall() bool { return m.Method == "tools/call" && m.Params.Name != "" }

// parseProbe reads an LLM request or MCP message (single or batch). It
// returns nil for bodies that are not JSON objects or arrays.
func parseProbe(body []byte) *probe {
	if body[firstNonSpace(body)] == '[' {
		var batch []rpcMessage
		if err := json.Unmarshal(body, &batch); err != nil {
			return nil
		}
		p := &probe{}
		for _, m := range batch {
			if m.isToolCall() {
				p.calls = append(p.calls, m)
			}
		}
		return p
	}
	var b llmBody
	if err := json.Unmarshal(body, &b); err != nil {
		return nil
	}
	p := &probe{Model: b.Model, MaxTokens: max(b.MaxTokens, b.MaxCompletionTokens, b.MaxOutputTokens)}
	if b.GenerationConfig != nil {
		p.MaxTokens = max(p.MaxTokens, b.GenerationConfig.MaxOutputTokens)
	}
	if b.isToolCall() {
		p.calls = []rpcMessage{b.rpcMessage}
	}
	return p
}

func firstNonSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return i
		}
	}
	return 0
}

func looksJSON(b []byte) bool {
	c := b[firstNonSpace(b)]
	return c == '{' || c == '['
}

// compactJSON renders raw JSON without insignificant space; "" when absent.
func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}

// lower lower-cases ASCII without allocating when s is already lower case.
func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
