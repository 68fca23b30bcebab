package scan

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Defaults for the zero values of Options.
const (
	// DefaultEntropyThreshold is the Shannon entropy, in bits per character, that a generic
	// token must reach (hex-only tokens: one bit less).
	DefaultEntropyThreshold = 4.0
	// DefaultMinTokenLength is the shortest generic token reported.
	DefaultMinTokenLength = 32
	// DefaultMaxInput is the most bytes one call examines.
	DefaultMaxInput = 8 << 20
)

// maxCustom bounds the custom patterns of one Scanner.
const maxCustom = 255 - int(numBuiltin)

// ErrInputTooLarge is returned by ScanJSON and RedactJSON for input longer than
// Options.MaxInput.
var ErrInputTooLarge = errors.New("scan: input too large")

// Pattern is a custom pattern: matches of Regex (Go regexp syntax) are reported with Kind(Name).
type Pattern struct {
	// Name is the kind reported; letters, digits, '_', '-' and '.'; unique and not a builtin kind.
	Name string
	// Regex is the Go regular expression to match.
	Regex string
}

// Options configure a Scanner. The zero value scans for every builtin kind with the defaults.
type Options struct {
	// Kinds are the builtin kinds to report; empty means all of them.
	Kinds []Kind
	// Custom are extra patterns to report.
	Custom []Pattern
	// EntropyThreshold is the Shannon entropy (bits per character, 0 < t <= 8) a generic token
	// must reach to be a high_entropy_token; tokens made only of hex digits need one bit less.
	// Zero means DefaultEntropyThreshold.
	EntropyThreshold float64
	// MinTokenLength is the shortest generic token reported (at least 8). Zero means
	// DefaultMinTokenLength.
	MinTokenLength int
	// MaxInput bounds the bytes examined by one call: ScanString and Redact look at the first
	// MaxInput bytes only, ScanJSON and RedactJSON reject longer input with ErrInputTooLarge.
	// Zero means DefaultMaxInput.
	MaxInput int
}

// Scanner finds credentials and personal data. It is safe for concurrent use.
type Scanner struct {
	pf       *prefilter
	enabled  [numBuiltin]bool
	kinds    []Kind   // by kindID
	prio     []uint8  // by kindID
	redacted []string // by kindID
	custom   []customPattern
	entropy  float64
	minTok   int
	maxInput int
}

type customPattern struct {
	id      kindID
	re      *regexp.Regexp
	prefix  string // literal every match starts with; "" when none
	literal bool   // the regexp matches exactly prefix
}

// New returns a Scanner configured by opts, or an error naming the bad option.
func New(opts Options) (*Scanner, error) {
	sc := &Scanner{
		entropy:  opts.EntropyThreshold,
		minTok:   opts.MinTokenLength,
		maxInput: opts.MaxInput,
	}
	if sc.entropy == 0 {
		sc.entropy = DefaultEntropyThreshold
	}
	if !(sc.entropy > 0 && sc.entropy <= 8) {
		return nil, fmt.Errorf("scan: entropy threshold %v: want 0 < t <= 8 bits per character", opts.EntropyThreshold)
	}
	if sc.minTok == 0 {
		sc.minTok = DefaultMinTokenLength
	}
	if sc.minTok < 8 || sc.minTok > 4096 {
		return nil, fmt.Errorf("scan: min token length %d: want 8 to 4096", opts.MinTokenLength)
	}
	if sc.maxInput == 0 {
		sc.maxInput = DefaultMaxInput
	}
	if sc.maxInput < 0 {
		return nil, fmt.Errorf("scan: max input %d: want a positive byte count, or 0 for the default", opts.MaxInput)
	}
	if len(opts.Kinds) == 0 {
		for i := range sc.enabled {
			sc.enabled[i] = true
		}
	}
	for _, k := range opts.Kinds {
		id, ok := builtinID(k)
		if !ok {
			return nil, fmt.Errorf("scan: unknown kind %q: want one of %v", k, BuiltinKinds())
		}
		sc.enabled[id] = true
	}
	for _, b := range builtinKinds {
		sc.kinds = append(sc.kinds, b.kind)
		sc.prio = append(sc.prio, b.priority)
		sc.redacted = append(sc.redacted, redactedText(b.kind))
	}
	if len(opts.Custom) > maxCustom {
		return nil, fmt.Errorf("scan: %d custom patterns: at most %d", len(opts.Custom), maxCustom)
	}
	for _, p := range opts.Custom {
		if err := checkPatternName(p.Name); err != nil {
			return nil, err
		}
		if slices.Contains(sc.kinds, Kind(p.Name)) {
			return nil, fmt.Errorf("scan: custom pattern %q: name already used by another kind", p.Name)
		}
		re, err := regexp.Compile(p.Regex)
		if err != nil {
			return nil, fmt.Errorf("scan: custom pattern %q: %w", p.Name, err)
		}
		prefix, complete := re.LiteralPrefix()
		sc.custom = append(sc.custom, customPattern{
			id:      kindID(len(sc.kinds)),
			re:      re,
			prefix:  prefix,
			literal: complete && prefix != "",
		})
		sc.kinds = append(sc.kinds, Kind(p.Name))
		sc.prio = append(sc.prio, customPriority)
		sc.redacted = append(sc.redacted, redactedText(Kind(p.Name)))
	}
	en := &sc.enabled
	pf, err := buildPrefilter(literalsFor(en), en[kCreditCard] || en[kSSN], en[kEmail])
	if err != nil {
		return nil, fmt.Errorf("scan: %w", err)
	}
	sc.pf = pf
	return sc, nil
}

