package gateway

import (
	"encoding/json"
	"strconv"

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
	if b, ok := encodePlain(a); ok {
		return b
	}
	b, err := json.Marshal(payloadOf(a))
	if err != nil {
		// Every field is a plain string, number or validated raw JSON.
		return []byte(`{"kind":"` + a.Kind.String() + `","error":"payload not encodable"}`)
	}
	return b
}

// payloadOf is the audit payload of a, for json.Marshal.
func payloadOf(a *action.Action) auditPayload {
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
	return p
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

// plainFields is the payload of an action as encodePlain writes it: the
// fields auditPayload would marshal, in its order, with omitempty applied.
type plainFields struct {
	n  int
	fs [6]plainField
}

// plainField is one string (or, when num is set, number) field.
type plainField struct {
	key string // the JSON name
	s   string
	num bool
	i   int64
}

func (p *plainFields) str(key, v string) {
	if v != "" {
		p.fs[p.n] = plainField{key: key, s: v}
		p.n++
	}
}

func (p *plainFields) int(key string, v int64) {
	if v != 0 {
		p.fs[p.n] = plainField{key: key, num: true, i: v}
		p.n++
	}
}

// encodePlain writes the payload of an action whose strings need no JSON
// escaping (printable ASCII other than " \ < > &) byte for byte as
// json.Marshal writes auditPayload, in one allocation and without
// reflection; it reports false for anything else (tool calls, whose
// arguments json.Marshal compacts; process execs; strings to escape),
// which json.Marshal then encodes. TestEncodePlainMatchesMarshal and
// FuzzEncodePlain hold the two encodings equal.
func encodePlain(a *action.Action) ([]byte, bool) {
	p := plainFields{n: 1}
	p.fs[0] = plainField{key: "kind", s: a.Kind.String()} // never omitted
	switch a.Kind {
	case action.KindLLMCall:
		p.str("provider", a.LLM.Provider)
		p.str("model", a.LLM.Model)
		p.int("prompt_tokens", a.LLM.PromptTokens)
		p.int("completion_tokens", a.LLM.CompletionTokens)
	case action.KindToolCall, action.KindProcessExec:
		return nil, false
	case action.KindFileOperation:
		p.str("operation", a.File.Operation)
		p.str("path", a.File.Path)
	case action.KindNetworkCall:
		p.str("path", a.Network.Path)
		p.str("host", a.Network.Host)
		p.int("port", int64(a.Network.Port))
		p.str("protocol", a.Network.Protocol)
		p.str("method", a.Network.Method)
	case action.KindAgentSpawn:
		p.str("child", a.Spawn.Child.String())
	case action.KindToolResult:
		p.str("name", a.Result.Name)
		p.int("output_bytes", int64(len(a.Result.Output)))
	}
	size := 2 // {}
	for _, f := range p.fs[:p.n] {
		size += len(f.key) + 4 // "key":,
		if f.num {
			size += 20
			continue
		}
		if !plainJSON(f.s) {
			return nil, false
		}
		size += len(f.s) + 2
	}
	b := make([]byte, 0, size)
	for i, f := range p.fs[:p.n] {
		if i == 0 {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.key...)
		b = append(b, '"', ':')
		if f.num {
			b = strconv.AppendInt(b, f.i, 10)
			continue
		}
		b = append(b, '"')
		b = append(b, f.s...)
		b = append(b, '"')
	}
	return append(b, '}'), true
}

// plainJSON reports whether json.Marshal writes s as it is, between quotes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}
