package extproc

import (
	"bytes"
	"encoding/json"
)

// Usage is the token usage an LLM provider reported for one call.
type Usage struct {
	Prompt     int64
	Completion int64
}

// usageFields is the union of the usage shapes of the providers the
// gateway prices: OpenAI and Mistral (usage.prompt_tokens /
// completion_tokens; the Responses API's input_tokens / output_tokens),
// Anthropic (usage.input_tokens / output_tokens plus cache tokens; in a
// stream, message.usage on message_start and usage on message_delta),
// Google (usageMetadata.promptTokenCount / candidatesTokenCount /
// thoughtsTokenCount) and Cohere (meta.billed_units or usage.billed_units).
type usageFields struct {
	Usage *struct {
		PromptTokens             int64   `json:"prompt_tokens"`
		CompletionTokens         int64   `json:"completion_tokens"`
		InputTokens              int64   `json:"input_tokens"`
		OutputTokens             int64   `json:"output_tokens"`
		CacheCreationInputTokens int64   `json:"cache_creation_input_tokens"`
		CacheReadInputTokens     int64   `json:"cache_read_input_tokens"`
		BilledUnits              *billed `json:"billed_units"`
	} `json:"usage"`
	Message *struct {
		Usage *struct {
			InputTokens              int64 `json:"input_tokens"`
			OutputTokens             int64 `json:"output_tokens"`
			CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
			CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
		} `json:"usage"`
	} `json:"message"`
	UsageMetadata *struct {
		PromptTokenCount     int64 `json:"promptTokenCount"`
		CandidatesTokenCount int64 `json:"candidatesTokenCount"`
		ThoughtsTokenCount   int64 `json:"thoughtsTokenCount"`
	} `json:"usageMetadata"`
	Meta *struct {
		BilledUnits *billed `json:"billed_units"`
	} `json:"meta"`
}

type billed struct {
	InputTokens  int64 `json:"input_tokens"`
	OutputTokens int64 `json:"output_tokens"`
}

// fields returns the usage one JSON object reports, and whether it reports any.
func (f *usageFields) fields() (Usage, bool) {
	var u Usage
	found := false
	take := func(p, c int64) {
		u.Prompt, u.Completion, found = max(u.Prompt, p), max(u.Completion, c), true
	}
	if x := f.Usage; x != nil {
		take(x.PromptTokens+x.InputTokens+x.CacheCreationInputTokens+x.CacheReadInputTokens, x.CompletionTokens+x.OutputTokens)
		if b := x.BilledUnits; b != nil {
			take(b.InputTokens, b.OutputTokens)
		}
	}
	if f.Message != nil && f.Message.Usage != nil {
		x := f.Message.Usage
		take(x.InputTokens+x.CacheCreationInputTokens+x.CacheReadInputTokens, x.OutputTokens)
	}
	if x := f.UsageMetadata; x != nil {
		take(x.PromptTokenCount, x.CandidatesTokenCount+x.ThoughtsTokenCount)
	}
	if f.Meta != nil && f.Meta.BilledUnits != nil {
		take(f.Meta.BilledUnits.InputTokens, f.Meta.BilledUnits.OutputTokens)
	}
	return u, found
}

// ParseUsage reads the token usage from an LLM response body: one JSON
// object, a JSON array of stream chunks (Gemini's streamGenerateContent), or,
// when sse is set, a server-sent event stream whose data lines are JSON
// chunks. In a stream the largest prompt and completion counts seen win
// (providers report running totals). It reports false when the body holds
// no usage at all.
func ParseUsage(body []byte, sse bool) (Usage, bool) {
	var total Usage
	found := false
	add := func(obj []byte) {
		var f usageFields
		if json.Unmarshal(obj, &f) != nil {
			return
		}
		if u, ok := f.fields(); ok {
			total.Prompt, total.Completion, found = max(total.Prompt, u.Prompt), max(total.Completion, u.Completion), true
		}
	}
	body = bytes.TrimSpace(body)
	switch {
	case sse || bytes.HasPrefix(body, []byte("data:")) || bytes.HasPrefix(body, []byte("event:")):
		for line := range bytes.Lines(body) {
			line = bytes.TrimSpace(line)
			if data, ok := bytes.CutPrefix(line, []byte("data:")); ok {
				if data = bytes.TrimSpace(data); len(data) > 0 && data[0] == '{' {
					add(data)
				}
			}
		}
	case len(body) > 0 && body[0] == '[':
		var chunks []json.RawMessage
		if json.Unmarshal(body, &chunks) == nil {
			for _, c := range chunks {
				add(c)
			}
		}
	case len(body) > 0 && body[0] == '{':
		add(body)
	}
	return total, found
}