func checkPatternName(name string) error {
	if name == "" {
		return errors.New("scan: custom pattern with an empty name: give every pattern a name")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' {
			return fmt.Errorf("scan: custom pattern %q: name may hold only letters, digits, '_', '-' and '.'", name)
		}
	}
	return nil
}

// keywords are the prefilter literals that may name a secret-holding key; the validator then
// classifies the whole identifier around them (see classifyIdent).
var keywords = []string{"secret", "pass", "pwd", "token", "key", "auth", "credential"}

// literalsFor returns the prefilter literals the enabled kinds need.
func literalsFor(en *[numBuiltin]bool) []literal {
	var lits []literal
	add := func(an anchor, texts ...string) {
		for _, t := range texts {
			lits = append(lits, literal{t, an})
		}
	}
	if en[kAnthropic] || en[kOpenAI] {
		add(anSK, "sk-")
	}
	if en[kStripe] {
		add(anStripe, "sk_live_", "sk_test_", "rk_live_", "rk_test_")
	}
	if en[kAWSKeyID] {
		add(anAWSKeyID, "akia", "asia")
	}
	if en[kGitHub] {
		add(anGitHub, "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")
	}
	if en[kSlack] {
		add(anSlack, "xoxb-", "xoxp-", "xoxa-", "xoxr-", "xapp-")
	}
	if en[kPrivateKey] {
		add(anPEM, "-----begin ")
		add(anPEMBase64, "ls0tls1crudjti")
	}
	if en[kDatabaseURL] || en[kURLCredentials] {
		add(anURL, "://")
	}
	if en[kJWT] {
		add(anJWT, "eyj")
	}
	if en[kAzure] {
		add(anAzure, "accountkey=", "sharedaccesskey=")
	}
	if en[kGCP] {
		add(anGCP, "service_account")
	}
	if en[kEntropy] || en[kAWSSecret] || en[kBasicAuth] {
		add(anKeyword, keywords...)
		add(anBearer, "bearer")
	}
	return lits
}

// cand is a candidate finding before overlaps are resolved.
type cand struct {
	start, end int
	kind       kindID
}

// scanCtx is the mutable state of one scan.
type scanCtx struct {
	cands []cand
	// A one-entry cache of JSON key classes; lastKey views the JSON document itself.
	lastKey    string
	lastKeyCls identClass
	t          textState
}

// textState is the state of the scan of one text (a string, or one JSON value).
type textState struct {
	identEnd int // end of the last identifier a keyword validator looked at
	// A one-entry cache of identifier classes. lastIdent may view a decode buffer that the
	// next JSON value reuses, which is why it lives here.
	lastIdent    string
	lastIdentCls identClass
	// Context searches already done, so that repeated anchors cost linear time.
	gcpSearched     int  // end of the text searched for "private_key" members
	azLo, azHi      int  // last connection string segment looked at
	azEndpoint      bool // whether it names an endpoint
	urlFrom, urlEnd int  // last URL end scan: from where, and the end it found
	urlReported     int  // end of the last URL reported
}

