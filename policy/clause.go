package policy

// This file implements the clause grammar of requires_approval_if, kept for
// policies written for the original system:
//
//	args.command starts_with 'rm' OR (tool == "shell_exec" AND agent.team != 'ops')
//
// A clause expression is translated into a CEL expression over the same
// variables as hand-written CEL (agent, action, args) plus one hidden map,
// clause, that holds the action-derived operands (tool, url, path, method,
// command; see clauseOperands). There is then one evaluation engine, with
// one cost limit and one fail-closed path for run-time errors. Every clause
// is translated with guards, so that a missing operand or a value of the
// wrong type makes the clause false instead of failing: the translation
// never errors at run time, which keeps its semantics those of the original
// grammar rather than CEL's. A dedicated evaluator could avoid building the
// activation maps, but evaluating a condition already means decoding the
// JSON arguments, and a second engine would be a second set of semantics to
// keep fail-closed; BenchmarkEvaluateClauses shows a cost close to
// that of hand-written CEL (BenchmarkEvaluateCEL).

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/agent-assembly/agent-assembly/action"
)

// Limits of the clause grammar. They keep the translated CEL within the CEL
// parser's limits (the guards repeat an args path once per segment).
const (
	maxClauseSource = 8 << 10
	maxClauses      = 256
	maxClauseDepth  = 32
	maxArgsSegments = 16
	maxClauseCEL    = 90_000
)

// clauseVar is the CEL variable that holds the action-derived operands of
// translated clause expressions. It only exists in clauseEnv, so
// hand-written CEL cannot see it.
const clauseVar = "clause"

type clauseOp uint8

const (
	opEq clauseOp = iota + 1
	opNe
	opGt
	opGe
	opLt
	opLe
	opContains
	opStartsWith
	opIn
	opNotIn
)

var clauseOpNames = [...]string{opEq: "==", opNe: "!=", opGt: ">", opGe: ">=", opLt: "<", opLe: "<=",
	opContains: "contains", opStartsWith: "starts_with", opIn: "in", opNotIn: "not_in"}

const opList = "==, !=, >, >=, <, <=, contains, starts_with, in, not_in"

type valueKind uint8

const (
	valString valueKind = iota + 1
	valNumber
	valBool
)

// clauseValue is a literal on the right of a clause.
type clauseValue struct {
	kind valueKind
	str  string
	num  float64
	b    bool
}

type operandKind uint8

const (
	operandAction operandKind = iota + 1 // a key of the clause map
	operandAgent                         // a field of the agent map
	operandLabel                         // agent.labels.<key>
	operandArgs                          // args.<path>
)

// pathStep is one step of an args path: a key, or an index when index >= 0.
type pathStep struct {
	key   string
	index int
}

type clauseOperand struct {
	kind operandKind
	name string // clause key, agent field or label key
	path []pathStep
}

type nodeKind uint8

const (
	nodeOr nodeKind = iota + 1
	nodeAnd
	nodeClause
)

// clauseNode is a parsed clause expression: an OR or AND of children, or
// one clause.
type clauseNode struct {
	kind    nodeKind
	kids    []*clauseNode
	operand clauseOperand
	op      clauseOp
	value   clauseValue
	list    []clauseValue // in, not_in
}

// clauseSyntaxError is a parse error at a position of the expression.
type clauseSyntaxError struct {
	line, col int // 1-based, in runes
	msg       string
}

func (e *clauseSyntaxError) Error() string {
	return fmt.Sprintf("invalid clause expression at %d:%d: %s", e.line, e.col, e.msg)
}

type clauseParser struct {
	src     string
	pos     int
	depth   int
	clauses int
	err     *clauseSyntaxError
}

