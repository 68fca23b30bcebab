package scan

import (
	"math"
	"strings"
)

// identClass says what kind of secret an identifier (a variable, key or header name) holds.
type identClass uint8

const (
	idNone   identClass = iota
	idSecret            // a generic secret: password, token, api key, ...
	idAuth              // an Authorization header: the value may start with a scheme
	idAWS               // an AWS secret access key
)

// secretWords make an identifier secret-holding when its normalized form (lower case, without
// '_', '-', '.' and spaces) contains one.
var secretWords = [...]string{
	"secret", "password", "passwd", "passphrase", "token", "apikey", "accesskey", "privatekey",
	"signingkey", "encryptionkey", "masterkey", "authkey", "accountkey", "sharedkey", "hmackey",
	"clientkey", "credential", "pwd",
}

// notSecretWords make an identifier not secret-holding when its normalized form contains one.
var notSecretWords = [...]string{"public", "publishable", "pubkey", "tokenizer", "keyboard"}

// notSecretSuffixes make an identifier not secret-holding when its normalized form ends in
// one: it names something about the secret (its id, name, type, location, size, lifetime, ...),
// not the secret itself.
var notSecretSuffixes = [...]string{
	"id", "ids", "name", "names", "type", "types", "url", "uri", "urls", "path", "paths", "file",
	"filename", "dir", "header", "endpoint", "length", "len", "size", "count", "ttl", "expiry",
	"expires", "expiresat", "expiresin", "expiration", "format", "field", "prefix", "env", "var",
	"version", "mode", "policy", "provider", "issuer", "scope", "scopes", "limit", "limits",
	"usage", "hint", "label", "ref", "arn", "kind", "template", "regex", "pattern",
	"enabled", "required", "rotation", "param", "location", "store", "manager", "backend",
	"source", "class", "hash", "digest", "checksum", "sha", "length", "min", "max", "strength",
}

// secretWordsByFirst groups secretWords and "auth" by their first byte.
var secretWordsByFirst = func() (t [256][]string) {
	for _, w := range append(secretWords[:], "auth") {
		t[w[0]] = append(t[w[0]], w)
	}
	return t
}()

// suffixesByLast groups notSecretSuffixes by their last byte.
var suffixesByLast = func() (t [256][]string) {
	for _, w := range notSecretSuffixes {
		t[w[len(w)-1]] = append(t[w[len(w)-1]], w)
	}
	return t
}()

// classifyIdent classifies an identifier such as AWS_SECRET_ACCESS_KEY, "x-api-key" or
// client.secret by the words it contains.
func classifyIdent(id string) identClass {
	var buf [64]byte
	n := 0
	for i := 0; i < len(id); i++ {
		ch := id[i]
		if ch == '_' || ch == '-' || ch == '.' || ch == ' ' {
			continue
		}
		if n == len(buf) {
			return idNone
		}
		buf[n] = lower(ch)
		n++
	}
	norm := buf[:n]
	cls := idNone
	switch {
	case containsStr(norm, "secretaccesskey") || (containsStr(norm, "aws") && containsStr(norm, "secret")):
		cls = idAWS
	case containsStr(norm, "authorization") || string(norm) == "auth":
		cls = idAuth
	case string(norm) == "key" || string(norm) == "pwd" || string(norm) == "pass" || string(norm) == "pw":
		cls = idSecret
	default:
	scan:
		for i := range norm {
			for _, w := range secretWordsByFirst[norm[i]] {
				if len(norm)-i >= len(w) && string(norm[i:i+len(w)]) == w {
					if w == "auth" && len(norm)-i >= 6 && string(norm[i:i+6]) == "author" {
						continue
					}
					cls = idSecret
					break scan
				}
			}
		}
	}
	if cls == idNone {
		return idNone
	}
	for _, w := range notSecretWords {
		if containsStr(norm, w) {
			return idNone
		}
	}
	for _, w := range suffixesByLast[norm[len(norm)-1]] {
		if len(norm) >= len(w) && string(norm[len(norm)-len(w):]) == w {
			return idNone
		}
	}
	return cls
}

// containsStr reports whether b contains w, without converting b to a string.
func containsStr(b []byte, w string) bool {
	for i := 0; i+len(w) <= len(b); i++ {
		if b[i] == w[0] && string(b[i:i+len(w)]) == w {
			return true
		}
	}
	return false
}

// identLimit bounds the identifier length a keyword validator looks at.
const identLimit = 64

