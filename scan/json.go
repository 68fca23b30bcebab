package scan

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// ErrInvalidJSON is wrapped by the errors ScanJSON and RedactJSON return for malformed input.
var ErrInvalidJSON = errors.New("scan: invalid JSON")

// maxPooledScratch bounds the decode buffers kept for reuse, so that one huge value does not
// pin its memory.
const maxPooledScratch = 64 << 10

// scratchPool holds buffers for decoding strings with escapes.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxDepth bounds the nesting of JSON values, as encoding/json does.
const maxDepth = 10000

// jframe is one open JSON object or array.
type jframe struct {
	obj              bool
	saType           bool       // object: "type": "service_account" seen
	nameCls          identClass // object: class of the secret its "name" or "key" member names
	keyEsc           bool
	idx              int // array: index of the current element
	keyStart, keyEnd int // object: raw bytes of the current member's key (inside the quotes)
	ctxStart, ctxEnd int // key naming the values of this container (its own key for arrays)
	pk               int // object: 1 + index in pks of its "private_key" value, 0 for none
}

// pkValue is a "private_key" string value holding a key, kept until its object closes.
type pkValue struct {
	ord, len         int
	rawStart, rawEnd int
	esc              bool
	path             string
}

// jfinding is a finding in a JSON value with where the value sits in the document.
type jfinding struct {
	Finding
	ord              int // ordinal of the value in document order
	rawStart, rawEnd int
	str, esc         bool
}

// ScanJSON returns the findings in the string (and number) values of the JSON document data,
// in document order. Each finding's Path names its value and Start/End index the decoded value.
// A member's key is context for its value: a token under a key such as "password" or
// "api_key" may be a high_entropy_token, and "Authorization" values may carry a scheme.
// Object keys themselves are not scanned. It returns nil, without allocating, when data is
// valid and holds nothing; malformed JSON gives an error wrapping ErrInvalidJSON.
func (sc *Scanner) ScanJSON(data []byte) ([]Finding, error) {
	jf, err := sc.scanJSON(data)
	if err != nil || len(jf) == 0 {
		return nil, err
	}
	out := make([]Finding, len(jf))
	for i := range jf {
		out[i] = jf[i].Finding
	}
	return out, nil
}

// RedactJSON returns data with every finding replaced in place by "[REDACTED:<kind>]", keeping
// the rest of each string ("Bearer sk-ant-..." becomes "Bearer [REDACTED:anthropic_api_key]"),
// and the findings as ScanJSON reports them. A number holding a finding becomes a string. The
// output is valid JSON; when nothing is found it is data itself. Malformed JSON gives an error
// wrapping ErrInvalidJSON.
func (sc *Scanner) RedactJSON(data []byte) (out []byte, findings []Finding, err error) {
	jf, err := sc.scanJSON(data)
	if err != nil {
		return nil, nil, err
	}
	if len(jf) == 0 {
		return data, nil, nil
	}
	out = make([]byte, 0, len(data)+len(jf)*16)
	findings = make([]Finding, len(jf))
	for i := range jf {
		findings[i] = jf[i].Finding
	}
	last := 0
	var dec []byte
	for i := 0; i < len(jf); {
		j := i + 1
		for j < len(jf) && jf[j].ord == jf[i].ord {
			j++
		}
		v := &jf[i]
		out = append(out, data[last:v.rawStart]...)
		var text string
		switch {
		case !v.str:
			text = string(data[v.rawStart:v.rawEnd])
		case v.esc:
			dec = appendUnquoted(dec[:0], data[v.rawStart+1:v.rawEnd-1])
			text = string(dec)
		default:
			text = string(data[v.rawStart+1 : v.rawEnd-1])
		}
		out = appendQuoted(out, Redact(text, findings[i:j]))
		last = v.rawEnd
		i = j
	}
	out = append(out, data[last:]...)
	return out, findings, nil
}

// view returns b as a string without copying. The scanner only reads it during the call and
// keeps no part of it: findings hold offsets, never text.
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func syntaxError(data []byte, i int, what string) error {
	if i >= len(data) {
		return fmt.Errorf("%w: unexpected end of input, want %s", ErrInvalidJSON, what)
	}
	return fmt.Errorf("%w: unexpected %q at offset %d, want %s", ErrInvalidJSON, data[i], i, what)
}