// parseClauses parses a clause expression.
func parseClauses(src string) (*clauseNode, error) {
	if len(src) > maxClauseSource {
		return nil, &clauseSyntaxError{line: 1, col: 1, msg: fmt.Sprintf("longer than %d bytes", maxClauseSource)}
	}
	p := &clauseParser{src: src}
	n := p.or()
	if p.err == nil {
		p.space()
		switch {
		case p.eof():
		case p.src[p.pos] == ')':
			p.fail(p.pos, "unmatched ')'")
		default:
			p.unexpected("join clauses with AND or OR")
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	return n, nil
}

func (p *clauseParser) fail(at int, format string, args ...any) {
	if p.err != nil {
		return
	}
	line, col := 1, 1
	for _, r := range p.src[:at] {
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	p.err = &clauseSyntaxError{line: line, col: col, msg: fmt.Sprintf(format, args...)}
}

// unexpected reports the token at the current position.
func (p *clauseParser) unexpected(hint string) {
	rest := p.src[p.pos:]
	switch {
	case strings.HasPrefix(rest, "&&"):
		p.fail(p.pos, "unexpected \"&&\": use AND")
	case strings.HasPrefix(rest, "||"):
		p.fail(p.pos, "unexpected \"||\": use OR")
	default:
		p.fail(p.pos, "unexpected %q: %s", token(rest), hint)
	}
}

// token returns the word or character rest starts with, for messages.
func token(rest string) string {
	n := 0
	for n < len(rest) && isWordByte(rest[n]) {
		n++
	}
	if n == 0 {
		_, n = utf8.DecodeRuneInString(rest)
	}
	return rest[:n]
}

func (p *clauseParser) eof() bool { return p.pos >= len(p.src) }

func (p *clauseParser) space() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// keyword consumes kw (case-insensitively) when it is a whole word at the
// current position.
func (p *clauseParser) keyword(kw string) bool {
	p.space()
	end := p.pos + len(kw)
	if end > len(p.src) || !strings.EqualFold(p.src[p.pos:end], kw) {
		return false
	}
	if end < len(p.src) && isWordByte(p.src[end]) {
		return false
	}
	p.pos = end
	return true
}

func (p *clauseParser) or() *clauseNode {
	n := p.and()
	if p.err != nil {
		return nil
	}
	if !p.keyword("or") {
		return n
	}
	out := &clauseNode{kind: nodeOr, kids: []*clauseNode{n}}
	for {
		k := p.and()
		if p.err != nil {
			return nil
		}
		out.kids = append(out.kids, k)
		if !p.keyword("or") {
			return out
		}
	}
}

func (p *clauseParser) and() *clauseNode {
	n := p.term()
	if p.err != nil {
		return nil
	}
	if !p.keyword("and") {
		return n
	}
	out := &clauseNode{kind: nodeAnd, kids: []*clauseNode{n}}
	for {
		k := p.term()
		if p.err != nil {
			return nil
		}
		out.kids = append(out.kids, k)
		if !p.keyword("and") {
			return out
		}
	}
}

func (p *clauseParser) term() *clauseNode {
	p.space()
	if p.eof() {
		p.fail(p.pos, "expected a clause (operand operator value) or '(' at the end of the expression")
		return nil
	}
	if p.src[p.pos] != '(' {
		return p.clause()
	}
	open := p.pos
	p.pos++
	if p.depth++; p.depth > maxClauseDepth {
		p.fail(open, "parentheses nested deeper than %d", maxClauseDepth)
		return nil
	}
	n := p.or()
	if p.err != nil {
		return nil
	}
	p.space()
	if p.eof() || p.src[p.pos] != ')' {
		if p.eof() {
			p.fail(open, "unclosed '('")
		} else {
			p.unexpected("expected ')', AND or OR")
		}
		return nil
	}
	p.pos++
	p.depth--
	return n
}

func (p *clauseParser) clause() *clauseNode {
	if p.clauses++; p.clauses > maxClauses {
		p.fail(p.pos, "more than %d clauses", maxClauses)
		return nil
	}
	n := &clauseNode{kind: nodeClause}
	start := p.pos
	text := p.operandText()
	if text == "" {
		p.unexpected("expected a clause (operand operator value)")
		return nil
	}
	var err error
	if n.operand, err = parseOperand(text); err != nil {
		p.fail(start, "%v", err)
		return nil
	}
	p.space()
	opAt := p.pos
	if n.op = p.operator(); n.op == 0 {
		if p.eof() {
			p.fail(opAt, "expected an operator (%s) after %q", opList, text)
		} else if p.src[p.pos] == '=' {
			p.fail(opAt, "unexpected \"=\": use == to compare")
		} else {
			p.fail(opAt, "unexpected %q: expected an operator (%s) after %q", token(p.src[p.pos:]), opList, text)
		}
		return nil
	}
	p.space()
	valAt := p.pos
	if n.op == opIn || n.op == opNotIn {
		if p.eof() || p.src[p.pos] != '[' {
			p.fail(valAt, "%s needs a list such as [a, \"b\", 3]", clauseOpNames[n.op])
			return nil
		}
		n.list = p.list()
		return n
	}
	if !p.eof() && p.src[p.pos] == '[' {
		p.fail(valAt, "a list needs in or not_in, not %s", clauseOpNames[n.op])
		return nil
	}
	v, ok := p.scalar(false)
	if !ok {
		return nil
	}
	switch {
	case n.op == opStartsWith && v.kind != valString:
		p.fail(valAt, "starts_with needs a quoted string")
		return nil
	case n.op >= opGt && n.op <= opLe && v.kind == valBool:
		p.fail(valAt, "%s needs a number or a quoted string, not a boolean", clauseOpNames[n.op])
		return nil
	}
	n.value = v
	return n
}

// operandText reads an operand: letters, digits, '_', '.', '-', '/' and
// [n] indexes.
func (p *clauseParser) operandText() string {
	start := p.pos
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case isWordByte(c) || c == '.' || c == '-' || c == '/':
			p.pos++
		case c == '[' && p.pos > start:
			end := p.pos + 1
			for end < len(p.src) && p.src[end] >= '0' && p.src[end] <= '9' {
				end++
			}
			if end == p.pos+1 || end >= len(p.src) || p.src[end] != ']' {
				return p.src[start:p.pos]
			}
			p.pos = end + 1
		default:
			return p.src[start:p.pos]
		}
	}
	return p.src[start:p.pos]
}

// parseOperand resolves the operand names of the grammar.
func parseOperand(text string) (clauseOperand, error) {
	switch text {
	case "tool", "url", "path", "method", "command":
		return clauseOperand{kind: operandAction, name: text}, nil
	case "agent.id":
		return clauseOperand{kind: operandAgent, name: "id"}, nil
	case "agent.org", "team.org":
		return clauseOperand{kind: operandAgent, name: "org"}, nil
	case "agent.team", "team.id":
		return clauseOperand{kind: operandAgent, name: "team"}, nil
	}
	if key, ok := strings.CutPrefix(text, "agent.labels."); ok {
		if key == "" || strings.ContainsAny(key, "[]") {
			return clauseOperand{}, fmt.Errorf("invalid label operand %q: use agent.labels.<key>", text)
		}
		return clauseOperand{kind: operandLabel, name: key}, nil
	}
	if rest, ok := strings.CutPrefix(text, "args."); ok {
		path, err := parseArgsPath(rest)
		if err != nil {
			return clauseOperand{}, fmt.Errorf("invalid args path %q: %v", text, err)
		}
		return clauseOperand{kind: operandArgs, path: path}, nil
	}
	return clauseOperand{}, fmt.Errorf("unknown operand %q (valid: tool, path, url, method, command, args.<path>, agent.id, agent.org, agent.team, agent.labels.<key>, team.id, team.org)", text)
}

// parseArgsPath parses "a.b[0].c" into steps.
func parseArgsPath(s string) ([]pathStep, error) {
	var steps []pathStep
	for _, seg := range strings.Split(s, ".") {
		key, rest, _ := strings.Cut(seg, "[")
		if key == "" {
			return nil, errors.New("empty key")
		}
		steps = append(steps, pathStep{key: key, index: -1})
		for rest != "" {
			num, after, ok := strings.Cut(rest, "]")
			i, err := strconv.Atoi(num)
			if !ok || err != nil || i < 0 || i > 1<<20 {
				return nil, fmt.Errorf("invalid index [%s]", num)
			}
			steps = append(steps, pathStep{index: i})
			if after == "" {
				break
			}
			if after[0] != '[' {
				return nil, fmt.Errorf("unexpected %q after an index", after)
			}
			rest = after[1:]
		}
	}
	if len(steps) > maxArgsSegments {
		return nil, fmt.Errorf("more than %d steps", maxArgsSegments)
	}
	return steps, nil
}

// operator reads one of the operators, or returns 0.
func (p *clauseParser) operator() clauseOp {
	rest := p.src[p.pos:]
	for _, sym := range []clauseOp{opEq, opNe, opGe, opLe, opGt, opLt} {
		if strings.HasPrefix(rest, clauseOpNames[sym]) {
			p.pos += len(clauseOpNames[sym])
			return sym
		}
	}
	for _, word := range []clauseOp{opContains, opStartsWith, opNotIn, opIn} {
		if p.keyword(clauseOpNames[word]) {
			return word
		}
	}
	return 0
}

// list reads [v, v, ...]; the current byte is '['.
func (p *clauseParser) list() []clauseValue {
	open := p.pos
	p.pos++
	out := []clauseValue{}
	p.space()
	if !p.eof() && p.src[p.pos] == ']' {
		p.pos++
		return out
	}
	for {
		v, ok := p.scalar(true)
		if !ok {
			return nil
		}
		out = append(out, v)
		p.space()
		if p.eof() {
			p.fail(open, "unclosed '['")
			return nil
		}
		switch p.src[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return out
		default:
			p.unexpected("expected ',' or ']' in the list")
			return nil
		}
	}
}

// scalar reads a quoted string, a number, true or false, and in lists also
// a bare word (a string).
func (p *clauseParser) scalar(inList bool) (clauseValue, bool) {
	p.space()
	if p.eof() {
		p.fail(p.pos, "expected a value at the end of the expression")
		return clauseValue{}, false
	}
	start := p.pos
	c := p.src[p.pos]
	switch {
	case c == '\'' || c == '"':
		return p.quoted(c)
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case isWordByte(c) || inList && c == '/':
		for p.pos < len(p.src) && (isWordByte(p.src[p.pos]) || strings.IndexByte(".-/:@", p.src[p.pos]) >= 0) {
			p.pos++
		}
		w := p.src[start:p.pos]
		switch {
		case strings.EqualFold(w, "true"):
			return clauseValue{kind: valBool, b: true}, true
		case strings.EqualFold(w, "false"):
			return clauseValue{kind: valBool}, true
		case inList:
			return clauseValue{kind: valString, str: w}, true
		}
		p.fail(start, "unquoted value %q: quote strings ('%s' or \"%s\"); only true, false and numbers are unquoted", w, w, w)
		return clauseValue{}, false
	}
	p.unexpected("expected a value (a quoted string, a number, true or false)")
	return clauseValue{}, false
}

// quoted reads a string in q quotes. A backslash escapes a quote or a
// backslash; any other backslash is literal ('C:\tmp' is C:\tmp).
func (p *clauseParser) quoted(q byte) (clauseValue, bool) {
	start := p.pos
	p.pos++
	var b strings.Builder
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == q:
			p.pos++
			return clauseValue{kind: valString, str: b.String()}, true
		case c == '\\' && p.pos+1 < len(p.src) && (p.src[p.pos+1] == '\'' || p.src[p.pos+1] == '"' || p.src[p.pos+1] == '\\'):
			b.WriteByte(p.src[p.pos+1])
			p.pos += 2
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
	p.fail(start, "unterminated string")
	return clauseValue{}, false
}

func (p *clauseParser) number() (clauseValue, bool) {
	start := p.pos
	s := p.src
	i := p.pos
	if s[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > j
	}
	ok := digits()
	if ok && i < len(s) && s[i] == '.' {
		i++
		ok = digits()
	}
	if ok && i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		ok = digits()
	}
	for i < len(s) && (isWordByte(s[i]) || s[i] == '.') {
		i, ok = i+1, false
	}
	p.pos = i
	if !ok {
		p.fail(start, "invalid number %q (quote strings)", s[start:i])
		return clauseValue{}, false
	}
	f, err := strconv.ParseFloat(s[start:i], 64)
	if err != nil {
		p.fail(start, "number %s is out of range", s[start:i])
		return clauseValue{}, false
	}
	return clauseValue{kind: valNumber, num: f}, true
}

