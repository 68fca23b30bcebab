package scan

import "strings"

// add records a candidate of a builtin kind when that kind is enabled.
func (sc *Scanner) add(c *scanCtx, k kindID, start, end int) {
	if sc.enabled[k] {
		c.cands = append(c.cands, cand{start, end, k})
	}
}

// onCandidate runs the validators of bucket bk for the pair at s[i]. It returns the index of
// the last byte a validator consumed, when it is past i.
func (sc *Scanner) onCandidate(c *scanCtx, s string, i int, bk *bucket) int {
	resume := 0
	if bk.digit {
		resume = sc.onDigit(c, s, i+1)
	}
	if bk.at {
		sc.onAt(c, s, i+1)
	}
	if len(bk.lits) == 0 || i+2 >= len(s) || !bk.hasThird(s[i+2]) {
		return resume
	}
	for _, li := range bk.lits {
		l := &sc.pf.lits[li]
		if !hasPrefixFold(s[i:], l.text) {
			continue
		}
		start, end := i, i+len(l.text)
		switch l.an {
		case anSK:
			sc.onSK(c, s, start)
		case anStripe:
			sc.onStripe(c, s, start)
		case anAWSKeyID:
			sc.onAWSKeyID(c, s, start)
		case anGitHub:
			sc.onGitHub(c, s, start, end)
		case anSlack:
			sc.onSlack(c, s, start)
		case anPEM:
			resume = max(resume, sc.onPEM(c, s, start)-1)
		case anPEMBase64:
			resume = max(resume, sc.onPEMBase64(c, s, start)-1)
		case anURL:
			sc.onURL(c, s, start)
		case anJWT:
			sc.onJWT(c, s, start)
		case anAzure:
			sc.onAzure(c, s, start, end)
		case anGCP:
			sc.onGCP(c, s, start, end)
		case anKeyword:
			sc.onKeyword(c, s, start, end)
		case anBearer:
			sc.onBearer(c, s, start, end)
		}
	}
	return resume
}

// classes returns the union of the byte classes of s.
func classes(s string) uint8 {
	var k uint8
	for i := 0; i < len(s); i++ {
		k |= class[s[i]]
	}
	return k
}

// spanWhile returns the end of the run of bytes from i that are in class k.
func spanWhile(s string, i int, k uint8) int {
	for i < len(s) && class[s[i]]&k != 0 {
		i++
	}
	return i
}

// spanAlnum returns the end of the run of letters and digits from i.
func spanAlnum(s string, i int) int { return spanWhile(s, i, cDigit|cUpper|cLower) }

// wordBefore reports whether the byte before i is a letter, digit or '_'.
func wordBefore(s string, i int) bool { return i > 0 && isWord(s[i-1]) }

// wordAt reports whether s[i] exists and is a letter, digit or '_'.
func wordAt(s string, i int) bool { return i < len(s) && isWord(s[i]) }

// onSK validates Anthropic ("sk-ant-") and OpenAI ("sk-") keys.
func (sc *Scanner) onSK(c *scanCtx, s string, a int) {
	if !strings.HasPrefix(s[a:], "sk-") || (a > 0 && isURLSafe(s[a-1])) {
		return
	}
	end := spanWhile(s, a+3, cURL)
	if strings.HasPrefix(s[a:], "sk-ant-") {
		if end-(a+7) >= 32 {
			sc.add(c, kAnthropic, a, end)
		}
		return
	}
	body := s[a+3 : end]
	for _, p := range [...]string{"proj-", "svcacct-", "admin-", "None-"} {
		if strings.HasPrefix(body, p) {
			body = body[len(p):]
			break
		}
	}
	if len(body) >= 32 && classes(body)&(cDigit|cUpper|cLower) == cDigit|cUpper|cLower {
		sc.add(c, kOpenAI, a, end)
	}
}

// onStripe validates sk_live_, sk_test_, rk_live_ and rk_test_ keys.
func (sc *Scanner) onStripe(c *scanCtx, s string, a int) {
	p := s[a : a+8]
	if p != "sk_live_" && p != "sk_test_" && p != "rk_live_" && p != "rk_test_" {
		return
	}
	if a > 0 && isURLSafe(s[a-1]) {
		return
	}
	end := spanAlnum(s, a+8)
	if end-(a+8) < 20 || wordAt(s, end) {
		return
	}
	if k := classes(s[a+8 : end]); k&cDigit != 0 && k&(cUpper|cLower) != 0 {
		sc.add(c, kStripe, a, end)
	}
}

