package budget

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite generated documentation (docs/budgets.md's price table)")

const (
	docsPath   = "../docs/budgets.md"
	tableBegin = "<!-- pricing-table:begin -->\n"
	tableEnd   = "<!-- pricing-table:end -->"
)

// per1K renders micro-USD per million tokens as USD per 1,000 tokens.
func per1K(m MicroUSD) string { return strconv.FormatFloat(float64(m)/1e9, 'f', -1, 64) }

func renderPricingTable(p *Pricing) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Prices as of %s.\n\n", p.AsOf())
	b.WriteString("| provider | model | input | output | long context |\n|---|---|---:|---:|---|\n")
	for _, r := range p.Rates() {
		long := ""
		if r.LongContextAbove > 0 {
			long = fmt.Sprintf("prompts over %d tokens: %s / %s", r.LongContextAbove, per1K(r.LongContextInputPerMillion), per1K(r.LongContextOutputPerMillion))
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s |\n", r.Provider, r.Model, per1K(r.InputPerMillion), per1K(r.OutputPerMillion), long)
	}
	u := p.UnknownRate()
	fmt.Fprintf(&b, "| *any other* | *unknown model* | %s | %s | |\n", per1K(u.InputPerMillion), per1K(u.OutputPerMillion))
	return b.String()
}

// TestDocsPricingTable keeps the table in docs/budgets.md in step with
// pricing.yaml.
func TestDocsPricingTable(t *testing.T) {
	doc, err := os.ReadFile(docsPath)
	if err != nil {
		t.Skipf("docs not found: %v", err)
	}
	i := bytes.Index(doc, []byte(tableBegin))
	j := bytes.Index(doc, []byte(tableEnd))
	if i < 0 || j < i {
		t.Fatalf("%s lacks the %q … %q markers", docsPath, strings.TrimSpace(tableBegin), tableEnd)
	}
	want := renderPricingTable(mustPricing(t))
	got := string(doc[i+len(tableBegin) : j])
	if got == want {
		return
	}
	if !*update {
		t.Fatalf("%s's price table is out of date: run go test ./budget -run TestDocsPricingTable -update", docsPath)
	}
	out := append(append(append([]byte{}, doc[:i+len(tableBegin)]...), want...), doc[j:]...)
	if err := os.WriteFile(docsPath, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
