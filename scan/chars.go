package scan

// Byte classes, one table lookup each.
const (
	cDigit = 1 << iota // 0-9
	cUpper             // A-Z
	cLower             // a-z
	cB64               // A-Z a-z 0-9 + /
	cURL               // A-Z a-z 0-9 - _
	cIdent             // A-Z a-z 0-9 _ - .
	cLocal             // email local part: A-Z a-z 0-9 . _ % + -
	cHex               // 0-9 a-f A-F
)

var class = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		var k uint8
		switch {
		case b >= '0' && b <= '9':
			k |= cDigit | cB64 | cURL | cIdent | cLocal | cHex
		case b >= 'A' && b <= 'Z':
			k |= cUpper | cB64 | cURL | cIdent | cLocal
		case b >= 'a' && b <= 'z':
			k |= cLower | cB64 | cURL | cIdent | cLocal
		}
		if (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F') {
			k |= cHex
		}
		switch b {
		case '+':
			k |= cB64 | cLocal
		case '/':
			k |= cB64
		case '-':
			k |= cURL | cIdent | cLocal
		case '_':
			k |= cURL | cIdent | cLocal
		case '.':
			k |= cIdent | cLocal
		case '%':
			k |= cLocal
		}
		t[c] = k
	}
	return t
}()

func isDigit(c byte) bool  { return c-'0' < 10 }
func isAlnum(c byte) bool  { return class[c]&(cDigit|cUpper|cLower) != 0 }
func isLetter(c byte) bool { return class[c]&(cUpper|cLower) != 0 }
func isWord(c byte) bool   { return isAlnum(c) || c == '_' }
func isURLSafe(c byte) bool {
	return class[c]&cURL != 0
}
func isB64(c byte) bool { return class[c]&cB64 != 0 }
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// isQuote reports whether c opens or closes a quoted value.
func isQuote(c byte) bool { return c == '"' || c == '\'' || c == '`' }

// isTokenEnd reports whether c may follow a token: whitespace, a quote, or punctuation that
// ends a value in code, configs, URLs and headers. A backslash ends a token in raw JSON text.
func isTokenEnd(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\f', '\v', '"', '\'', '`', ',', ';', '&', ')', ']', '}', '>', '<', '\\', '|':
		return true
	}
	return false
}

// hasPrefixFold reports whether s starts with the lower-case ASCII prefix p, ignoring case.
func hasPrefixFold(s, p string) bool {
	if len(s) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		if lower(s[i]) != p[i] {
			return false
		}
	}
	return true
}

// indexFold returns the index of the lower-case ASCII needle in s, ignoring case, or -1.
func indexFold(s, needle string) int {
	if len(needle) == 0 {
		return 0
	}
	first := needle[0]
	for i := 0; i+len(needle) <= len(s); i++ {
		if lower(s[i]) == first && hasPrefixFold(s[i:], needle) {
			return i
		}
	}
	return -1
}