// onAWSKeyID validates AKIA and ASIA access key ids.
func (sc *Scanner) onAWSKeyID(c *scanCtx, s string, a int) {
	if p := s[a : a+4]; p != "AKIA" && p != "ASIA" {
		return
	}
	if (a > 0 && isAlnum(s[a-1])) || a+20 > len(s) || (a+20 < len(s) && isAlnum(s[a+20])) {
		return
	}
	for i := a + 4; i < a+20; i++ {
		if class[s[i]]&(cUpper|cDigit) == 0 {
			return
		}
	}
	sc.add(c, kAWSKeyID, a, a+20)
}

// onGitHub validates classic (ghp_ and friends, 36 characters) and fine-grained
// (github_pat_, 22 + '_' + 59 characters) GitHub tokens.
func (sc *Scanner) onGitHub(c *scanCtx, s string, a, end int) {
	if wordBefore(s, a) {
		return
	}
	if end-a == 4 {
		if s[a] != 'g' || s[a+1] != 'h' || s[a+3] != '_' || !strings.ContainsRune("pousr", rune(s[a+2])) {
			return
		}
		e := spanAlnum(s, end)
		if e-end == 36 && !wordAt(s, e) {
			sc.add(c, kGitHub, a, e)
		}
		return
	}
	if s[a:end] != "github_pat_" {
		return
	}
	e1 := spanAlnum(s, end)
	if e1-end != 22 || e1 >= len(s) || s[e1] != '_' {
		return
	}
	e2 := spanAlnum(s, e1+1)
	if e2-(e1+1) == 59 && !wordAt(s, e2) {
		sc.add(c, kGitHub, a, e2)
	}
}

// onSlack validates xoxb-, xoxp-, xoxa-, xoxr- and xapp- tokens: a digit first, at least 20
// characters and another dash after the prefix.
func (sc *Scanner) onSlack(c *scanCtx, s string, a int) {
	p := s[a : a+5]
	if p != "xoxb-" && p != "xoxp-" && p != "xoxa-" && p != "xoxr-" && p != "xapp-" {
		return
	}
	if a > 0 && isURLSafe(s[a-1]) {
		return
	}
	end := a + 5
	for end < len(s) && (isAlnum(s[end]) || s[end] == '-') {
		end++
	}
	body := s[a+5 : end]
	if len(body) >= 20 && isDigit(body[0]) && strings.IndexByte(body, '-') > 0 && !wordAt(s, end) {
		sc.add(c, kSlack, a, end)
	}
}

// maxPEM bounds the length of a PEM block.
const maxPEM = 1 << 20

// onPEM validates a PEM private key block: a BEGIN line whose label ends in PRIVATE KEY (or
// PRIVATE KEY BLOCK), a body of at least 32 base64 characters (with optional header lines such
// as Proc-Type: 4,ENCRYPTED), then the matching END line. When the END line is missing (a key
// cut short) the block ends with its body. Escaped line breaks (\n), as in JSON text, count as
// whitespace. It returns the end of the block, or 0.
func (sc *Scanner) onPEM(c *scanCtx, s string, a int) int {
	h := a + len("-----BEGIN ")
	if !strings.HasPrefix(s[a:], "-----BEGIN ") {
		return 0
	}
	l := h
	for l < len(s) && l-h <= 48 && (class[s[l]]&(cUpper|cDigit) != 0 || s[l] == ' ') {
		l++
	}
	label := s[h:l]
	if !strings.HasPrefix(s[l:], "-----") ||
		!(strings.HasSuffix(label, "PRIVATE KEY") || strings.HasSuffix(label, "PRIVATE KEY BLOCK")) {
		return 0
	}
	body := l + 5
	n, last := 0, body // base64 characters seen, end of the last one
	for j := body; j < len(s) && j-body < maxPEM; {
		ch := s[j]
		switch {
		case ch == '-' && strings.HasPrefix(s[j:], "-----END "):
			m := j + len("-----END ")
			if n < 32 || !strings.HasPrefix(s[m:], label) || !strings.HasPrefix(s[m+len(label):], "-----") {
				return 0
			}
			end := m + len(label) + 5
			sc.add(c, kPrivateKey, a, end)
			return end
		case isB64(ch) || ch == '=':
			n++
			j++
			last = j
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == ':' || ch == ',' || ch == '-':
			j++
		case ch == '\\' && j+1 < len(s) && (s[j+1] == 'n' || s[j+1] == 'r' || s[j+1] == 't'):
			j += 2
		default:
			goto cut
		}
	}
cut:
	if n < 32 {
		return 0
	}
	sc.add(c, kPrivateKey, a, last)
	return last
}

