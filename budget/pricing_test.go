package budget

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultPricing(t *testing.T) {
	p := mustPricing(t)
	if p.AsOf() == "" {
		t.Fatal("the embedded table has no as_of date")
	}
	providers := map[string]int{}
	for _, r := range p.Rates() {
		providers[r.Provider]++
		if r.InputPerMillion <= 0 || r.OutputPerMillion <= 0 {
			t.Errorf("%s/%s has a zero price", r.Provider, r.Model)
		}
		if r.Model != strings.ToLower(r.Model) {
			t.Errorf("%s/%s is not lower case", r.Provider, r.Model)
		}
	}
	for _, want := range []string{"openai", "anthropic", "google", "mistral", "cohere"} {
		if providers[want] < 4 {
			t.Errorf("provider %s has %d models, want at least 4", want, providers[want])
		}
	}
	for _, r := range p.Rates() {
		if got, ok := p.Lookup(r.Provider, r.Model); !ok || got != r {
			t.Errorf("Lookup(%s, %s) = %+v, %v; want the entry itself", r.Provider, r.Model, got, ok)
		}
	}
}

func TestLookup(t *testing.T) {
	p := mustPricing(t)
	for _, c := range []struct {
		provider, model string
		want            string // provider/model of the entry, "" for unknown
	}{
		{"openai", "gpt-4o", "openai/gpt-4o"},
		{"", "gpt-4o", "openai/gpt-4o"},
		{"openai", "gpt-4o-2024-08-06", "openai/gpt-4o"},              // dated suffix
		{"openai", "gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"},   // exact beats prefix
		{"openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"},    // longest prefix
		{"OpenAI", "GPT-4o-Mini", "openai/gpt-4o-mini"},               // case
		{"", "openai/gpt-4.1-nano-2025-04-14", "openai/gpt-4.1-nano"}, // qualifier
		{"azure", "gpt-4.1", "openai/gpt-4.1"},                        // unknown provider: any provider
		{"openai", "o3-mini-2025-01-31", "openai/o3-mini"},
		{"openai", "o1", "openai/o1"},
		{"openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo"},
		{"anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"},
		{"anthropic", "claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku"},
		{"", "Anthropic/Claude-Sonnet-4-20250514", "anthropic/claude-sonnet-4"},
		{"vertex", "claude-3-7-sonnet@20250219", "anthropic/claude-3-7-sonnet"},
		{"bedrock", "claude-opus-4-20250514-v1:0", "anthropic/claude-opus-4"},
		{"google", "models/gemini-1.5-pro-002", "google/gemini-1.5-pro"}, // path prefix ignored
		{"google", "gemini-2.5-flash-preview-05-20", "google/gemini-2.5-flash"},
		{"google", "gemini-2.0-flash-lite-001", "google/gemini-2.0-flash-lite"},
		{"mistral", "mistral-large-latest", "mistral/mistral-large"},
		{"mistral", "codestral-2501", "mistral/codestral"},
		{"cohere", "command-r-plus-08-2024", "cohere/command-r-plus"},
		{"cohere", "command-r-08-2024", "cohere/command-r"},
		{"cohere", "command-r7b-12-2024", "cohere/command-r7b"},
		{"openai", "gpt-4oz", ""}, // a prefix must end at a boundary
		{"openai", "gpt-6", ""},
		{"openai", "gpt-5-mini-2025-08-07", "openai/gpt-5-mini"},
		{"openai", "gpt-5-codex", "openai/gpt-5"},
		{"anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"},
		{"anthropic", "claude-haiku-4-5", "anthropic/claude-haiku-4-5"},
		{"", "llama-3-70b", ""},
		{"", "", ""},
		{"openai", "gpt-4.5-preview", "openai/gpt-4.5-preview"}, // '.' is not a boundary: not gpt-4
	} {
		r, ok := p.Lookup(c.provider, c.model)
		got := ""
		if ok {
			got = r.Provider + "/" + r.Model
		}
		if got != c.want {
			t.Errorf("Lookup(%q, %q) = %q, want %q", c.provider, c.model, got, c.want)
		}
		if !ok && r != p.UnknownRate() {
			t.Errorf("Lookup(%q, %q) missed but returned %+v, not the unknown rate", c.provider, c.model, r)
		}
	}
}