// looksLikeClauses reports whether expr reads as a clause expression: it
// uses AND or OR, a word operator (contains, starts_with, not_in) or an
// operand only the clause grammar has (tool, path, url, method, command,
// team.*). None of them is valid CEL outside string literals (CEL spells
// them &&, ||, .contains(), .startsWith(), and has no such variables).
func looksLikeClauses(expr string) bool {
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '\'' || c == '"':
			i++
			for i < len(expr) && expr[i] != c {
				if expr[i] == '\\' {
					i++
				}
				i++
			}
			i++
		case isWordByte(c):
			start := i
			for i < len(expr) && (isWordByte(expr[i]) || expr[i] == '.') {
				i++
			}
			if start > 0 && expr[start-1] == '.' {
				continue // a field or method of something else
			}
			word := strings.ToLower(expr[start:i])
			root, _, _ := strings.Cut(word, ".")
			j := i
			for j < len(expr) && expr[j] == ' ' {
				j++
			}
			if j < len(expr) && expr[j] == '(' {
				continue // a function call
			}
			switch word {
			case "and", "or", "contains", "starts_with", "not_in":
				return true
			}
			switch root {
			case "tool", "path", "url", "method", "command", "team":
				return true
			}
		default:
			i++
		}
	}
	return false
}

// celSource translates the expression to CEL. See the comment at the top
// of the file for the guards.
func (n *clauseNode) celSource() (string, error) {
	var b strings.Builder
	n.writeCEL(&b)
	if b.Len() > maxClauseCEL {
		return "", errors.New("invalid clause expression: too long once compiled; shorten the args paths or split the condition")
	}
	return b.String(), nil
}

