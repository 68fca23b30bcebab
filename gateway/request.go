package gateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// DefaultMaxPayloadBytes is the default limit on the variable-size fields of
// one action (tool arguments, prompt, tool output, exec arguments).
const DefaultMaxPayloadBytes = 1 << 20

// MaxTokens bounds the token counts of one LLM call: no model has a context
// this large, so a bigger number is a bug or an attack on the budget counters.
const MaxTokens = 100_000_000

// maxIDLen bounds identifiers (agent ids, trace ids, names) so a garbled
// request cannot make the audit log or the metrics explode.
const maxIDLen = 256

// RequestError is a malformed request. Field names the offending field in
// the request's protobuf (JSON) naming, e.g. "tool_call.args_json".
type RequestError struct {
	Field string
	Msg   string
}

// Error implements error.
func (e *RequestError) Error() string { return e.Field + ": " + e.Msg }

func badField(field, format string, args ...any) *RequestError {
	return &RequestError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits bounds request sizes.
type Limits struct {
	// MaxPayloadBytes caps the sum of an action's variable-size fields.
	MaxPayloadBytes int
}

// toAction validates req and converts it into an action. It returns a
// *RequestError naming the first bad field.
func toAction(req *v1.CheckActionRequest, lim Limits, now time.Time) (action.Action, error) {
	var a action.Action
	if req == nil {
		return a, badField("request", "is empty")
	}
	if req.GetAgent() == nil {
		return a, badField("agent", "is required (org_id, team_id, agent_id)")
	}
	a.Agent = action.AgentID{Org: req.GetAgent().GetOrgId(), Team: req.GetAgent().GetTeamId(), Agent: req.GetAgent().GetAgentId()}
	for _, f := range []struct{ name, v string }{
		{"agent.org_id", a.Agent.Org}, {"agent.team_id", a.Agent.Team}, {"agent.agent_id", a.Agent.Agent},
	} {
		if err := checkID(f.name, f.v, true); err != nil {
			return a, err
		}
	}
	for _, f := range []struct{ name, v string }{
		{"trace_id", req.GetTraceId()}, {"span_id", req.GetSpanId()}, {"session_id", req.GetSessionId()},
	} {
		if err := checkID(f.name, f.v, false); err != nil {
			return a, err
		}
	}
	a.TraceID, a.SpanID, a.SessionID = req.GetTraceId(), req.GetSpanId(), req.GetSessionId()
	if err := checkID("approval_id", req.GetApprovalId(), false); err != nil {
		return a, err
	}
	a.Time = now

	if _, known := v1.ActionType_name[int32(req.GetActionType())]; !known {
		return a, badField("action_type", "unknown value %d", req.GetActionType())
	}
	payload := 0
	switch c := req.GetContext().(type) {
	case *v1.CheckActionRequest_LlmCall:
		a.Kind = action.KindLLMCall
		a.LLM = action.LLMCall{Provider: c.LlmCall.GetProvider(), Model: c.LlmCall.GetModel(),
			PromptTokens: c.LlmCall.GetPromptTokens(), CompletionTokens: c.LlmCall.GetCompletionTokens(),
			Prompt: c.LlmCall.GetPrompt()}
		switch {
		case a.LLM.PromptTokens < 0:
			return a, badField("llm_call.prompt_tokens", "must not be negative (got %d)", a.LLM.PromptTokens)
		case a.LLM.CompletionTokens < 0:
			return a, badField("llm_call.completion_tokens", "must not be negative (got %d)", a.LLM.CompletionTokens)
		case a.LLM.PromptTokens > MaxTokens:
			return a, badField("llm_call.prompt_tokens", "%d is over the limit of %d tokens per call", a.LLM.PromptTokens, MaxTokens)
		case a.LLM.CompletionTokens > MaxTokens:
			return a, badField("llm_call.completion_tokens", "%d is over the limit of %d tokens per call", a.LLM.CompletionTokens, MaxTokens)
		}
		if err := checkID("llm_call.model", a.LLM.Model, true); err != nil {
			return a, err
		}
		payload += len(c.LlmCall.GetPrompt())
	case *v1.CheckActionRequest_ToolCall:
		a.Kind = action.KindToolCall
		a.Tool = action.ToolCall{Name: c.ToolCall.GetName(), Source: c.ToolCall.GetSource(),
			ArgsJSON: c.ToolCall.GetArgsJson(), TargetURL: c.ToolCall.GetTargetUrl()}
		if err := checkID("tool_call.name", a.Tool.Name, true); err != nil {
			return a, err
		}
		payload += len(a.Tool.ArgsJSON) + len(a.Tool.TargetURL)
		if payload > lim.MaxPayloadBytes {
			return a, badField("tool_call.args_json", "is %d bytes, over the limit of %d bytes", payload, lim.MaxPayloadBytes)
		}
		if a.Tool.ArgsJSON != "" && !json.Valid([]byte(a.Tool.ArgsJSON)) {
			return a, badField("tool_call.args_json", "is not valid JSON")
		}
	case *v1.CheckActionRequest_FileOp:
		a.Kind = action.KindFileOperation
		a.File = action.FileOperation{Operation: c.FileOp.GetOperation(), Path: c.FileOp.GetPath()}
		if err := checkID("file_op.operation", a.File.Operation, true); err != nil {
			return a, err
		}
		if a.File.Path == "" {
			return a, badField("file_op.path", "is required")
		}
		payload += len(a.File.Path)
	case *v1.CheckActionRequest_NetworkCall:
		a.Kind = action.KindNetworkCall
		a.Network = action.NetworkCall{Host: strings.ToLower(c.NetworkCall.GetHost()), Port: c.NetworkCall.GetPort(),
			Protocol: c.NetworkCall.GetProtocol(), Method: c.NetworkCall.GetMethod(), Path: c.NetworkCall.GetPath()}
		if err := checkID("network_call.host", a.Network.Host, true); err != nil {
			return a, err
		}
		if a.Network.Port > 65535 {
			return a, badField("network_call.port", "%d is not a valid port", a.Network.Port)
		}
		payload += len(a.Network.Path)
	case *v1.CheckActionRequest_ProcessExec:
		a.Kind = action.KindProcessExec
		a.Exec = action.ProcessExec{Command: c.ProcessExec.GetCommand(), Args: c.ProcessExec.GetArgs()}
		if a.Exec.Command == "" {
			return a, badField("process_exec.command", "is required")
		}
		payload += len(a.Exec.Command)
		for _, s := range a.Exec.Args {
			payload += len(s)
		}
		if payload > lim.MaxPayloadBytes {
			return a, badField("process_exec.args", "are %d bytes, over the limit of %d bytes", payload, lim.MaxPayloadBytes)
		}
	case *v1.CheckActionRequest_AgentSpawn:
		a.Kind = action.KindAgentSpawn
		ch := c.AgentSpawn.GetChild()
		a.Spawn.Child = action.AgentID{Org: ch.GetOrgId(), Team: ch.GetTeamId(), Agent: ch.GetAgentId()}
		if err := checkID("agent_spawn.child.agent_id", a.Spawn.Child.Agent, true); err != nil {
			return a, err
		}
	case *v1.CheckActionRequest_ToolResult:
		a.Kind = action.KindToolResult
		a.Result = action.ToolResult{Name: c.ToolResult.GetName(), Output: c.ToolResult.GetOutput()}
		if err := checkID("tool_result.name", a.Result.Name, true); err != nil {
			return a, err
		}
		payload += len(a.Result.Output)
		if payload > lim.MaxPayloadBytes {
			return a, badField("tool_result.output", "is %d bytes, over the limit of %d bytes", payload, lim.MaxPayloadBytes)
		}
	case nil:
		return a, badField("context", "one of llm_call, tool_call, file_op, network_call, process_exec, agent_spawn, tool_result is required")
	default:
		return a, badField("context", "unsupported action context %T", c)
	}
	if payload > lim.MaxPayloadBytes {
		return a, badField("context", "payload is %d bytes, over the limit of %d bytes", payload, lim.MaxPayloadBytes)
	}
	if t := req.GetActionType(); t != v1.ActionType_ACTION_TYPE_UNSPECIFIED && action.Kind(t) != a.Kind {
		return a, badField("action_type", "%s does not match the %s context that is set", t, a.Kind)
	}
	return a, nil
}

func checkID(field, v string, required bool) error {
	if v == "" {
		if required {
			return badField(field, "is required")
		}
		return nil
	}
	if len(v) > maxIDLen {
		return badField(field, "is %d bytes, over the limit of %d", len(v), maxIDLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return badField(field, "contains a control character at byte %d", i)
		}
	}
	return nil
}

// agentOf extracts whatever agent id a (possibly malformed) request names, for
// the audit record of a rejected request.
func agentOf(req *v1.CheckActionRequest) action.AgentID {
	ag := req.GetAgent()
	clip := func(s string) string {
		if len(s) > maxIDLen {
			return s[:maxIDLen]
		}
		return s
	}
	return action.AgentID{Org: clip(ag.GetOrgId()), Team: clip(ag.GetTeamId()), Agent: clip(ag.GetAgentId())}
}