// onPEMBase64 validates the base64 encoding of a PEM private key, as in Kubernetes secrets:
// a run of at least 64 base64 characters that decodes to a BEGIN line of a private key.
func (sc *Scanner) onPEMBase64(c *scanCtx, s string, a int) int {
	if !strings.HasPrefix(s[a:], "LS0tLS1CRUdJTi") || (a > 0 && (isB64(s[a-1]) || s[a-1] == '=')) {
		return 0
	}
	end := spanWhile(s, a, cB64)
	for end < len(s) && s[end] == '=' {
		end++
	}
	if end-a < 64 {
		return 0
	}
	var buf [48]byte
	n, ok := decodeBase64(buf[:], s[a:a+64], false)
	if !ok || !strings.Contains(string(buf[:n]), "PRIVATE KEY") {
		return 0
	}
	sc.add(c, kPrivateKey, a, end)
	return end
}

// dbSchemes are the URL schemes reported as database_url.
var dbSchemes = [...]string{"postgres", "postgresql", "mysql", "mongodb", "mongodb+srv", "redis", "rediss"}

// onURL validates a URL with a password in its userinfo; p is the index of "://".
func (sc *Scanner) onURL(c *scanCtx, s string, p int) {
	if p < c.t.urlReported {
		return // inside a URL already reported, such as a redirect parameter
	}
	k := p
	for k > 0 && p-k < 32 && (isAlnum(s[k-1]) || s[k-1] == '+' || s[k-1] == '.' || s[k-1] == '-') {
		k--
	}
	if p-k < 2 || !isLetter(s[k]) {
		return
	}
	scheme := s[k:p]
	at := -1
	j := p + 3
	for ; j < len(s) && j-p < 512; j++ {
		ch := s[j]
		if ch == '@' {
			at = j
			continue
		}
		if ch == '/' || ch == '?' || ch == '#' || ch <= ' ' || ch >= 0x7f || isQuote(ch) || ch == '<' || ch == '>' || ch == '\\' {
			break
		}
	}
	if at < 0 || at+1 >= len(s) || !(isAlnum(s[at+1]) || s[at+1] == '[') {
		return
	}
	userinfo := s[p+3 : at]
	colon := strings.IndexByte(userinfo, ':')
	if colon < 0 || placeholder(userinfo[colon+1:]) || (colon > 0 && placeholder(userinfo[:colon])) {
		return
	}
	e := at + 1
	if e >= c.t.urlFrom && e < c.t.urlEnd {
		e = c.t.urlEnd // inside the URL found last: it ends at the same place
	} else {
		for e < len(s) && e-at < 2048 {
			ch := s[e]
			if ch <= ' ' || ch >= 0x7f || isQuote(ch) || ch == '<' || ch == '>' || ch == '\\' || ch == ')' || ch == ']' || ch == '}' || ch == '|' {
				break
			}
			e++
		}
		c.t.urlFrom, c.t.urlEnd = at+1, e
	}
	for e > at+1 && strings.IndexByte(".,;:!?", s[e-1]) >= 0 {
		e--
	}
	kind := kURLCredentials
	for _, d := range dbSchemes {
		if strings.EqualFold(scheme, d) {
			kind = kDatabaseURL
			break
		}
	}
	sc.add(c, kind, k, e)
	c.t.urlReported = e
}

// placeholder reports whether a URL password is empty, masked, or a template placeholder
// such as %s, ${VAR}, {password} or <password>.
func placeholder(p string) bool {
	if p == "" {
		return true
	}
	switch p[0] {
	case '$', '{', '<', '[', '*':
		return true
	case '%':
		if len(p) < 3 || class[p[1]]&cHex == 0 || class[p[2]]&cHex == 0 {
			return true
		}
	}
	same := true
	for i := 1; i < len(p); i++ {
		if p[i] != p[0] {
			same = false
			break
		}
	}
	return same && (p[0] == 'x' || p[0] == 'X' || p[0] == '.')
}

