package policy

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"
)

// Glob syntax (shared by rule name/resource globs, tool names, filesystem
// paths, process commands and LLM models):
//
//	*      any run of characters except '/'
//	**     any run of characters, including '/'
//	?      one character except '/'
//	[a-z]  one character in the class ('!' or '^' first negates); never '/'
//	\x     the literal character x
//
// A '/**' at the end also matches the directory itself ("/workspace/**"
// matches "/workspace"), a '**/' at the start also matches no directory
// ("**/.env" matches ".env"), and '/**/' also matches a single '/'.
//
// Patterns compile to a small NFA simulated with 256-bit state sets, so
// matching never allocates and never backtracks.

const maxGlobTokens = 255

const (
	tokByte uint8 = iota
	tokAny
	tokClass
	tokStar
	tokStarStar
)

type globTok struct {
	kind  uint8
	b     byte
	class *[4]uint64
}

type stateSet [4]uint64

func (s *stateSet) or(o *stateSet) {
	s[0] |= o[0]
	s[1] |= o[1]
	s[2] |= o[2]
	s[3] |= o[3]
}

func (s *stateSet) has(i int) bool { return s[i>>6]&(1<<(uint(i)&63)) != 0 }

func (s *stateSet) set(i int) { s[i>>6] |= 1 << (uint(i) & 63) }

func (s *stateSet) empty() bool { return s[0]|s[1]|s[2]|s[3] == 0 }

// glob is a compiled glob pattern. It is immutable after compileGlob.
type glob struct {
	pattern string
	literal bool     // no wildcards: match is string equality with lit
	lit     string   // the unescaped literal when literal is true
	prefix  string   // literal bytes every match starts with
	suffix  string   // literal bytes every match ends with
	start   int      // NFA state after prefix
	init    stateSet // active states before the first character after prefix
	toks    []globTok
	closure []stateSet // epsilon closure of each state, len(toks)+1
	score   int        // number of non-wildcard tokens, for specificity ordering
}

var errEmptyGlob = errors.New("empty pattern")

// compileGlob parses and compiles a glob pattern.
func compileGlob(pattern string) (*glob, error) {
	if pattern == "" {
		return nil, errEmptyGlob
	}
	g := &glob{pattern: pattern}
	var lit strings.Builder
	literal := true
	for i := 0; i < len(pattern); i++ {
		c := pattern[i]
		switch c {
		case '\\':
			if i+1 >= len(pattern) {
				return nil, fmt.Errorf("invalid pattern %q: trailing backslash", pattern)
			}
			i++
			g.toks = append(g.toks, globTok{kind: tokByte, b: pattern[i]})
			lit.WriteByte(pattern[i])
		case '?':
			literal = false
			g.toks = append(g.toks, globTok{kind: tokAny})
		case '*':
			literal = false
			n := 1
			for i+1 < len(pattern) && pattern[i+1] == '*' {
				n++
				i++
			}
			switch n {
			case 1:
				g.toks = append(g.toks, globTok{kind: tokStar})
			case 2:
				g.toks = append(g.toks, globTok{kind: tokStarStar})
			default:
				return nil, fmt.Errorf("invalid pattern %q: %q is not a wildcard (use * or **)", pattern, strings.Repeat("*", n))
			}
		case '[':
			literal = false
			set, next, err := parseClass(pattern, i)
			if err != nil {
				return nil, err
			}
			g.toks = append(g.toks, globTok{kind: tokClass, class: set})
			i = next
		case ']':
			return nil, fmt.Errorf("invalid pattern %q: unmatched ']' (escape it as \\])", pattern)
		default:
			g.toks = append(g.toks, globTok{kind: tokByte, b: c})
			lit.WriteByte(c)
		}
		if len(g.toks) > maxGlobTokens {
			return nil, fmt.Errorf("invalid pattern %q: longer than %d characters", pattern, maxGlobTokens)
		}
	}
	for _, t := range g.toks {
		if t.kind == tokByte || t.kind == tokClass {
			g.score++
		}
	}
	if literal {
		g.literal = true
		g.lit = lit.String()
		return g, nil
	}
	g.buildClosure()
	g.buildAffixes()
	return g, nil
}