func skipWS(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanJSON validates data and scans its values.
func (sc *Scanner) scanJSON(data []byte) ([]jfinding, error) {
	if len(data) > sc.maxInput {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrInputTooLarge, len(data), sc.maxInput)
	}
	var scratch *[]byte // decodes strings with escapes; taken from scratchPool when needed
	out, err := sc.walkJSON(data, &scratch)
	if scratch != nil && cap(*scratch) <= maxPooledScratch {
		scratchPool.Put(scratch)
	}
	return out, err
}

// walkJSON validates data and scans its values.
func (sc *Scanner) walkJSON(data []byte, scratchp **[]byte) ([]jfinding, error) {
	var (
		c     scanCtx
		out   []jfinding
		pks   []pkValue
		fbuf  [32]jframe
		stack = fbuf[:0]
		ord   int
	)
	n := len(data)
	i := skipWS(data, 0)
value:
	for {
		if i >= n {
			return nil, syntaxError(data, i, "a value")
		}
		switch ch := data[i]; {
		case ch == '{' || ch == '[':
			if len(stack) >= maxDepth {
				return nil, fmt.Errorf("%w: nesting deeper than %d at offset %d", ErrInvalidJSON, maxDepth, i)
			}
			obj := ch == '{'
			var cs, ce int
			if len(stack) > 0 {
				if p := &stack[len(stack)-1]; p.obj {
					cs, ce = p.keyStart, p.keyEnd
				} else {
					cs, ce = p.ctxStart, p.ctxEnd
				}
			}
			stack = append(stack, jframe{obj: obj, ctxStart: cs, ctxEnd: ce})
			i = skipWS(data, i+1)
			if i < n && (obj && data[i] == '}' || !obj && data[i] == ']') {
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if obj {
				var err error
				if i, err = parseKey(data, i, &stack[len(stack)-1]); err != nil {
					return nil, err
				}
			}
			continue value
		case ch == '"':
			end, esc, err := scanString(data, i)
			if err != nil {
				return nil, err
			}
			ord++
			raw := data[i+1 : end-1]
			var v string
			if esc {
				if *scratchp == nil {
					*scratchp = scratchPool.Get().(*[]byte)
				}
				scratch := *scratchp
				*scratch = appendUnquoted((*scratch)[:0], raw)
				v = view(*scratch)
			} else {
				v = view(raw)
			}
			key := ""
			var top *jframe
			if len(stack) > 0 {
				top = &stack[len(stack)-1]
				if top.obj {
					key = view(data[top.keyStart:top.keyEnd])
				} else {
					key = view(data[top.ctxStart:top.ctxEnd])
				}
			}
			sc.scanAll(&c, v)
			sc.scanKeyed(&c, v, key)
			if top != nil && top.obj {
				switch {
				case len(key) <= 4 && (equalFold(key, "name") || equalFold(key, "key")) && len(v) <= identLimit:
					top.nameCls = classifyIdent(v)
				case top.nameCls != idNone && equalFold(key, "value"):
					sc.scanNamed(&c, v, top.nameCls)
				}
			}
			if top != nil && top.obj && sc.enabled[kGCP] {
				if key == "type" && v == "service_account" {
					top.saType = true
				}
				if key == "private_key" && strings.Contains(v, "PRIVATE KEY") {
					pks = append(pks, pkValue{ord: ord, len: len(v), rawStart: i, rawEnd: end, esc: esc, path: jsonPath(data, stack)})
					top.pk = len(pks)
				}
			}
			if len(c.cands) > 0 {
				out = sc.appendJSON(out, &c, data, stack, ord, i, end, true, esc)
			}
			i = end
		case ch == 't' || ch == 'f' || ch == 'n':
			lit := "null"
			if ch == 't' {
				lit = "true"
			} else if ch == 'f' {
				lit = "false"
			}
			if !strings.HasPrefix(view(data[i:]), lit) {
				return nil, syntaxError(data, i, "a value")
			}
			i += len(lit)
			ord++
		default:
			end, err := scanNumber(data, i)
			if err != nil {
				return nil, err
			}
			ord++
			if (end-i >= 13 && sc.enabled[kCreditCard]) || len(sc.custom) > 0 {
				sc.scanAll(&c, view(data[i:end]))
				if len(c.cands) > 0 {
					out = sc.appendJSON(out, &c, data, stack, ord, i, end, false, false)
				}
			}
			i = end
		}
		// After a value: close containers, or move to the next member or element.
		for {
			i = skipWS(data, i)
			if len(stack) == 0 {
				if i != n {
					return nil, syntaxError(data, i, "end of input")
				}
				return out, nil
			}
			top := &stack[len(stack)-1]
			if i >= n {
				return nil, syntaxError(data, i, "',' or a closing bracket")
			}
			switch data[i] {
			case ',':
				i = skipWS(data, i+1)
				if top.obj {
					var err error
					if i, err = parseKey(data, i, top); err != nil {
						return nil, err
					}
				} else {
					top.idx++
				}
				continue value
			case '}':
				if !top.obj {
					return nil, syntaxError(data, i, "',' or ']'")
				}
				if top.saType && top.pk > 0 {
					out = gcpFinding(sc, out, &pks[top.pk-1])
				}
				stack = stack[:len(stack)-1]
				i++
			case ']':
				if top.obj {
					return nil, syntaxError(data, i, "',' or '}'")
				}
				stack = stack[:len(stack)-1]
				i++
			default:
				return nil, syntaxError(data, i, "',' or a closing bracket")
			}
		}
	}
}

// equalFold reports whether s equals the lower-case ASCII word w, ignoring case.
func equalFold(s, w string) bool { return len(s) == len(w) && hasPrefixFold(s, w) }

// parseKey parses `"key" :` at data[i] into f and returns the index of the member's value.
func parseKey(data []byte, i int, f *jframe) (int, error) {
	if i >= len(data) || data[i] != '"' {
		return 0, syntaxError(data, i, "a string key")
	}
	end, esc, err := scanString(data, i)
	if err != nil {
		return 0, err
	}
	f.keyStart, f.keyEnd, f.keyEsc = i+1, end-1, esc
	i = skipWS(data, end)
	if i >= len(data) || data[i] != ':' {
		return 0, syntaxError(data, i, "':'")
	}
	return skipWS(data, i+1), nil
}

// strSpecial marks the bytes that end or escape a JSON string or are not allowed in one.
var strSpecial = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// scanString validates the string starting at data[i] == '"' and returns the index after its
// closing quote and whether it holds escapes.
func scanString(data []byte, i int) (int, bool, error) {
	esc := false
	for j := i + 1; j < len(data); j++ {
		if !strSpecial[data[j]] {
			continue
		}
		switch ch := data[j]; {
		case ch == '"':
			return j + 1, esc, nil
		case ch == '\\':
			esc = true
			j++
			if j >= len(data) {
				return 0, false, syntaxError(data, j, "an escape")
			}
			switch data[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(data) {
					return 0, false, syntaxError(data, len(data), "4 hex digits")
				}
				for k := j + 1; k <= j+4; k++ {
					if class[data[k]]&cHex == 0 {
						return 0, false, syntaxError(data, k, "a hex digit")
					}
				}
				j += 4
			default:
				return 0, false, syntaxError(data, j, "an escape")
			}
		case ch < 0x20:
			return 0, false, syntaxError(data, j, "a string character")
		}
	}
	return 0, false, syntaxError(data, len(data), "'\"'")
}

// scanNumber validates the number at data[i] and returns the index after it.
func scanNumber(data []byte, i int) (int, error) {
	j := i
	if j < len(data) && data[j] == '-' {
		j++
	}
	switch {
	case j < len(data) && data[j] == '0':
		j++
	case j < len(data) && data[j] >= '1' && data[j] <= '9':
		for j < len(data) && isDigit(data[j]) {
			j++
		}
	default:
		return 0, syntaxError(data, j, "a value")
	}
	if j < len(data) && data[j] == '.' {
		j++
		if j >= len(data) || !isDigit(data[j]) {
			return 0, syntaxError(data, j, "a digit")
		}
		for j < len(data) && isDigit(data[j]) {
			j++
		}
	}
	if j < len(data) && (data[j] == 'e' || data[j] == 'E') {
		j++
		if j < len(data) && (data[j] == '+' || data[j] == '-') {
			j++
		}
		if j >= len(data) || !isDigit(data[j]) {
			return 0, syntaxError(data, j, "a digit")
		}
		for j < len(data) && isDigit(data[j]) {
			j++
		}
	}
	return j, nil
}

// appendJSON resolves the candidates of one value and appends them as findings.
func (sc *Scanner) appendJSON(out []jfinding, c *scanCtx, data []byte, stack []jframe, ord, rawStart, rawEnd int, str, esc bool) []jfinding {
	cs := sc.resolve(c.cands)
	path := jsonPath(data, stack)
	for _, cd := range cs {
		out = append(out, jfinding{Finding: sc.finding(cd, path), ord: ord, rawStart: rawStart, rawEnd: rawEnd, str: str, esc: esc})
	}
	c.cands = c.cands[:0]
	return out
}

// gcpFinding replaces the findings in the private_key value of a service account object by
// one gcp_service_account finding spanning the value.
func gcpFinding(sc *Scanner, out []jfinding, pk *pkValue) []jfinding {
	out = slices.DeleteFunc(out, func(x jfinding) bool { return x.ord == pk.ord })
	at, _ := slices.BinarySearchFunc(out, pk.ord, func(x jfinding, ord int) int { return x.ord - ord })
	return slices.Insert(out, at, jfinding{
		Finding: sc.finding(cand{0, pk.len, kGCP}, pk.path),
		ord:     pk.ord, rawStart: pk.rawStart, rawEnd: pk.rawEnd, str: true, esc: pk.esc,
	})
}

// jsonPath formats the path of the current value: $.a.b[2]['c d'].
func jsonPath(data []byte, stack []jframe) string {
	var b strings.Builder
	b.WriteByte('$')
	var kbuf []byte
	for _, f := range stack {
		if !f.obj {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(f.idx))
			b.WriteByte(']')
			continue
		}
		key := data[f.keyStart:f.keyEnd]
		if f.keyEsc {
			kbuf = appendUnquoted(kbuf[:0], key)
			key = kbuf
		}
		if plainKey(key) {
			b.WriteByte('.')
			b.Write(key)
			continue
		}
		b.WriteString("['")
		for _, ch := range key {
			if ch == '\'' || ch == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(ch)
		}
		b.WriteString("']")
	}
	return b.String()
}

