package policy

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// ValidationError describes one problem in a policy document: where it is
// (File, Line, Column; Line and Column are 1-based and 0 when unknown), which
// field (a dotted path such as "spec.network.allowlist[1].cidr") and what is
// wrong with it.
type ValidationError struct {
	File   string
	Line   int
	Column int
	Field  string
	Msg    string
}

// Error renders the error as "file:line:column: field: message".
func (e *ValidationError) Error() string {
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

// Errors is the list of validation errors returned by Parse, LoadPath and
// Compile, sorted by file and position. errors.As with a *ValidationError
// target finds the first one.
type Errors []*ValidationError

// Error renders one error per line.
func (e Errors) Error() string {
	s := make([]string, len(e))
	for i, v := range e {
		s[i] = v.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the individual errors for errors.Is and errors.As.
func (e Errors) Unwrap() []error {
	out := make([]error, len(e))
	for i, v := range e {
		out[i] = v
	}
	return out
}

func (e Errors) sort() {
	slices.SortStableFunc(e, func(a, b *ValidationError) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}
