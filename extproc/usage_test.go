package extproc

import "testing"

func TestParseUsage(t *testing.T) {
	cases := []struct {
		name string
		body string
		sse  bool
		want Usage
		ok   bool
	}{
		{"openai chat", `{"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}`, false, Usage{12, 30}, true},
		{"openai responses", `{"object":"response","usage":{"input_tokens":7,"output_tokens":9}}`, false, Usage{7, 9}, true},
		{"anthropic with cache", `{"usage":{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":5}}`, false, Usage{100, 5}, true},
		{"google", `{"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":22,"thoughtsTokenCount":3}}`, false, Usage{11, 25}, true},
		{"google stream array", `[{"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":2}},{"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":40}}]`, false, Usage{11, 40}, true},
		{"cohere v1", `{"meta":{"billed_units":{"input_tokens":4,"output_tokens":6}}}`, false, Usage{4, 6}, true},
		{"cohere v2", `{"usage":{"billed_units":{"input_tokens":4,"output_tokens":6},"tokens":{"input_tokens":70,"output_tokens":6}}}`, false, Usage{4, 6}, true},
		{"openai stream with usage", "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n", true, Usage{8, 3}, true},
		{"anthropic stream", "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":15}}\n\n", true, Usage{25, 15}, true},
		{"sse without content type", "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n", false, Usage{1, 2}, true},
		{"no usage", `{"choices":[]}`, false, Usage{}, false},
		{"stream without usage", "data: {\"choices\":[]}\n\ndata: [DONE]\n", true, Usage{}, false},
		{"not json", `<html>502</html>`, false, Usage{}, false},
		{"empty", ``, false, Usage{}, false},
		{"garbled", `{"usage":{"prompt_tokens":"many"}}`, false, Usage{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := ParseUsage([]byte(c.body), c.sse)
			if got != c.want || ok != c.ok {
				t.Fatalf("ParseUsage = %+v, %v; want %+v, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func FuzzParseUsage(f *testing.F) {
	f.Add([]byte(`{"usage":{"prompt_tokens":12,"completion_tokens":30}}`), false)
	f.Add([]byte("data: {\"usage\":{\"output_tokens\":15}}\n\n"), true)
	f.Add([]byte(`[{"usageMetadata":{"promptTokenCount":1}}]`), false)
	f.Fuzz(func(t *testing.T, body []byte, sse bool) {
		u, ok := ParseUsage(body, sse)
		if !ok && u != (Usage{}) {
			t.Fatalf("no usage reported but %+v returned", u)
		}
	})
}