func plainKey(k []byte) bool {
	if len(k) == 0 || isDigit(k[0]) {
		return false
	}
	for _, ch := range k {
		if !isWord(ch) {
			return false
		}
	}
	return true
}

// appendUnquoted appends the decoded contents of a valid JSON string (without its quotes).
// Unpaired surrogates decode to U+FFFD, as in encoding/json.
func appendUnquoted(dst, raw []byte) []byte {
	for i := 0; i < len(raw); i++ {
		ch := raw[i]
		if ch != '\\' {
			dst = append(dst, ch)
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := rune(hex4(raw[i+1:]))
			i += 4
			if utf16.IsSurrogate(r) {
				if i+6 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					if r2 := utf16.DecodeRune(r, rune(hex4(raw[i+3:]))); r2 != utf8.RuneError {
						dst = utf8.AppendRune(dst, r2)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, raw[i])
		}
	}
	return dst
}

func hex4(b []byte) uint16 {
	var v uint16
	for _, ch := range b[:4] {
		v <<= 4
		switch {
		case ch >= '0' && ch <= '9':
			v |= uint16(ch - '0')
		case ch >= 'a' && ch <= 'f':
			v |= uint16(ch - 'a' + 10)
		default:
			v |= uint16(ch - 'A' + 10)
		}
	}
	return v
}

// appendQuoted appends s as a JSON string. Bytes other than '"', '\\' and controls are kept
// as they are.
func appendQuoted(dst []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch == '"' || ch == '\\':
			dst = append(dst, '\\', ch)
		case ch == '\n':
			dst = append(dst, '\\', 'n')
		case ch == '\r':
			dst = append(dst, '\\', 'r')
		case ch == '\t':
			dst = append(dst, '\\', 't')
		case ch < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[ch>>4], hexDigits[ch&0xf])
		default:
			dst = append(dst, ch)
		}
	}
	return append(dst, '"')
}
