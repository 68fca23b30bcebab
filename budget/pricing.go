package budget

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed pricing.yaml
var defaultPricingYAML []byte

// defaultPricingName is the name the embedded table has in error messages.
const defaultPricingName = "budget/pricing.yaml (embedded)"

// maxPricePer1K caps a configured price (USD per 1,000 tokens), well above
// any real price, so every product of tokens and price stays in range.
const maxPricePer1K = 1000

// maxLongContextTokens caps long_context.above_prompt_tokens.
const maxLongContextTokens = 1 << 40

// Rate is the list price of one model. Prices are micro-USD per million
// tokens, which is the same number as USD per 1,000 tokens times 1e9.
type Rate struct {
	// Provider and Model name the table entry; both are empty for the
	// fail-closed rate charged to unknown models.
	Provider string
	Model    string
	// InputPerMillion is the price of a million prompt tokens.
	InputPerMillion MicroUSD
	// OutputPerMillion is the price of a million completion tokens.
	OutputPerMillion MicroUSD
	// LongContextAbove, when positive, is the prompt size above which the
	// whole call is charged at the LongContext prices.
	LongContextAbove           int64
	LongContextInputPerMillion MicroUSD
	// LongContextOutputPerMillion is the completion price of long-context calls.
	LongContextOutputPerMillion MicroUSD
}

// Cost returns the price of a call with the given token counts, rounded up
// to the next micro-dollar and saturating at MaxMicroUSD. Negative counts
// count as zero.
func (r Rate) Cost(promptTokens, completionTokens int64) MicroUSD {
	in, out := r.InputPerMillion, r.OutputPerMillion
	if r.LongContextAbove > 0 && promptTokens > r.LongContextAbove {
		in, out = r.LongContextInputPerMillion, r.LongContextOutputPerMillion
	}
	// 128-bit sum of tokens × price, then a ceiling division by a million.
	hi1, lo1 := bits.Mul64(uint64(max(promptTokens, 0)), uint64(max(in, 0)))
	hi2, lo2 := bits.Mul64(uint64(max(completionTokens, 0)), uint64(max(out, 0)))
	lo, carry := bits.Add64(lo1, lo2, 0)
	hi, overflow := bits.Add64(hi1, hi2, carry)
	const million = 1_000_000
	if overflow != 0 || hi >= million {
		return MaxMicroUSD
	}
	q, rem := bits.Div64(hi, lo, million)
	if rem != 0 {
		q++
	}
	if q > math.MaxInt64 {
		return MaxMicroUSD
	}
	return MicroUSD(q)
}

// Cost is an estimated or actual charge for one LLM call.
type Cost struct {
	// Rate is the price applied. Reconcile charges the actual tokens at the
	// same rate, even if the pricing table was reloaded in between.
	Rate Rate
	// Unknown is true when the model is not in the pricing table and was
	// charged at the most expensive known rates (fail closed).
	Unknown bool
	// Provider and Model are as requested (not normalised).
	Provider         string
	Model            string
	PromptTokens     int64
	CompletionTokens int64
	// Amount is the charge.
	Amount MicroUSD
}

// Pricing is an immutable table of model prices, safe for concurrent use.
type Pricing struct {
	asOf string
	// providers maps provider → model → rate, all lower case.
	providers map[string]map[string]Rate
	// anyProvider maps model → rate over every provider; when two providers
	// list the same model the more expensive rate is kept.
	anyProvider map[string]Rate
	// unknown is charged for models not in the table: the highest input and
	// the highest output price of any entry.
	unknown Rate
}

var defaultPricing = sync.OnceValues(func() (*Pricing, error) {
	t, err := parsePricingFile(defaultPricingName, defaultPricingYAML)
	if err != nil {
		return nil, fmt.Errorf("parse default pricing: %w", err)
	}
	p := &Pricing{providers: map[string]map[string]Rate{}}
	p.merge(t)
	return p, nil
})

// DefaultPricing returns the embedded list-price table (budget/pricing.yaml).
// The result is shared; Pricing values are immutable.
func DefaultPricing() (*Pricing, error) { return defaultPricing() }