// onJWT validates a JWT: header.payload.signature (or the five segments of a JWE) in base64url,
// whose header decodes to JSON naming "alg".
func (sc *Scanner) onJWT(c *scanCtx, s string, a int) {
	if !strings.HasPrefix(s[a:], "eyJ") || (a > 0 && (isURLSafe(s[a-1]) || s[a-1] == '.')) {
		return
	}
	e1 := spanWhile(s, a, cURL)
	if e1-a < 16 || e1 >= len(s) || s[e1] != '.' {
		return
	}
	e2 := spanWhile(s, e1+1, cURL)
	if e2-(e1+1) < 2 || e2 >= len(s) || s[e2] != '.' {
		return
	}
	end := spanWhile(s, e2+1, cURL)
	// A JWE has two more segments.
	if end < len(s) && s[end] == '.' {
		e4 := spanWhile(s, end+1, cURL)
		if e4 > end+1 && e4 < len(s) && s[e4] == '.' {
			if e5 := spanWhile(s, e4+1, cURL); e5 > e4+1 {
				end = e5
			}
		}
	}
	var buf [384]byte
	hdr := s[a:min(e1, a+512)]
	n, ok := decodeBase64(buf[:], hdr[:len(hdr)&^3], true)
	if !ok || !strings.Contains(string(buf[:n]), `"alg"`) {
		return
	}
	sc.add(c, kJWT, a, end)
}

// onAzure validates the AccountKey or SharedAccessKey of an Azure connection string, which
// must also name DefaultEndpointsProtocol= or Endpoint=.
func (sc *Scanner) onAzure(c *scanCtx, s string, a, v int) {
	if a > 0 && !(s[a-1] == ';' || isSpace(s[a-1]) || isQuote(s[a-1]) || s[a-1] == '=') {
		return
	}
	e := spanWhile(s, v, cB64)
	for e < len(s) && s[e] == '=' {
		e++
	}
	if e-v < 20 || (e < len(s) && s[e] != ';' && !isTokenEnd(s[e])) {
		return
	}
	if c.t.azHi == 0 || a < c.t.azLo || a >= c.t.azHi {
		lo := a
		for lo > 0 && a-lo < 2048 && !isSpace(s[lo-1]) && !isQuote(s[lo-1]) {
			lo--
		}
		hi := e
		for hi < len(s) && hi-e < 2048 && !isSpace(s[hi]) && !isQuote(s[hi]) {
			hi++
		}
		seg := s[lo:hi]
		c.t.azLo, c.t.azHi = lo, hi
		c.t.azEndpoint = indexFold(seg, "defaultendpointsprotocol=") >= 0 || indexFold(seg, "endpoint=") >= 0
	}
	if c.t.azEndpoint {
		sc.add(c, kAzure, v, e)
	}
}

// gcpWindow bounds how far from "type": "service_account" the private key is looked for.
const gcpWindow = 4 << 10

// onGCP validates a Google service account key in JSON text: "type": "service_account" with
// a "private_key" member nearby holding a private key. The finding is the private key value.
func (sc *Scanner) onGCP(c *scanCtx, s string, a, end int) {
	if a < 1 || s[a-1] != '"' || end >= len(s) || s[end] != '"' {
		return
	}
	k := a - 2
	for k >= 0 && isSpace(s[k]) {
		k--
	}
	if k < 0 || s[k] != ':' {
		return
	}
	k--
	for k >= 0 && isSpace(s[k]) {
		k--
	}
	if !strings.HasSuffix(s[:k+1], `"type"`) {
		return
	}
	// Windows of nearby anchors overlap: search only what no earlier anchor searched.
	lo, hi := max(0, a-gcpWindow, c.t.gcpSearched), min(len(s), end+gcpWindow)
	c.t.gcpSearched = max(c.t.gcpSearched, hi)
	for off := lo; off < hi; {
		i := strings.Index(s[off:hi], `"private_key"`)
		if i < 0 {
			return
		}
		j := off + i + len(`"private_key"`)
		off = j
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		if j >= len(s) || s[j] != ':' {
			continue
		}
		j++
		for j < len(s) && isSpace(s[j]) {
			j++
		}
		if j >= len(s) || s[j] != '"' {
			continue
		}
		v := j + 1
		e := v
		for e < len(s) && s[e] != '"' {
			if s[e] == '\\' {
				e++
			}
			e++
		}
		if e < len(s) && strings.Contains(s[v:e], "PRIVATE KEY") {
			sc.add(c, kGCP, v, e)
		}
		off = max(off, e)
	}
}