// onKeyword validates a secret assigned to a secret-named identifier: the keyword s[a:end]
// lies in an identifier, which is followed by an assignment (":", "=", ":=", "=>", "==") and
// a token (quoted or not). For AWS-named identifiers whitespace may stand for the operator.
func (sc *Scanner) onKeyword(c *scanCtx, s string, a, end int) {
	if a < c.t.identEnd {
		return // already looked at this identifier
	}
	l := a
	for l > 0 && a-l <= identLimit && class[s[l-1]]&cIdent != 0 {
		l--
	}
	r := end
	for r < len(s) && r-end <= identLimit && class[s[r]]&cIdent != 0 {
		r++
	}
	c.t.identEnd = r
	if r-l > identLimit {
		return
	}
	j := r
	if j < len(s) && isQuote(s[j]) {
		j++
	}
	j = skipBlank(s, j)
	op := false
	if j < len(s) {
		switch s[j] {
		case ':':
			op = true
			j++
			if j < len(s) && s[j] == '=' {
				j++
			}
		case '=':
			op = true
			j++
			if j < len(s) && (s[j] == '>' || s[j] == '=') {
				j++
			}
		}
	}
	if !op && (j == r || j >= len(s) || !isB64(s[j])) {
		return // most keywords in prose and code: no assignment follows
	}
	if id := s[l:r]; id != c.t.lastIdent {
		c.t.lastIdent, c.t.lastIdentCls = id, classifyIdent(id)
	}
	cls := c.t.lastIdentCls
	if cls == idNone || (!op && cls != idAWS) {
		return
	}
	sc.value(c, s, skipBlank(s, j), cls, l)
}

// onBearer validates "Bearer <token>" anywhere.
func (sc *Scanner) onBearer(c *scanCtx, s string, a, end int) {
	if (a > 0 && class[s[a-1]]&cIdent != 0) || end >= len(s) || s[end] != ' ' {
		return
	}
	sc.token(c, s, skipBlank(s, end), 0, idAuth, true, a)
}

func skipBlank(s string, j int) int {
	for j < len(s) && (s[j] == ' ' || s[j] == '\t') {
		j++
	}
	return j
}

// value validates the value at s[j] assigned to an identifier of class cls starting at s[ident].
func (sc *Scanner) value(c *scanCtx, s string, j int, cls identClass, ident int) {
	var q byte
	if j < len(s) && isQuote(s[j]) {
		q = s[j]
		j++
	}
	bearer := false
	if cls == idAuth {
		switch {
		case hasPrefixFold(s[j:], "basic "):
			sc.basic(c, s, skipBlank(s, j+6), q)
			return
		case hasPrefixFold(s[j:], "bearer "):
			j, bearer = skipBlank(s, j+7), true
		case hasPrefixFold(s[j:], "token "):
			j, bearer = skipBlank(s, j+6), true
		case hasPrefixFold(s[j:], "bot "):
			j, bearer = skipBlank(s, j+4), true
		}
	}
	sc.token(c, s, j, q, cls, bearer, ident)
}

// maxToken bounds the length of a generic token.
const maxToken = 4096

// token validates the token at s[j]: up to the closing quote q when quoted (printable ASCII
// without spaces), else a run of base64/base64url characters (and '.', '~' after a Bearer
// scheme) that ends where a value ends.
func (sc *Scanner) token(c *scanCtx, s string, j int, q byte, cls identClass, bearer bool, ident int) {
	start := j
	if q != 0 {
		for j < len(s) && j-start <= maxToken && s[j] != q && s[j] > ' ' && s[j] < 0x7f && s[j] != '\\' {
			j++
		}
		if j >= len(s) || s[j] != q {
			return
		}
	} else {
		for j < len(s) && j-start <= maxToken && (class[s[j]]&(cB64|cURL) != 0 || s[j] == '%' || (bearer && (s[j] == '.' || s[j] == '~'))) {
			j++
		}
		for j < len(s) && s[j] == '=' {
			j++
		}
		if j < len(s) && !isTokenEnd(s[j]) {
			return
		}
	}
	if k, ok := sc.tokenKind(s[start:j], cls, s, ident); ok {
		sc.add(c, k, start, j)
	}
}

// awsWindow is how far before a secret-named identifier the word "aws" makes a 40-character
// token an AWS secret access key.
const awsWindow = 256

// tokenKind decides whether tok, assigned to an identifier of class cls at s[ident], is an AWS
// secret access key, a generic high-entropy token, or nothing.
func (sc *Scanner) tokenKind(tok string, cls identClass, s string, ident int) (kindID, bool) {
	if len(tok) > maxToken {
		return 0, false
	}
	k := classes(tok)
	if k&cDigit == 0 || k&(cUpper|cLower) == 0 {
		return 0, false
	}
	if len(tok) == 40 && sc.enabled[kAWSSecret] && allB64(tok) &&
		(cls == idAWS || (cls == idSecret && indexFold(s[max(0, ident-awsWindow):ident], "aws") >= 0)) &&
		shannon(tok) >= sc.entropy {
		return kAWSSecret, true
	}
	if len(tok) < sc.minTok || uuidLike(tok) || strings.Contains(tok, "://") {
		return 0, false
	}
	if strings.IndexByte(tok, '/') >= 0 && k&(cDigit|cUpper|cLower) != cDigit|cUpper|cLower {
		return 0, false // a path, not base64
	}
	if strings.Contains(tok, "${") || strings.Contains(tok, "{{") || tok[0] == '<' || tok[0] == '$' || tok[0] == '%' {
		return 0, false // a template placeholder
	}
	thr := sc.entropy
	if allHex(tok) {
		thr--
	}
	if shannon(tok) < thr {
		return 0, false
	}
	return kEntropy, true
}