// LoadPricing returns the default table with the entries of the override
// file at path merged over it (an entry replaces the default for the same
// provider and model; new providers and models are added). An empty path
// returns the defaults. Problems are reported as *ConfigError values naming
// the file, line and field.
func LoadPricing(path string) (*Pricing, error) {
	if path == "" {
		return DefaultPricing()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load pricing: %w", err)
	}
	return ParsePricing(path, data)
}

// ParsePricing is LoadPricing for an override already in memory; name is
// used in error messages.
func ParsePricing(name string, data []byte) (*Pricing, error) {
	base, err := DefaultPricing()
	if err != nil {
		return nil, err
	}
	t, err := parsePricingFile(name, data)
	if err != nil {
		return nil, fmt.Errorf("load pricing: %w", err)
	}
	p := base.clone()
	p.merge(t)
	return p, nil
}

func (p *Pricing) clone() *Pricing {
	c := &Pricing{asOf: p.asOf, providers: make(map[string]map[string]Rate, len(p.providers))}
	for prov, models := range p.providers {
		m := make(map[string]Rate, len(models))
		for k, r := range models {
			m[k] = r
		}
		c.providers[prov] = m
	}
	return c
}

// merge adds t's entries over p's and rebuilds the derived indexes.
func (p *Pricing) merge(t pricingFile) {
	if t.asOf != "" {
		p.asOf = t.asOf
	}
	for _, r := range t.rates {
		m := p.providers[r.Provider]
		if m == nil {
			m = map[string]Rate{}
			p.providers[r.Provider] = m
		}
		m[r.Model] = r
	}
	p.anyProvider = map[string]Rate{}
	p.unknown = Rate{}
	for _, r := range p.Rates() {
		if old, ok := p.anyProvider[r.Model]; !ok || r.maxPrice() > old.maxPrice() {
			p.anyProvider[r.Model] = r
		}
		p.unknown.InputPerMillion = max(p.unknown.InputPerMillion, r.InputPerMillion, r.LongContextInputPerMillion)
		p.unknown.OutputPerMillion = max(p.unknown.OutputPerMillion, r.OutputPerMillion, r.LongContextOutputPerMillion)
	}
}

func (r Rate) maxPrice() MicroUSD {
	return max(r.InputPerMillion, r.OutputPerMillion, r.LongContextInputPerMillion, r.LongContextOutputPerMillion)
}

// AsOf returns the date (YYYY-MM-DD) the prices reflect: the as_of of the
// override file when it sets one, otherwise that of the defaults.
func (p *Pricing) AsOf() string { return p.asOf }

// Rates lists every entry sorted by provider and model.
func (p *Pricing) Rates() []Rate {
	var out []Rate
	for _, models := range p.providers {
		for _, r := range models {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b Rate) int {
		if c := strings.Compare(a.Provider, b.Provider); c != 0 {
			return c
		}
		return strings.Compare(a.Model, b.Model)
	})
	return out
}

// UnknownRate is the rate charged for a model that is not in the table: the
// highest input and the highest output price of any entry.
func (p *Pricing) UnknownRate() Rate { return p.unknown }

// Lookup finds the rate for a model. Matching is case-insensitive. model may
// carry a provider qualifier ("openai/gpt-4o", which takes precedence over
// provider) or an unknown path prefix ("models/gemini-1.5-pro", which is
// ignored). Within the provider's entries, then within every provider's,
// the model matches an entry exactly or by the longest entry that is a
// prefix of it ending at '-', '_', '@' or ':' (so gpt-4o-2024-08-06 matches
// gpt-4o but gpt-4o does not match gpt-4). When nothing matches, Lookup
// returns UnknownRate and false.
func (p *Pricing) Lookup(provider, model string) (Rate, bool) {
	name := strings.ToLower(strings.TrimSpace(model))
	prov := strings.ToLower(strings.TrimSpace(provider))
	if i := strings.IndexByte(name, '/'); i > 0 {
		if _, ok := p.providers[name[:i]]; ok {
			prov, name = name[:i], name[i+1:]
		}
	}
	for {
		if r, ok := longestPrefix(p.providers[prov], name); ok {
			return r, true
		}
		if r, ok := longestPrefix(p.anyProvider, name); ok {
			return r, true
		}
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return p.unknown, false
		}
		name = name[i+1:]
	}
}