func parseClass(p string, i int) (*[4]uint64, int, error) {
	var set [4]uint64
	j := i + 1
	negate := false
	if j < len(p) && (p[j] == '!' || p[j] == '^') {
		negate = true
		j++
	}
	n := 0
	for ; j < len(p) && p[j] != ']'; j++ {
		lo := p[j]
		if lo == '\\' {
			if j+1 >= len(p) {
				break
			}
			j++
			lo = p[j]
		}
		hi := lo
		if j+2 < len(p) && p[j+1] == '-' && p[j+2] != ']' {
			hi = p[j+2]
			j += 2
			if hi == '\\' {
				if j+1 >= len(p) {
					break
				}
				j++
				hi = p[j]
			}
			if hi < lo {
				return nil, 0, fmt.Errorf("invalid pattern %q: invalid range %c-%c in character class", p, lo, hi)
			}
		}
		for c := int(lo); c <= int(hi); c++ {
			set[c>>6] |= 1 << (uint(c) & 63)
		}
		n++
	}
	if j >= len(p) {
		return nil, 0, fmt.Errorf("invalid pattern %q: unterminated character class", p)
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("invalid pattern %q: empty character class", p)
	}
	if negate {
		for w := range set {
			set[w] = ^set[w]
		}
	}
	set['/'>>6] &^= 1 << ('/' & 63)
	return &set, j, nil
}

func (g *glob) isByte(i int, b byte) bool {
	return i >= 0 && i < len(g.toks) && g.toks[i].kind == tokByte && g.toks[i].b == b
}

// skipEdge returns the extra epsilon target of state i created by a '**'
// that may also match nothing together with an adjacent '/', or -1.
func (g *glob) skipEdge(i int) int {
	n := len(g.toks)
	// "/**/" and trailing "/**": from before the '/' to after the '**'.
	if g.isByte(i, '/') && i+1 < n && g.toks[i+1].kind == tokStarStar && (i+2 == n || g.isByte(i+2, '/')) {
		return i + 2
	}
	return -1
}

// leadingSkip reports whether the pattern starts with "**/", which may also
// match nothing at the start of the input.
func (g *glob) leadingSkip() bool {
	return len(g.toks) > 1 && g.toks[0].kind == tokStarStar && g.isByte(1, '/')
}

func (g *glob) buildClosure() {
	n := len(g.toks)
	g.closure = make([]stateSet, n+1)
	g.closure[n].set(n)
	for i := n - 1; i >= 0; i-- {
		var c stateSet
		c.set(i)
		if k := g.toks[i].kind; k == tokStar || k == tokStarStar {
			c.or(&g.closure[i+1])
		}
		if t := g.skipEdge(i); t >= 0 {
			c.or(&g.closure[t])
		}
		g.closure[i] = c
	}
}

func (g *glob) buildAffixes() {
	n := len(g.toks)
	// Prefix: leading literal bytes, stopping before any state that has a
	// skip edge (its '/' is optional).
	i := 0
	var b strings.Builder
	for i < n && g.toks[i].kind == tokByte && g.skipEdge(i) < 0 {
		b.WriteByte(g.toks[i].b)
		i++
	}
	g.prefix = b.String()
	g.start = i
	g.init = g.closure[i]
	if i == 0 && g.leadingSkip() {
		g.init.or(&g.closure[2])
	}
	// Suffix: trailing literal bytes that every match must end with.
	j := n
	for j > i && g.toks[j-1].kind == tokByte {
		j--
	}
	// A leading "**/" makes the '/' right after it optional.
	if j == 1 && g.leadingSkip() {
		j = 2
	}
	if j > n {
		j = n
	}
	var s strings.Builder
	for k := j; k < n; k++ {
		s.WriteByte(g.toks[k].b)
	}
	g.suffix = s.String()
}

// match reports whether s matches the whole pattern. It does not allocate.
func (g *glob) match(s string) bool {
	if g.literal {
		return s == g.lit
	}
	if len(s) < len(g.prefix)+len(g.suffix) || s[:len(g.prefix)] != g.prefix || s[len(s)-len(g.suffix):] != g.suffix {
		return false
	}
	n := len(g.toks)
	cur := g.init
	for i := len(g.prefix); i < len(s); i++ {
		c := s[i]
		var next stateSet
		for w := 0; w < 4; w++ {
			m := cur[w]
			for m != 0 {
				b := bits.TrailingZeros64(m)
				m &= m - 1
				st := w<<6 | b
				if st >= n {
					continue
				}
				t := &g.toks[st]
				switch t.kind {
				case tokByte:
					if c == t.b {
						next.or(&g.closure[st+1])
					}
				case tokAny:
					if c != '/' {
						next.or(&g.closure[st+1])
					}
				case tokClass:
					if t.class[c>>6]&(1<<(c&63)) != 0 {
						next.or(&g.closure[st+1])
					}
				case tokStar:
					if c != '/' {
						next.or(&g.closure[st])
					}
				case tokStarStar:
					next.or(&g.closure[st])
				}
			}
		}
		if next.empty() {
			return false
		}
		cur = next
	}
	return cur.has(n)
}

// String returns the source pattern.
func (g *glob) String() string { return g.pattern }