// ScanString returns the findings in s (its first MaxInput bytes), sorted by Start and not
// overlapping. It returns nil, without allocating, when there are none.
func (sc *Scanner) ScanString(s string) []Finding {
	if len(s) > sc.maxInput {
		s = s[:sc.maxInput]
	}
	var c scanCtx
	sc.scanAll(&c, s)
	if len(c.cands) == 0 {
		return nil
	}
	c.cands = sc.resolve(c.cands)
	out := make([]Finding, len(c.cands))
	for i, cd := range c.cands {
		out[i] = sc.finding(cd, "")
	}
	return out
}

func (sc *Scanner) finding(cd cand, path string) Finding {
	return Finding{Kind: sc.kinds[cd.kind], Start: cd.start, End: cd.end, Path: path, Redacted: sc.redacted[cd.kind]}
}

// scanAll appends the candidates of every builtin and custom kind in s.
func (sc *Scanner) scanAll(c *scanCtx, s string) {
	c.t = textState{}
	sc.scanText(c, s)
	sc.scanCustom(c, s)
}

// scanText runs the prefilter over s and the validators where it finds candidates.
func (sc *Scanner) scanText(c *scanCtx, s string) {
	pf := sc.pf
	pair := pf.pair
	start := 0
	if len(s) > 0 && pf.digits && isDigit(s[0]) {
		start = sc.onDigit(c, s, 0)
	}
	n := len(s)
	for i := start; i+1 < n; i++ {
		// Skip pairs in bucket 0 two at a time: the lookups are independent.
		for i+2 < n && pair[uint16(s[i])<<8|uint16(s[i+1])]|pair[uint16(s[i+1])<<8|uint16(s[i+2])] == 0 {
			i += 2
		}
		if i+1 >= n {
			break
		}
		b := pair[uint16(s[i])<<8|uint16(s[i+1])]
		if b == 0 {
			continue
		}
		bk := &pf.buckets[b]
		if !bk.digit && !bk.at && (i+2 >= n || !bk.hasThird(s[i+2])) {
			continue
		}
		if r := sc.onCandidate(c, s, i, bk); r > i {
			i = r - 1 // look again at the pair starting at the last consumed byte
		}
	}
}

// scanCustom appends the matches of the custom patterns in s.
func (sc *Scanner) scanCustom(c *scanCtx, s string) {
	for i := range sc.custom {
		p := &sc.custom[i]
		if p.literal {
			for off := 0; ; {
				j := strings.Index(s[off:], p.prefix)
				if j < 0 {
					break
				}
				c.cands = append(c.cands, cand{off + j, off + j + len(p.prefix), p.id})
				off += j + len(p.prefix)
			}
			continue
		}
		if p.prefix != "" && !strings.Contains(s, p.prefix) {
			continue
		}
		for _, m := range p.re.FindAllStringIndex(s, -1) {
			if m[1] > m[0] {
				c.cands = append(c.cands, cand{m[0], m[1], p.id})
			}
		}
	}
}

// resolve sorts cs by start and drops overlapping candidates, keeping within each group of
// overlapping candidates the highest priority, then the longest, then the first.
func (sc *Scanner) resolve(cs []cand) []cand {
	slices.SortFunc(cs, func(a, b cand) int {
		if a.start != b.start {
			return a.start - b.start
		}
		return b.end - a.end
	})
	w := 0
	for i := 0; i < len(cs); {
		j, maxEnd := i+1, cs[i].end
		for j < len(cs) && cs[j].start < maxEnd {
			maxEnd = max(maxEnd, cs[j].end)
			j++
		}
		if j == i+1 {
			cs[w] = cs[i]
			w++
			i = j
			continue
		}
		group := cs[i:j]
		slices.SortFunc(group, func(a, b cand) int {
			if pa, pb := sc.prio[a.kind], sc.prio[b.kind]; pa != pb {
				return int(pb) - int(pa)
			}
			if la, lb := a.end-a.start, b.end-b.start; la != lb {
				return lb - la
			}
			return a.start - b.start
		})
		kept := w
		for _, g := range group {
			ok := true
			for _, k := range cs[kept:w] {
				if g.start < k.end && k.start < g.end {
					ok = false
					break
				}
			}
			if ok {
				cs[w] = g
				w++
			}
		}
		slices.SortFunc(cs[kept:w], func(a, b cand) int { return a.start - b.start })
		i = j
	}
	return cs[:w]
}
