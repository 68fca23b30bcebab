package scan

import (
	"slices"
	"strconv"
	"strings"
)

// Finding is one credential or piece of personal data found by a Scanner.
// It never holds the matched bytes, only where they are.
type Finding struct {
	// Kind says what was found.
	Kind Kind
	// Start and End are the byte span [Start, End) of the match: in the scanned string for
	// ScanString, in the decoded value at Path for ScanJSON.
	Start, End int
	// Path locates the JSON value holding the match, such as $.args.headers.Authorization or
	// $.items[2].token; it is empty for plain strings.
	Path string
	// Redacted is the replacement text, "[REDACTED:<kind>]".
	Redacted string
}

// String describes the finding without its content, such as "github_token at $.env.TOKEN[0:40]".
func (f Finding) String() string {
	var b strings.Builder
	b.WriteString(string(f.Kind))
	b.WriteString(" at ")
	b.WriteString(f.Path)
	b.WriteByte('[')
	b.WriteString(strconv.Itoa(f.Start))
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(f.End))
	b.WriteByte(']')
	return b.String()
}

// redactedText returns the replacement for kind k.
func redactedText(k Kind) string { return "[REDACTED:" + string(k) + "]" }

// Redact returns s with the span of every finding replaced by its Redacted text
// ("[REDACTED:<kind>]" when Redacted is empty). The findings must come from scanning s;
// spans that fall outside s or overlap an earlier span are skipped.
func Redact(s string, fs []Finding) string {
	if len(fs) == 0 {
		return s
	}
	if !slices.IsSortedFunc(fs, byStart) {
		fs = slices.Clone(fs)
		slices.SortStableFunc(fs, byStart)
	}
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for _, f := range fs {
		if f.Start < last || f.Start >= f.End || f.End > len(s) {
			continue
		}
		b.WriteString(s[last:f.Start])
		if f.Redacted != "" {
			b.WriteString(f.Redacted)
		} else {
			b.WriteString(redactedText(f.Kind))
		}
		last = f.End
	}
	b.WriteString(s[last:])
	return b.String()
}

func byStart(a, b Finding) int { return a.Start - b.Start }