// onDigit validates a credit card number or a US SSN starting at s[i], the first digit of a
// number that is not part of a word. It returns the index of the last digit it consumed.
func (sc *Scanner) onDigit(c *scanCtx, s string, i int) int {
	run := spanWhile(s, i, cDigit)
	if i > 0 {
		p := s[i-1]
		if p == '_' || (i > 1 && isDigit(s[i-2]) && strings.IndexByte(".,-/:", p) >= 0) {
			return run - 1
		}
	}
	if run-i == 3 && sc.enabled[kSSN] {
		if end, ok := ssnAt(s, i); ok {
			sc.add(c, kSSN, i, end)
			return end - 1
		}
	}
	if sc.enabled[kCreditCard] {
		if end, ok := cardAt(s, i, run); ok {
			sc.add(c, kCreditCard, i, end)
			return end - 1
		}
	}
	return run - 1
}

// numberEnd reports whether a number may end before s[e]: not inside a word, not before a
// decimal point or another dash-joined number.
func numberEnd(s string, e int) bool {
	if e >= len(s) {
		return true
	}
	if isWord(s[e]) {
		return false
	}
	if (s[e] == '.' || s[e] == ',' || s[e] == '-') && e+1 < len(s) && isDigit(s[e+1]) {
		return false
	}
	return true
}

// ssnAt validates AAA-GG-SSSS at s[i]: area not 000, 666 or 9xx, group not 00, serial not 0000.
func ssnAt(s string, i int) (int, bool) {
	if i+11 > len(s) || s[i+3] != '-' || s[i+6] != '-' {
		return 0, false
	}
	for _, j := range [...]int{4, 5, 7, 8, 9, 10} {
		if !isDigit(s[i+j]) {
			return 0, false
		}
	}
	if !numberEnd(s, i+11) {
		return 0, false
	}
	area, group, serial := s[i:i+3], s[i+4:i+6], s[i+7:i+11]
	if area == "000" || area == "666" || area[0] == '9' || group == "00" || serial == "0000" {
		return 0, false
	}
	return i + 11, true
}

// cardAt validates a card number at s[i], where s[i:run] is its first digit run: either
// 13-16 digits in one run, or 13-19 digits in groups of digits joined by single spaces or dashes (the same
// throughout), the first group of 4 and the others of 3 to 6.
func cardAt(s string, i, run int) (int, bool) {
	var d [19]byte
	n := run - i
	if n >= 13 && n <= 16 {
		// One run: 13 to 16 digits (longer numbers are mostly big integers, not cards), and
		// not a negative number.
		if !numberEnd(s, run) || (i > 0 && s[i-1] == '-') {
			return 0, false
		}
		for k := range n {
			d[k] = s[i+k] - '0'
		}
		return run, validCard(d[:n])
	}
	if n != 4 || run+1 >= len(s) || (s[run] != ' ' && s[run] != '-') || !isDigit(s[run+1]) {
		return 0, false
	}
	sep := s[run]
	for k := range 4 {
		d[k] = s[i+k] - '0'
	}
	nd := 4
	var ends [5]int
	var counts [5]int
	ng := 0
	j := run
	for ng < len(ends) && j+1 < len(s) && s[j] == sep && isDigit(s[j+1]) {
		e := spanWhile(s, j+1, cDigit)
		g := e - (j + 1)
		if g < 3 || g > 6 || nd+g > 19 {
			break
		}
		for k := range g {
			d[nd+k] = s[j+1+k] - '0'
		}
		nd += g
		ends[ng], counts[ng] = e, nd
		ng++
		j = e
	}
	for g := ng - 1; g >= 0; g-- {
		if counts[g] >= 13 && !isWord(byteAt(s, ends[g])) && validCard(d[:counts[g]]) {
			if e := ends[g]; e < len(s) && s[e] == '.' && e+1 < len(s) && isDigit(s[e+1]) {
				continue
			}
			return ends[g], true
		}
	}
	return 0, false
}

