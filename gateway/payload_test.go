package gateway

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
)

// marshalPayload is encodePayload without its plain fast path.
func marshalPayload(t testing.TB, a *action.Action) []byte {
	t.Helper()
	b, err := json.Marshal(payloadOf(a))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// payloadCases are actions of every kind encodePlain writes, with empty,
// plain and escaped strings and zero, large and negative numbers.
func payloadCases() []action.Action {
	return []action.Action{
		{Kind: action.KindNetworkCall, Network: action.NetworkCall{Host: "en.wikipedia.org", Port: 443, Protocol: "https", Method: "GET", Path: "/wiki/Envoy"}},
		{Kind: action.KindNetworkCall, Network: action.NetworkCall{Host: "example.com"}},
		{Kind: action.KindNetworkCall, Network: action.NetworkCall{Host: "a.example", Port: 4294967295, Path: "/q<script>&x"}},
		{Kind: action.KindNetworkCall, Network: action.NetworkCall{Host: "ünicode.example", Path: "/\"quoted\"\\back\x01\x7f"}},
		{Kind: action.KindNetworkCall},
		{Kind: action.KindLLMCall, LLM: action.LLMCall{Provider: "openai", Model: "gpt-4o", PromptTokens: 12, CompletionTokens: 64, Prompt: "not stored"}},
		{Kind: action.KindLLMCall, LLM: action.LLMCall{Provider: "anthropic", PromptTokens: -9223372036854775808, CompletionTokens: 9223372036854775807}},
		{Kind: action.KindFileOperation, File: action.FileOperation{Operation: "read", Path: "/etc/hosts"}},
		{Kind: action.KindAgentSpawn, Spawn: action.AgentSpawn{Child: action.AgentID{Org: "acme", Team: "eng", Agent: "child"}}},
		{Kind: action.KindToolResult, Result: action.ToolResult{Name: "search", Output: "twelve bytes"}},
		{Kind: action.KindToolResult, Result: action.ToolResult{Name: "line\u2028sep"}},
		{Kind: action.KindUnspecified},
		{Kind: action.Kind(99)},
	}
}

// TestEncodePlainMatchesMarshal: the fast encoding is byte for byte what
// json.Marshal writes (the audit chain hashes these bytes), and it declines
// what it cannot write exactly.
func TestEncodePlainMatchesMarshal(t *testing.T) {
	plain := 0
	for _, a := range payloadCases() {
		want := marshalPayload(t, &a)
		if got := encodePayload(&a); !bytes.Equal(got, want) {
			t.Errorf("encodePayload(%+v)\n got %s\nwant %s", a, got, want)
		}
		if got, ok := encodePlain(&a); ok {
			plain++
			if !bytes.Equal(got, want) {
				t.Errorf("encodePlain(%+v)\n got %s\nwant %s", a, got, want)
			}
		}
	}
	if plain < 8 {
		t.Errorf("encodePlain wrote %d of the cases; the plain ones should not fall back", plain)
	}
	for _, k := range []action.Kind{action.KindToolCall, action.KindProcessExec} {
		if _, ok := encodePlain(&action.Action{Kind: k}); ok {
			t.Errorf("encodePlain wrote a %s; json.Marshal must (arguments are compacted)", k)
		}
	}
}

func FuzzEncodePlain(f *testing.F) {
	for _, a := range payloadCases() {
		f.Add(uint8(a.Kind), a.Network.Host, a.Network.Path, a.LLM.Model, a.LLM.PromptTokens, a.Network.Port)
	}
	f.Fuzz(func(t *testing.T, kind uint8, s1, s2, s3 string, n int64, port uint32) {
		a := action.Action{Kind: action.Kind(kind % 9),
			Network: action.NetworkCall{Host: s1, Path: s2, Method: s3, Protocol: s1, Port: port},
			LLM:     action.LLMCall{Provider: s1, Model: s2, PromptTokens: n, CompletionTokens: -n},
			File:    action.FileOperation{Operation: s3, Path: s2},
			Spawn:   action.AgentSpawn{Child: action.AgentID{Org: s1, Team: s2, Agent: s3}},
			Result:  action.ToolResult{Name: s1, Output: s2},
		}
		if a.Kind == action.KindToolCall || a.Kind == action.KindProcessExec {
			return
		}
		if got, want := encodePayload(&a), marshalPayload(t, &a); !bytes.Equal(got, want) {
			t.Fatalf("encodePayload(%+v)\n got %s\nwant %s", a, got, want)
		}
	})
}

func BenchmarkEncodePayload(b *testing.B) {
	a := payloadCases()[0]
	b.ReportAllocs()
	for b.Loop() {
		encodePayload(&a)
	}
}