func TestUnknownModelIsMostExpensive(t *testing.T) {
	p := mustPricing(t)
	unknown := p.Estimate("acme-llm", "secret-model-9", 1000, 1000)
	if !unknown.Unknown || unknown.Rate.Model != "" {
		t.Fatalf("Estimate(unknown) = %+v, want Unknown", unknown)
	}
	for _, r := range p.Rates() {
		for _, tok := range [][2]int64{{1000, 0}, {0, 1000}, {1000, 1000}, {300_000, 1000}} {
			if c := r.Cost(tok[0], tok[1]); c > unknown.Rate.Cost(tok[0], tok[1]) {
				t.Errorf("%s/%s costs %s for %v tokens, more than an unknown model", r.Provider, r.Model, c, tok)
			}
		}
	}
	// o1-pro is the most expensive entry of the defaults.
	if u := p.UnknownRate(); u.InputPerMillion != USD(150) || u.OutputPerMillion != USD(600) {
		t.Errorf("UnknownRate = %+v, want $150 / $600 per million tokens", u)
	}
}

func TestRateCost(t *testing.T) {
	p := mustPricing(t)
	gpt4o, _ := p.Lookup("openai", "gpt-4o")
	// $2.50 per million prompt tokens, $10 per million completion tokens.
	for _, c := range []struct {
		prompt, completion int64
		want               MicroUSD
	}{
		{0, 0, 0},
		{1000, 0, 2500},
		{0, 1000, 10_000},
		{1000, 500, 7500},
		{1, 0, 3}, // 2.5 micro-USD rounds up
		{1_000_000, 1_000_000, 12_500_000},
		{-5, -5, 0},
	} {
		if got := gpt4o.Cost(c.prompt, c.completion); got != c.want {
			t.Errorf("gpt-4o Cost(%d, %d) = %d, want %d", c.prompt, c.completion, got, c.want)
		}
	}
	pro, _ := p.Lookup("google", "gemini-2.5-pro")
	if got, want := pro.Cost(200_000, 1000), MicroUSD(200_000*1.25+1000*10); got != want {
		t.Errorf("gemini-2.5-pro at the threshold = %d, want %d (standard rate)", got, want)
	}
	if got, want := pro.Cost(200_001, 1000), MicroUSD(515_003); got != want { // 200001×2.5 + 1000×15, rounded up
		t.Errorf("gemini-2.5-pro above the threshold = %d, want %d (long-context rate)", got, want)
	}
	huge := p.UnknownRate().Cost(1<<62, 1<<62)
	if huge != MaxMicroUSD {
		t.Errorf("an absurd token count costs %d, want saturation at MaxMicroUSD", huge)
	}
}

func TestMicroUSD(t *testing.T) {
	for _, c := range []struct {
		usd  float64
		want MicroUSD
		str  string
	}{
		{0, 0, "$0.000000"},
		{1.5, 1_500_000, "$1.500000"},
		{0.0000004, 0, "$0.000000"},
		{0.0000005, 1, "$0.000001"},
		{12.345678, 12_345_678, "$12.345678"},
		{-3, 0, "$0.000000"},
		{1e300, MaxMicroUSD, "$9223372036854.775807"},
	} {
		got := USD(c.usd)
		if got != c.want || got.String() != c.str {
			t.Errorf("USD(%g) = %d %q, want %d %q", c.usd, got, got, c.want, c.str)
		}
	}
	if s := MicroUSD(-2_500_000).String(); s != "-$2.500000" {
		t.Errorf("negative String = %q", s)
	}
	if f := MicroUSD(2_500_000).USD(); f != 2.5 {
		t.Errorf("USD() = %g", f)
	}
}

func TestLoadPricingOverride(t *testing.T) {
	p, err := LoadPricing(filepath.Join("testdata", "override.yaml"))
	if err != nil {
		t.Fatalf("LoadPricing: %v", err)
	}
	if p.AsOf() != "2026-01-15" {
		t.Errorf("AsOf = %q, want the override's date", p.AsOf())
	}
	if r, _ := p.Lookup("openai", "gpt-4o-2024-11-20"); r.InputPerMillion != USD(2) || r.OutputPerMillion != USD(8) {
		t.Errorf("overridden gpt-4o = %+v", r)
	}
	if r, ok := p.Lookup("", "Acme/Llama-3.3-70B-Instruct"); !ok || r.InputPerMillion != USD(0.6) {
		t.Errorf("added provider = %+v, %v", r, ok)
	}
	// Untouched defaults stay.
	def := mustPricing(t)
	a, _ := p.Lookup("anthropic", "claude-opus-4")
	b, _ := def.Lookup("anthropic", "claude-opus-4")
	if a != b {
		t.Errorf("claude-opus-4 changed: %+v vs %+v", a, b)
	}
	// The defaults are not modified by an override.
	if r, _ := def.Lookup("openai", "gpt-4o"); r.InputPerMillion != USD(2.5) {
		t.Errorf("the override leaked into the defaults: %+v", r)
	}
	if d, err := LoadPricing(""); err != nil || d != def {
		t.Errorf("LoadPricing(\"\") = %p, %v; want the defaults", d, err)
	}
	if _, err := LoadPricing(filepath.Join("testdata", "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadPricing(missing) = %v, want a not-exist error", err)
	}
}

