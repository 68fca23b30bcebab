package scan

import (
	"fmt"
	"slices"
)

// anchor says which validator runs where a prefilter literal starts.
type anchor uint8

const (
	anSK        anchor = iota // "sk-": Anthropic and OpenAI keys
	anStripe                  // "sk_live_", "sk_test_", "rk_live_", "rk_test_"
	anAWSKeyID                // "akia", "asia"
	anGitHub                  // "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"
	anSlack                   // "xoxb-", "xoxp-", "xoxa-", "xoxr-", "xapp-"
	anPEM                     // "-----begin "
	anPEMBase64               // "ls0tls1crudjti": base64 of "-----BEGIN"
	anURL                     // "://"
	anJWT                     // "eyj"
	anAzure                   // "accountkey=", "sharedaccesskey="
	anGCP                     // "service_account"
	anKeyword                 // secret, pass, pwd, token, key, auth, credential
	anBearer                  // "bearer"
)

// literal is one prefilter literal: lower-case ASCII, at least 3 bytes, matched ignoring case.
type literal struct {
	text string
	an   anchor
}

// prefilter finds candidate positions in one pass. Every pair of adjacent bytes indexes a
// table; most pairs map to bucket 0 and cost one load. A non-zero bucket says what may start
// there: a literal (then the third byte is checked against a bitmap before the literals of the
// bucket are compared), a number (a digit after a byte that is not a letter or digit), or an
// email address (an '@' after a byte of a local part).
//
// Unlike an Aho–Corasick automaton, the loop carries no state from byte to byte, so the CPU
// overlaps the lookups of consecutive positions; on clean text it runs several times faster.
type prefilter struct {
	pair    *[1 << 16]uint8 // pair[s[i]<<8|s[i+1]] is a bucket index, 0 for none
	buckets []bucket
	lits    []literal
	digits  bool // numbers are candidates (cards, SSNs)
}

type bucket struct {
	third [4]uint64 // bitmap of the third bytes of lits (both cases)
	lits  []uint8   // literals starting with this pair
	digit bool      // the second byte is a digit starting a number
	at    bool      // the second byte is an '@' after a local-part byte
}

func (b *bucket) hasThird(c byte) bool { return b.third[c>>6]&(1<<(c&63)) != 0 }

// cases returns c and, for a letter, its other case.
func cases(c byte) []byte {
	switch {
	case c >= 'a' && c <= 'z':
		return []byte{c, c - 'a' + 'A'}
	case c >= 'A' && c <= 'Z':
		return []byte{c, c - 'A' + 'a'}
	}
	return []byte{c}
}

// buildPrefilter compiles lits; digits and at add the number and email candidates.
func buildPrefilter(lits []literal, digits, at bool) (*prefilter, error) {
	sigs := make([]bucket, 1<<16)
	for li, l := range lits {
		if len(l.text) < 3 {
			return nil, fmt.Errorf("build prefilter: literal %q is shorter than 3 bytes", l.text)
		}
		for _, c0 := range cases(l.text[0]) {
			for _, c1 := range cases(l.text[1]) {
				b := &sigs[int(c0)<<8|int(c1)]
				b.lits = append(b.lits, uint8(li))
				for _, c2 := range cases(l.text[2]) {
					b.third[c2>>6] |= 1 << (c2 & 63)
				}
			}
		}
	}
	for p := 0; p < 256; p++ {
		if digits && !isAlnum(byte(p)) {
			for d := '0'; d <= '9'; d++ {
				sigs[p<<8|int(d)].digit = true
			}
		}
		if at && class[p]&cLocal != 0 {
			sigs[p<<8|'@'].at = true
		}
	}
	pf := &prefilter{pair: new([1 << 16]uint8), buckets: []bucket{{}}, lits: lits, digits: digits}
	for k := range sigs {
		b := &sigs[k]
		if len(b.lits) == 0 && !b.digit && !b.at {
			continue
		}
		id := slices.IndexFunc(pf.buckets[1:], func(x bucket) bool {
			return x.third == b.third && x.digit == b.digit && x.at == b.at && slices.Equal(x.lits, b.lits)
		}) + 1
		if id == 0 {
			if len(pf.buckets) == 256 {
				return nil, fmt.Errorf("build prefilter: more than 255 buckets")
			}
			pf.buckets = append(pf.buckets, *b)
			id = len(pf.buckets) - 1
		}
		pf.pair[k] = uint8(id)
	}
	return pf, nil
}