// Estimate prices a call: Lookup, then Rate.Cost.
func (p *Pricing) Estimate(provider, model string, promptTokens, completionTokens int64) Cost {
	r, ok := p.Lookup(provider, model)
	return Cost{
		Rate:             r,
		Unknown:          !ok,
		Provider:         provider,
		Model:            model,
		PromptTokens:     promptTokens,
		CompletionTokens: completionTokens,
		Amount:           r.Cost(promptTokens, completionTokens),
	}
}

func isModelBoundary(c byte) bool { return c == '-' || c == '_' || c == '@' || c == ':' }

// longestPrefix returns the entry equal to name, or else the longest entry
// that is a prefix of name followed by a boundary character.
func longestPrefix(table map[string]Rate, name string) (Rate, bool) {
	if len(table) == 0 || name == "" {
		return Rate{}, false
	}
	if r, ok := table[name]; ok {
		return r, true
	}
	for i := len(name) - 1; i > 0; i-- {
		if isModelBoundary(name[i]) {
			if r, ok := table[name[:i]]; ok {
				return r, true
			}
		}
	}
	return Rate{}, false
}

// ConfigError is one problem in a pricing file: where it is (Line and
// Column are 1-based, 0 when unknown), which field (a dotted path such as
// "providers.openai.gpt-4o.input_per_1k") and what is wrong.
type ConfigError struct {
	File   string
	Line   int
	Column int
	Field  string
	Msg    string
}

// Error renders the error as "file:line:column: field: message".
func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// pricingFile is one parsed pricing file.
type pricingFile struct {
	asOf  string
	rates []Rate
}

type pricingParser struct {
	file string
	errs []*ConfigError
}

func (pp *pricingParser) errorf(n *yaml.Node, field, format string, args ...any) {
	e := &ConfigError{File: pp.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	pp.errs = append(pp.errs, e)
}

// parsePricingFile parses and validates one pricing file. Errors are joined
// *ConfigError values.
func parsePricingFile(name string, data []byte) (pricingFile, error) {
	pp := &pricingParser{file: name}
	var out pricingFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return out, nil // an empty file overrides nothing
		}
		return out, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return out, yamlError(name, err)
		}
		pp.errorf(&extra, "", "a pricing file holds one YAML document; remove the second one")
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.ShortTag() == "!!null" {
		return out, pp.err()
	}
	pp.mapping(doc, "", []string{"as_of", "providers"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "as_of":
			if s, ok := pp.str(v, "as_of"); ok {
				if _, err := time.Parse(time.DateOnly, s); err != nil {
					pp.errorf(v, "as_of", "want a date as YYYY-MM-DD, got %q", s)
				} else {
					out.asOf = s
				}
			}
		case "providers":
			out.rates = pp.providers(v)
		}
	})
	return out, pp.err()
}