func (n *clauseNode) writeCEL(b *strings.Builder) {
	switch n.kind {
	case nodeOr, nodeAnd:
		sep := " || "
		if n.kind == nodeAnd {
			sep = " && "
		}
		b.WriteByte('(')
		for i, k := range n.kids {
			if i > 0 {
				b.WriteString(sep)
			}
			k.writeCEL(b)
		}
		b.WriteByte(')')
		return
	}
	x := n.operand.writeGuard(b)
	b.WriteString(" && ")
	v := func() { writeCELValue(b, n.value) }
	switch n.op {
	case opEq, opNe:
		b.WriteString(x + " " + clauseOpNames[n.op] + " ")
		v()
	case opGt, opGe, opLt, opLe:
		typ := "string"
		if n.value.kind == valNumber {
			typ = "double"
		}
		b.WriteString("type(" + x + ") == " + typ + " && " + x + " " + clauseOpNames[n.op] + " ")
		v()
	case opContains:
		if n.value.kind == valString {
			b.WriteString("((type(" + x + ") == string && " + x + ".contains(")
			v()
			b.WriteString(")) || (type(" + x + ") == list && ")
			v()
			b.WriteString(" in " + x + "))")
		} else {
			b.WriteString("type(" + x + ") == list && ")
			v()
			b.WriteString(" in " + x)
		}
	case opStartsWith:
		b.WriteString("type(" + x + ") == string && " + x + ".startsWith(")
		v()
		b.WriteByte(')')
	case opIn, opNotIn:
		if n.op == opNotIn {
			b.WriteByte('!')
		}
		b.WriteString("(" + x + " in [")
		for i, e := range n.list {
			if i > 0 {
				b.WriteString(", ")
			}
			writeCELValue(b, e)
		}
		b.WriteString("])")
	}
	b.WriteByte(')')
}