// basic validates the credential of an "Authorization: Basic" header: base64 of user:password.
func (sc *Scanner) basic(c *scanCtx, s string, j int, q byte) {
	start := j
	j = spanWhile(s, j, cB64)
	for j < len(s) && s[j] == '=' {
		j++
	}
	if n := j - start; n < 8 || n > 512 || n%4 != 0 {
		return
	}
	if j < len(s) && s[j] != q && !isTokenEnd(s[j]) {
		return
	}
	var buf [384]byte
	n, ok := decodeBase64(buf[:], s[start:j], false)
	if !ok {
		return
	}
	dec := buf[:n]
	colon := -1
	for i, ch := range dec {
		if ch < ' ' || ch >= 0x7f {
			return
		}
		if ch == ':' && colon < 0 {
			colon = i
		}
	}
	if colon < 0 || colon == n-1 {
		return
	}
	sc.add(c, kBasicAuth, start, j)
}

// scanKeyed checks a JSON string value v against the class of its member's key: a whole value
// that is a token (or "<scheme> <token>" under an Authorization key) is a secret when the key
// names one.
func (sc *Scanner) scanKeyed(c *scanCtx, v, key string) {
	if len(v) < 16 || len(key) == 0 || len(key) > identLimit {
		return
	}
	j, ok := tokenStart(v)
	if !ok {
		return
	}
	if key != c.lastKey {
		c.lastKey, c.lastKeyCls = key, classifyIdent(key)
	}
	sc.keyedToken(c, v, j, c.lastKeyCls)
}

// scanNamed checks a JSON string value v held by a "value" member whose sibling "name" (or
// "key") names a secret, as in {"name": "DB_PASSWORD", "value": "..."}.
func (sc *Scanner) scanNamed(c *scanCtx, v string, cls identClass) {
	if len(v) < 16 {
		return
	}
	if j, ok := tokenStart(v); ok {
		sc.keyedToken(c, v, j, cls)
	}
}

// tokenStart returns where the token of a whole value v starts: 0, or after a scheme such as
// "Bearer ". It fails for values with other spaces or with bytes outside printable ASCII.
func tokenStart(v string) (int, bool) {
	j := 0
	if sp := strings.IndexByte(v, ' '); sp >= 0 {
		switch {
		case hasPrefixFold(v, "basic "), hasPrefixFold(v, "bearer "), hasPrefixFold(v, "token "), hasPrefixFold(v, "bot "):
			j = skipBlank(v, sp)
		default:
			return 0, false // prose, not a credential
		}
	}
	for i := j; i < len(v); i++ {
		if v[i] <= ' ' || v[i] >= 0x7f {
			return 0, false
		}
	}
	return j, true
}

// keyedToken checks v[j:], a whole JSON value (after its scheme at j > 0), as a token held by
// a member of class cls.
func (sc *Scanner) keyedToken(c *scanCtx, v string, j int, cls identClass) {
	if cls == idNone || (j > 0 && cls != idAuth) {
		return
	}
	if j > 0 && hasPrefixFold(v, "basic ") {
		sc.basic(c, v, j, 0)
		return
	}
	if k, ok := sc.tokenKind(v[j:], cls, "", 0); ok {
		sc.add(c, k, j, len(v))
	}
}

func allB64(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isB64(s[i]) {
			return false
		}
	}
	return true
}

func allHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if class[s[i]]&cHex == 0 {
			return false
		}
	}
	return true
}

// uuidLike reports whether s is a UUID (8-4-4-4-12 hex digits).
func uuidLike(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if class[s[i]]&cHex == 0 {
				return false
			}
		}
	}
	return true
}

// shannon returns the Shannon entropy of the bytes of s in bits per byte:
// log2(n) - (1/n)·Σ c·log2(c) over the count c of each distinct byte.
func shannon(s string) float64 {
	if len(s) == 0 || len(s) > maxToken {
		return 0
	}
	var counts [256]uint16
	var seen [256]byte
	k := 0
	for i := 0; i < len(s); i++ {
		b := s[i]
		if counts[b] == 0 {
			seen[k] = b
			k++
		}
		counts[b]++
	}
	sum := 0.0
	for _, b := range seen[:k] {
		sum += clog2(int(counts[b]))
	}
	n := float64(len(s))
	return math.Log2(n) - sum/n
}

// clogTable[c] is c·log2(c).
var clogTable = func() (t [64]float64) {
	for c := 1; c < len(t); c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return t
}()

func clog2(c int) float64 {
	if c < len(clogTable) {
		return clogTable[c]
	}
	return float64(c) * math.Log2(float64(c))
}
