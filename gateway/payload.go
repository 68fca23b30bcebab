package gateway

import (
	"encoding/json"

	"github.com/agent-assembly/agent-assembly/action"
)

// auditPayload is the normalised action as stored in the audit log. Field
// names are stable: simulate and the verify tooling read them back.
type auditPayload struct {
	Kind      string          `json:"kind"`
	Provider  string          `json:"provider,omitempty"`
	Model     string          `json:"model,omitempty"`
	Prompt    int64           `json:"prompt_tokens,omitempty"`
	Complete  int64           `json:"completion_tokens,omitempty"`
	Name      string          `json:"name,omitempty"`
	Source    string          `json:"source,omitempty"`
	Args      json.RawMessage `json:"args,omitempty"`
	TargetURL string          `json:"target_url,omitempty"`
	Operation string          `json:"operation,omitempty"`
	Path      string          `json:"path,omitempty"`
	Host      string          `json:"host,omitempty"`
	Port      uint32          `json:"port,omitempty"`
	Protocol  string          `json:"protocol,omitempty"`
	Method    string          `json:"method,omitempty"`
	Command   string          `json:"command,omitempty"`
	ExecArgs  []string        `json:"exec_args,omitempty"`
	Child     string          `json:"child,omitempty"`
	OutputLen int             `json:"output_bytes,omitempty"`
}

// encodePayload renders the action for the audit log. Tool arguments are
// stored as given (the scanner redacts them before this point); tool output is
// recorded by size only.
func encodePayload(a *action.Action) []byte {
	p := auditPayload{Kind: a.Kind.String()}
	switch a.Kind {
	case action.KindLLMCall:
		p.Provider, p.Model, p.Prompt, p.Complete = a.LLM.Provider, a.LLM.Model, a.LLM.PromptTokens, a.LLM.CompletionTokens
	case action.KindToolCall:
		p.Name, p.Source, p.TargetURL = a.Tool.Name, a.Tool.Source, a.Tool.TargetURL
		if a.Tool.ArgsJSON != "" && json.Valid([]byte(a.Tool.ArgsJSON)) {
			p.Args = json.RawMessage(a.Tool.ArgsJSON)
		}
	case action.KindFileOperation:
		p.Operation, p.Path = a.File.Operation, a.File.Path
	case action.KindNetworkCall:
		p.Host, p.Port, p.Protocol, p.Method, p.Path = a.Network.Host, a.Network.Port, a.Network.Protocol, a.Network.Method, a.Network.Path
	case action.KindProcessExec:
		p.Command, p.ExecArgs = a.Exec.Command, a.Exec.Args
	case action.KindAgentSpawn:
		p.Child = a.Spawn.Child.String()
	case action.KindToolResult:
		p.Name, p.OutputLen = a.Result.Name, len(a.Result.Output)
	}
	b, err := json.Marshal(p)
	if err != nil {
		// Every field is a plain string, number or validated raw JSON.
		return []byte(`{"kind":"` + a.Kind.String() + `","error":"payload not encodable"}`)
	}
	return b
}

// decodePayload reverses encodePayload, for simulation and topology.
func decodePayload(kind action.Kind, b []byte) (action.Action, error) {
	var p auditPayload
	a := action.Action{Kind: kind}
	if err := json.Unmarshal(b, &p); err != nil {
		return a, err
	}
	a.LLM = action.LLMCall{Provider: p.Provider, Model: p.Model, PromptTokens: p.Prompt, CompletionTokens: p.Complete}
	a.Tool = action.ToolCall{Name: p.Name, Source: p.Source, ArgsJSON: string(p.Args), TargetURL: p.TargetURL}
	a.File = action.FileOperation{Operation: p.Operation, Path: p.Path}
	a.Network = action.NetworkCall{Host: p.Host, Port: p.Port, Protocol: p.Protocol, Method: p.Method, Path: p.Path}
	a.Exec = action.ProcessExec{Command: p.Command, Args: p.ExecArgs}
	a.Result = action.ToolResult{Name: p.Name}
	return a, nil
}