// writeGuard opens the clause's parenthesis, writes the conditions under
// which the operand exists and returns the CEL expression for its value.
func (o *clauseOperand) writeGuard(b *strings.Builder) string {
	b.WriteByte('(')
	switch o.kind {
	case operandAction:
		b.WriteString("has(" + clauseVar + "." + o.name + ")")
		return clauseVar + "." + o.name
	case operandAgent:
		b.WriteString("agent." + o.name + ` != ""`)
		return "agent." + o.name
	case operandLabel:
		key := celQuote(o.name)
		b.WriteString(key + " in agent.labels")
		return "agent.labels[" + key + "]"
	}
	x := "args"
	for i, s := range o.path {
		if i > 0 {
			b.WriteString(" && ")
		}
		if s.index >= 0 {
			n := strconv.Itoa(s.index)
			b.WriteString("type(" + x + ") == list && size(" + x + ") > " + n)
			x += "[" + n + "]"
			continue
		}
		key := celQuote(s.key)
		if i > 0 {
			b.WriteString("type(" + x + ") == map && ")
		}
		b.WriteString(key + " in " + x)
		x += "[" + key + "]"
	}
	return x
}

func writeCELValue(b *strings.Builder, v clauseValue) {
	switch v.kind {
	case valString:
		b.WriteString(celQuote(v.str))
	case valNumber:
		s := strconv.FormatFloat(v.num, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		b.WriteString(s)
	case valBool:
		b.WriteString(strconv.FormatBool(v.b))
	}
}

// celQuote renders s as a double-quoted CEL string literal.
func celQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case r < 0x80 && unicode.IsPrint(r):
			b.WriteRune(r)
		case r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// clauseOperands returns the action-derived operands that are set: tool
// (tool calls and results), url (the tool's target URL, or
// scheme://host:port/path of a network call), path (the path of the tool's
// target URL, the cleaned file path, or the network call's path), method
// (network calls) and command (process executions).
func clauseOperands(c *evalCtx) map[string]any {
	a := c.a
	m := make(map[string]any, 3)
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	switch a.Kind {
	case action.KindToolCall:
		put("tool", a.Tool.Name)
		if u := a.Tool.TargetURL; u != "" {
			put("url", u)
			if pu, err := url.Parse(u); err == nil {
				put("path", pu.Path)
			}
		}
	case action.KindToolResult:
		put("tool", a.Result.Name)
	case action.KindFileOperation:
		put("path", c.resource)
	case action.KindNetworkCall:
		put("url", networkURL(c.name, &a.Network))
		put("path", a.Network.Path)
		put("method", a.Network.Method)
	case action.KindProcessExec:
		put("command", a.Exec.Command)
	}
	return m
}

// networkURL renders a network call as scheme://host:port/path; the scheme
// is the lower-cased protocol ("tcp" when unset) and the port is omitted
// when 0.
func networkURL(host string, n *action.NetworkCall) string {
	if host == "" {
		return ""
	}
	scheme := strings.ToLower(n.Protocol)
	if scheme == "" {
		scheme = "tcp"
	}
	hp := host
	if n.Port != 0 {
		hp = net.JoinHostPort(host, strconv.FormatUint(uint64(n.Port), 10))
	} else if strings.IndexByte(host, ':') >= 0 {
		hp = "[" + host + "]"
	}
	p := n.Path
	if p != "" && p[0] != '/' {
		p = "/" + p
	}
	return scheme + "://" + hp + p
}
