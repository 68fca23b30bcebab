// Package action holds the gateway's compact, transport-independent vocabulary:
// who acts (AgentID), what they do (Action and Kind), and what the gateway
// answers (Decision, Mode).
//
// Every interception layer (SDK, Envoy ext_authz, eBPF) is normalised into an
// Action before policy evaluation, so the policy engine, the scanner and the
// storage drivers share one set of types and never see protobuf messages.
package action

import (
	"strconv"
	"time"
)

// AgentID names an agent within its organisation and team.
type AgentID struct {
	Org   string
	Team  string
	Agent string
}

// String renders the id as org/team/agent.
func (id AgentID) String() string { return id.Org + "/" + id.Team + "/" + id.Agent }

// IsZero reports whether no part of the id is set.
func (id AgentID) IsZero() bool { return id.Org == "" && id.Team == "" && id.Agent == "" }

// Kind is the type of an action. The values match agentassembly.v1.ActionType.
type Kind uint8

// Action kinds. KindUnspecified is never valid in a request.
const (
	KindUnspecified Kind = iota
	KindLLMCall
	KindToolCall
	KindFileOperation
	KindNetworkCall
	KindProcessExec
	KindAgentSpawn
	KindToolResult
)

var kindNames = [...]string{
	KindUnspecified:   "unspecified",
	KindLLMCall:       "llm_call",
	KindToolCall:      "tool_call",
	KindFileOperation: "file_operation",
	KindNetworkCall:   "network_call",
	KindProcessExec:   "process_exec",
	KindAgentSpawn:    "agent_spawn",
	KindToolResult:    "tool_result",
}

// String returns the snake_case name used in policies and the audit log.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// ParseKind maps a snake_case name (as written in policies) to a Kind.
func ParseKind(s string) (Kind, bool) {
	for i, n := range kindNames {
		if i != 0 && n == s {
			return Kind(i), true
		}
	}
	return KindUnspecified, false
}

// Kinds lists every valid kind in declaration order.
func Kinds() []Kind {
	return []Kind{KindLLMCall, KindToolCall, KindFileOperation, KindNetworkCall, KindProcessExec, KindAgentSpawn, KindToolResult}
}

// Decision is the gateway's answer. Unlike Kind and Mode, the numeric values do
// not match agentassembly.v1.Decision: they are ordered by restrictiveness, so
// the cascade can take the maximum. Convert by name at the transport edge.
type Decision uint8

// Decisions in increasing order of restrictiveness.
const (
	DecisionUnspecified Decision = iota
	Allow
	Redact
	Pending
	Deny
)

var decisionNames = [...]string{
	DecisionUnspecified: "unspecified",
	Allow:               "allow",
	Redact:              "redact",
	Pending:             "pending",
	Deny:                "deny",
}

// String returns the lower-case name used in policies and the audit log.
func (d Decision) String() string {
	if int(d) < len(decisionNames) {
		return decisionNames[d]
	}
	return "decision(" + strconv.Itoa(int(d)) + ")"
}

// ParseDecision maps a lower-case name to a Decision.
func ParseDecision(s string) (Decision, bool) {
	for i, n := range decisionNames {
		if i != 0 && n == s {
			return Decision(i), true
		}
	}
	return DecisionUnspecified, false
}

// MoreRestrictive returns the more restrictive of a and b.
func MoreRestrictive(a, b Decision) Decision {
	if a > b {
		return a
	}
	return b
}

// Mode is an enforcement mode. The values match agentassembly.v1.EnforcementMode.
type Mode uint8

// Enforcement modes.
const (
	ModeUnspecified Mode = iota
	// ModeEnforce applies decisions.
	ModeEnforce
	// ModeObserve decides and audits the would-be decision, then allows.
	ModeObserve
	// ModeDisabled skips evaluation.
	ModeDisabled
)

var modeNames = [...]string{ModeUnspecified: "unspecified", ModeEnforce: "enforce", ModeObserve: "observe", ModeDisabled: "disabled"}

// String returns the lower-case name used in policies.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// ParseMode maps a lower-case name to a Mode.
func ParseMode(s string) (Mode, bool) {
	for i, n := range modeNames {
		if i != 0 && n == s {
			return Mode(i), true
		}
	}
	return ModeUnspecified, false
}

// LLMCall describes a call to a language model.
type LLMCall struct {
	Provider         string
	Model            string
	PromptTokens     int64
	CompletionTokens int64
	// Prompt is optional text the caller wants scanned for credentials; it
	// is never stored.
	Prompt string
}

// ToolCall describes a tool invocation.
type ToolCall struct {
	Name      string
	Source    string // e.g. "mcp", "builtin", an MCP server name
	ArgsJSON  string
	TargetURL string
}

// FileOperation describes a filesystem access.
type FileOperation struct {
	Operation string // read, write, delete, list, ...
	Path      string
}

// NetworkCall describes an outbound connection or HTTP request.
type NetworkCall struct {
	Host     string
	Port     uint32
	Protocol string // tcp, udp, http, https, grpc
	Method   string
	Path     string
}

// ProcessExec describes a process execution.
type ProcessExec struct {
	Command string
	Args    []string
}

// AgentSpawn describes an agent creating (delegating to) another agent.
type AgentSpawn struct {
	Child AgentID
}

// ToolResult describes output returned from a tool to the agent.
type ToolResult struct {
	Name   string
	Output string
}

// Action is one normalised thing an agent wants to do. Only the field that
// matches Kind is meaningful; the others are zero.
type Action struct {
	Agent     AgentID
	Kind      Kind
	TraceID   string
	SpanID    string
	SessionID string
	// Time is when the action was requested; policies with a schedule use it.
	Time time.Time

	LLM     LLMCall
	Tool    ToolCall
	File    FileOperation
	Network NetworkCall
	Exec    ProcessExec
	Spawn   AgentSpawn
	Result  ToolResult
}

// Name is the action's primary name, used by policy rule `name` globs:
// the model (llm_call), tool name (tool_call, tool_result), operation
// (file_operation), host (network_call), command (process_exec) or child
// agent id (agent_spawn).
func (a *Action) Name() string {
	switch a.Kind {
	case KindLLMCall:
		return a.LLM.Model
	case KindToolCall:
		return a.Tool.Name
	case KindFileOperation:
		return a.File.Operation
	case KindNetworkCall:
		return a.Network.Host
	case KindProcessExec:
		return a.Exec.Command
	case KindAgentSpawn:
		return a.Spawn.Child.Agent
	case KindToolResult:
		return a.Result.Name
	}
	return ""
}

// Resource is the action's object, used by policy rule `resource` globs:
// the provider (llm_call), target URL (tool_call), path (file_operation,
// network_call), or first argument (process_exec).
func (a *Action) Resource() string {
	switch a.Kind {
	case KindLLMCall:
		return a.LLM.Provider
	case KindToolCall:
		return a.Tool.TargetURL
	case KindFileOperation:
		return a.File.Path
	case KindNetworkCall:
		return a.Network.Path
	case KindProcessExec:
		if len(a.Exec.Args) > 0 {
			return a.Exec.Args[0]
		}
	case KindAgentSpawn:
		return a.Spawn.Child.Team
	}
	return ""
}