func TestLoadPricingErrors(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		want       []string
	}{
		{"negative", `
providers:
  openai:
    gpt-4o: {input_per_1k: -0.001, output_per_1k: 0.01}
`, []string{"negative.yaml:4:28: providers.openai.gpt-4o.input_per_1k: price must not be negative, got -0.001"}},
		{"unknown-key", `
as_of: 2026-01-01
providers:
  openai:
    gpt-4o: {input_per_1k: 0.001, output_per_1k: 0.01, cached_per_1k: 0.0005}
currency: EUR
`, []string{
			"unknown-key.yaml:5:56: providers.openai.gpt-4o.cached_per_1k: unknown field \"cached_per_1k\" (known: input_per_1k, output_per_1k, long_context)",
			"unknown-key.yaml:6:1: currency: unknown field \"currency\" (known: as_of, providers)",
		}},
		{"bad-yaml", "providers:\n  openai:\n    gpt-4o: {input_per_1k: 0.001\n  x: [\n", []string{"bad-yaml.yaml:2: invalid YAML: did not find expected ',' or '}'"}},
		{"missing", `
providers:
  mistral:
    mistral-large: {input_per_1k: 0.002}
`, []string{"missing.yaml:4:20: providers.mistral.mistral-large.output_per_1k: missing: every model needs input_per_1k and output_per_1k"}},
		{"types", `
as_of: yesterday
providers:
  cohere:
    command-r: {input_per_1k: cheap, output_per_1k: [1]}
    command-a: 0.0025
`, []string{
			"types.yaml:2:8: as_of: want a date as YYYY-MM-DD, got \"yesterday\"",
			"types.yaml:5:31: providers.cohere.command-r.input_per_1k: expected a price in USD per 1,000 tokens, got \"cheap\"",
			"types.yaml:5:53: providers.cohere.command-r.output_per_1k: expected a price in USD per 1,000 tokens, got a list",
			"types.yaml:6:16: providers.cohere.command-a: expected a mapping, got \"0.0025\"",
		}},
		{"duplicates", `
providers:
  openai:
    GPT-4o: {input_per_1k: 0.001, output_per_1k: 0.01}
    gpt-4o: {input_per_1k: 0.001, output_per_1k: 0.01}
`, []string{"duplicates.yaml:5:5: providers.openai.gpt-4o: duplicate model (names are case-insensitive; first at line 4)"}},
		{"too-big", `
providers:
  openai:
    gpt-9: {input_per_1k: 5000, output_per_1k: .inf}
`, []string{
			"too-big.yaml:4:27: providers.openai.gpt-9.input_per_1k: price 5000 USD per 1,000 tokens is over the maximum of 1000",
			"too-big.yaml:4:48: providers.openai.gpt-9.output_per_1k: expected a finite number, got .inf",
		}},
		{"long-context", `
providers:
  google:
    gemini-9: {input_per_1k: 0.001, output_per_1k: 0.01, long_context: {above_prompt_tokens: 0, input_per_1k: 0.002}}
`, []string{
			"long-context.yaml:4:72: providers.google.gemini-9.long_context.output_per_1k: missing: long_context needs above_prompt_tokens, input_per_1k and output_per_1k",
			"long-context.yaml:4:94: providers.google.gemini-9.long_context.above_prompt_tokens: must be between 1 and 1099511627776 tokens, got 0",
		}},
		{"root", `[1, 2]`, []string{"root.yaml:1:1: expected a mapping, got a list"}},
		{"two-docs", "providers: {}\n---\nproviders: {}\n", []string{"two-docs.yaml:2:1: a pricing file holds one YAML document; remove the second one"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParsePricing(c.name+".yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("ParsePricing succeeded, want an error")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *ConfigError", err)
			}
			lines := strings.Split(strings.TrimPrefix(err.Error(), "load pricing: "), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("got %d errors:\n%s\nwant %d:\n%s", len(lines), strings.Join(lines, "\n"), len(c.want), strings.Join(c.want, "\n"))
			}
			for i, w := range c.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("error %d = %q\nwant      %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestParsePricingEmpty(t *testing.T) {
	for _, src := range []string{"", "# nothing here\n", "~\n"} {
		p, err := ParsePricing("empty.yaml", []byte(src))
		if err != nil {
			t.Fatalf("ParsePricing(%q): %v", src, err)
		}
		if len(p.Rates()) != len(mustPricing(t).Rates()) {
			t.Errorf("ParsePricing(%q) changed the table", src)
		}
	}
}