// err returns the problems found, sorted by position and joined, or nil.
func (pp *pricingParser) err() error {
	slices.SortStableFunc(pp.errs, func(x, y *ConfigError) int {
		if x.Line != y.Line {
			return x.Line - y.Line
		}
		return x.Column - y.Column
	})
	errs := make([]error, len(pp.errs))
	for i, e := range pp.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// yamlError turns a YAML syntax error ("yaml: line 3: ...") into a
// *ConfigError with the line.
func yamlError(file string, err error) error {
	msg := err.Error()
	e := &ConfigError{File: file, Msg: msg}
	if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if line, convErr := strconv.Atoi(num); convErr == nil {
				e.Line, e.Msg = line, "invalid YAML: "+text
			}
		}
	} else if rest, ok := strings.CutPrefix(msg, "yaml: "); ok {
		e.Msg = "invalid YAML: " + rest
	}
	return e
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.ShortTag() == "!!null" {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

// mapping walks a mapping node, reporting unknown and duplicate keys.
func (pp *pricingParser) mapping(n *yaml.Node, path string, known []string, fn func(key string, k, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		pp.errorf(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		field := join(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			pp.errorf(k, field, "duplicate key (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		if known != nil && !slices.Contains(known, k.Value) {
			pp.errorf(k, field, "unknown field %q (known: %s)", k.Value, strings.Join(known, ", "))
			continue
		}
		fn(k.Value, k, v)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (pp *pricingParser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		pp.errorf(n, path, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (pp *pricingParser) providers(n *yaml.Node) []Rate {
	var rates []Rate
	pp.mapping(n, "providers", nil, func(prov string, k, v *yaml.Node) {
		path := join("providers", prov)
		if !validName(prov) || strings.ContainsRune(prov, '/') {
			pp.errorf(k, path, "provider name must be non-empty, without spaces or '/'")
			return
		}
		lower := map[string]int{}
		pp.mapping(v, path, nil, func(model string, mk, mv *yaml.Node) {
			mpath := join(path, model)
			if !validName(model) {
				pp.errorf(mk, mpath, "model name must be non-empty and without spaces")
				return
			}
			lm := strings.ToLower(model)
			if line, dup := lower[lm]; dup {
				pp.errorf(mk, mpath, "duplicate model (names are case-insensitive; first at line %d)", line)
				return
			}
			lower[lm] = mk.Line
			if r, ok := pp.rate(mv, mpath); ok {
				r.Provider, r.Model = strings.ToLower(prov), lm
				rates = append(rates, r)
			}
		})
	})
	return rates
}

func validName(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

func (pp *pricingParser) rate(n *yaml.Node, path string) (Rate, bool) {
	var r Rate
	var in, out bool
	ok := true
	pp.mapping(n, path, []string{"input_per_1k", "output_per_1k", "long_context"}, func(key string, _, v *yaml.Node) {
		field := join(path, key)
		good := true
		switch key {
		case "input_per_1k":
			in = true
			r.InputPerMillion, good = pp.price(v, field)
		case "output_per_1k":
			out = true
			r.OutputPerMillion, good = pp.price(v, field)
		case "long_context":
			good = pp.longContext(v, field, &r)
		}
		ok = ok && good
	})
	if n.Kind != yaml.MappingNode {
		return r, false
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"input_per_1k", in}, {"output_per_1k", out}} {
		if !f.set {
			pp.errorf(n, join(path, f.name), "missing: every model needs input_per_1k and output_per_1k")
			ok = false
		}
	}
	return r, ok
}

func (pp *pricingParser) longContext(n *yaml.Node, path string, r *Rate) bool {
	var above, in, out bool
	ok := true
	pp.mapping(n, path, []string{"above_prompt_tokens", "input_per_1k", "output_per_1k"}, func(key string, _, v *yaml.Node) {
		field := join(path, key)
		var good bool
		switch key {
		case "above_prompt_tokens":
			above = true
			r.LongContextAbove, good = pp.tokens(v, field)
		case "input_per_1k":
			in = true
			r.LongContextInputPerMillion, good = pp.price(v, field)
		case "output_per_1k":
			out = true
			r.LongContextOutputPerMillion, good = pp.price(v, field)
		}
		ok = ok && good
	})
	if n.Kind != yaml.MappingNode {
		return false
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"above_prompt_tokens", above}, {"input_per_1k", in}, {"output_per_1k", out}} {
		if !f.set {
			pp.errorf(n, join(path, f.name), "missing: long_context needs above_prompt_tokens, input_per_1k and output_per_1k")
			ok = false
		}
	}
	return ok
}

// price parses a USD-per-1k price into micro-USD per million tokens.
func (pp *pricingParser) price(n *yaml.Node, path string) (MicroUSD, bool) {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!float") {
		pp.errorf(n, path, "expected a price in USD per 1,000 tokens, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
	switch {
	case err != nil || math.IsNaN(v) || math.IsInf(v, 0):
		pp.errorf(n, path, "expected a finite number, got %s", n.Value)
		return 0, false
	case v < 0:
		pp.errorf(n, path, "price must not be negative, got %s", n.Value)
		return 0, false
	case v > maxPricePer1K:
		pp.errorf(n, path, "price %s USD per 1,000 tokens is over the maximum of %d", n.Value, maxPricePer1K)
		return 0, false
	}
	return MicroUSD(math.Round(v * 1e9)), true
}

func (pp *pricingParser) tokens(n *yaml.Node, path string) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		pp.errorf(n, path, "expected a whole number of tokens, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
	if err != nil || v <= 0 || v > maxLongContextTokens {
		pp.errorf(n, path, "must be between 1 and %d tokens, got %s", int64(maxLongContextTokens), n.Value)
		return 0, false
	}
	return v, true
}