func byteAt(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

// validCard checks the Luhn digit and that the issuer prefix is known for the length.
func validCard(d []byte) bool {
	sum := 0
	for k := range d {
		v := int(d[len(d)-1-k])
		if k%2 == 1 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	if sum%10 != 0 {
		return false
	}
	n := len(d)
	p := func(k int) int { // the first k digits as a number
		v := 0
		for _, x := range d[:k] {
			v = v*10 + int(x)
		}
		return v
	}
	switch {
	case d[0] == 4: // Visa
		return n == 13 || n == 16 || n == 19
	case p(2) >= 51 && p(2) <= 55, p(4) >= 2221 && p(4) <= 2720: // Mastercard
		return n == 16
	case p(2) == 34 || p(2) == 37: // American Express
		return n == 15
	case p(4) == 6011, p(2) == 65, p(3) >= 644 && p(3) <= 649: // Discover
		return n >= 16
	case p(2) == 62: // UnionPay
		return n >= 16
	case p(4) >= 3528 && p(4) <= 3589: // JCB
		return n >= 16
	case p(3) >= 300 && p(3) <= 305, p(2) == 36, p(2) == 38, p(2) == 39, p(4) == 3095: // Diners Club
		return n >= 14
	case p(4) >= 2200 && p(4) <= 2204: // Mir
		return n >= 16
	case p(4) == 5018, p(4) == 5020, p(4) == 5038, p(4) == 5893, p(4) == 6304, p(4) == 6759, p(4) >= 6761 && p(4) <= 6763: // Maestro
		return n >= 13
	}
	return false
}

// fileTLDs are file extensions that follow '@' in names such as icon@2x.png; they are not
// taken as the top-level domain of an email address.
var fileTLDs = [...]string{
	"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tiff", "avif", "css", "scss", "less",
	"js", "mjs", "cjs", "ts", "tsx", "jsx", "json", "yaml", "yml", "toml", "xml", "html", "htm",
	"txt", "go", "py", "rb", "rs", "java", "kt", "swift", "cpp", "hpp", "sh", "lock", "zip", "gz",
	"tar", "tgz", "pdf", "mp3", "mp4", "wasm", "map", "proto", "sum", "mod",
}

// onAt validates an email address around the '@' at s[i].
func (sc *Scanner) onAt(c *scanCtx, s string, i int) {
	l := i
	for l > 0 && i-l <= 64 && class[s[l-1]]&cLocal != 0 {
		l--
	}
	if l == i || i-l > 64 || s[l] == '.' || s[i-1] == '.' {
		return
	}
	if l > 0 {
		switch s[l-1] {
		case '/', '@', '\\':
			return
		case ':':
			// userinfo of a URL, unless mailto:
			if !(l >= 7 && hasPrefixFold(s[l-7:], "mailto:")) {
				return
			}
		}
	}
	j, labels, last, end := i+1, 0, 0, 0
	for {
		k := j
		for k < len(s) && k-j < 64 && (isAlnum(s[k]) || s[k] == '-') {
			k++
		}
		if k == j || k-j > 63 || s[j] == '-' || s[k-1] == '-' {
			return
		}
		labels++
		last, end = j, k
		if k+1 < len(s) && s[k] == '.' && isAlnum(s[k+1]) && k-i < 253 {
			j = k + 1
			continue
		}
		break
	}
	if labels < 2 || end-last < 2 || end-last > 24 {
		return
	}
	tld := s[last:end]
	if k := classes(tld); k&cDigit != 0 || strings.IndexByte(tld, '-') >= 0 || k&(cUpper|cLower) == cUpper|cLower {
		return // digits, dashes or mixed case (m.Path@m.Version) are not a top-level domain
	}
	for _, f := range fileTLDs {
		if strings.EqualFold(tld, f) {
			return
		}
	}
	if end < len(s) && (s[end] == '@' || (s[end] == ':' && end+1 < len(s) && !isSpace(s[end+1]))) {
		return // scp-like git@host:path, or not an address
	}
	sc.add(c, kEmail, l, end)
}

// b64Val maps the standard and URL-safe base64 alphabets to their values; -1 elsewhere.
var b64Val = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	const std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(std); i++ {
		t[std[i]] = int8(i)
	}
	t['-'], t['_'] = 62, 63
	return t
}()

// decodeBase64 decodes s, whose length is a multiple of 4 unless url is set (unpadded
// base64url), into dst and returns the bytes written. The alphabet must be the one asked for.
func decodeBase64(dst []byte, s string, url bool) (int, bool) {
	n := 0
	var acc uint32
	bits := 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch == '=' {
			break
		}
		if url && (ch == '+' || ch == '/') || !url && (ch == '-' || ch == '_') {
			return 0, false
		}
		v := b64Val[ch]
		if v < 0 {
			return 0, false
		}
		acc = acc<<6 | uint32(v)
		bits += 6
		if bits >= 8 {
			bits -= 8
			if n == len(dst) {
				return n, true
			}
			dst[n] = byte(acc >> bits)
			n++
		}
	}
	return n, true
}
