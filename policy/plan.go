package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// Priorities of section-derived rules. Explicit rules default to priority 0
// and, at equal priority, are evaluated before section rules.
const (
	// RestrictivePriority is the priority of the restrictive sections
	// (schedule, capabilities, filesystem.deny, process.deny). Only an
	// explicit rule with a priority of at least RestrictivePriority can
	// pre-empt them, so allow sections never override them.
	RestrictivePriority = 1000
	// SectionPriority is the priority of the allowlist sections (tools,
	// network.allowlist, filesystem.read/write, process.allow, llm).
	SectionPriority = 0
)

const numKinds = int(action.KindToolResult) + 1

// condition is a compiled CEL expression or clause expression.
type condition interface {
	eval(vars map[string]any) (bool, error)
}

// compiler collects what the parser compiled while validating one document.
type compiler struct {
	toolScope       *glob
	network         bool
	tools           []toolEntryPlan
	fsRead, fsWrite []fsEntry
	fsDeny          []fsEntry
	procAllow       []*glob
	procDeny        []*glob
	llmModels       []*glob
	rules           []rulePlan
}

type toolEntryPlan struct {
	glob *glob
	cond condition
	// unparseable, when set, says why requires_approval_if could not be
	// parsed; approval is then always required.
	unparseable string
}

type fsEntry struct{ globs []*glob }

func (e *fsEntry) match(p string) bool {
	for _, g := range e.globs {
		if g.match(p) {
			return true
		}
	}
	return false
}

type rulePlan struct {
	name, resource *glob
	when           condition
}

// outcome is what one document (or one of its rules) decides.
type outcome struct {
	decision action.Decision
	rank     uint8 // reporting precedence on ties, see rankRule
	ruleID   string
	reason   string
	limit    int
}

// Outcome ranks: when documents tie on the decision, the outcome with the
// higher rank is reported (then the more specific document), so that an
// explicit rule is named rather than another document's fallback.
const (
	rankDefault uint8 = iota // the document's default
	rankMiss                 // an allowlist section that did not list the action
	rankRule                 // an explicit rule or a section entry that matched
)

type stepKind uint8

const (
	stepRule stepKind = iota
	stepSchedule
	stepCapability
	stepFSDeny
	stepProcDeny
	stepTools
	stepNetwork
	stepFSAccess
	stepProcAllow
	stepLLM
)

type step struct {
	kind stepKind
	rule *compiledRule // stepRule
	out  outcome       // stepCapability, stepSchedule
}

// kindPlan is the ordered rule list of one document for one action kind.
// Each explicit rule is filed in one index so that evaluation only looks at
// candidates: byName for a literal name glob, byNameSuffix for a name glob
// ending in a literal that starts at a '.' (such as "*.prod.internal",
// keyed ".prod.internal"), byResourcePrefix for a resource glob starting with
// a literal directory (such as "/admin/**", keyed "/admin"), and general for
// the rest and for section rules. Every list holds indexes into steps in
// ascending (evaluation) order; evaluation merges the candidate lists.
type kindPlan struct {
	steps            []step
	byName           map[string][]int32
	byNameSuffix     map[string][]int32
	byResourcePrefix map[string][]int32
	general          []int32
}

// nameSuffixKey returns the byNameSuffix key of a name glob, or "".
func nameSuffixKey(g *glob) string {
	if g == nil || g.literal {
		return ""
	}
	if i := strings.IndexByte(g.suffix, '.'); i >= 0 {
		return g.suffix[i:]
	}
	return ""
}

// resourcePrefixKey returns the byResourcePrefix key of a resource glob, or
// "". Every resource the glob matches either equals the key or continues
// with '/' after it.
func resourcePrefixKey(g *glob) string {
	if g == nil {
		return ""
	}
	if g.literal {
		return g.lit
	}
	if g.skipEdge(g.start) >= 0 {
		// The prefix is followed by an optional "/**": "/admin/**" has the
		// prefix "/admin".
		return g.prefix
	}
	if i := strings.LastIndexByte(g.prefix, '/'); i > 0 {
		return g.prefix[:i]
	}
	return ""
}

func appendIndex(m *map[string][]int32, key string, idx int32) {
	if *m == nil {
		*m = map[string][]int32{}
	}
	(*m)[key] = append((*m)[key], idx)
}

type compiledRule struct {
	out       outcome
	name      *glob // nil: any name
	nameLower *glob // lower-cased name glob for network_call hosts
	resource  *glob
	when      condition
	whenSrc   string
}

// docPlan is the compiled, immutable form of one document.
type docPlan struct {
	doc       *Document
	name      string
	mode      action.Mode
	def       outcome
	toolScope *glob
	kinds     [numKinds]kindPlan

	schedule *ScheduleSpec
	net      *netIndex
	tools    *toolIndex
	fsDeny   []fsEntry
	fsDenyID []outcome
	fsRead   *fsAccess
	fsWrite  *fsAccess
	proc     *procIndex
	llm      *llmIndex
}

type fsAccess struct {
	entries []fsEntry
	allow   []outcome
	deny    outcome
}

type procIndex struct {
	allow    []*glob
	allowOut []outcome
	allowNo  outcome
	deny     []*glob
	denyOut  []outcome
}

type llmIndex struct {
	providers   []string
	models      []*glob
	allow       outcome
	badProvider outcome
	badModel    outcome
}

type toolEntry struct {
	allow       bool
	limit       int
	cond        condition
	condSrc     string
	unparseable string
	allowed     outcome
	pending     outcome
	denied      outcome
	pattern     string
}

type toolIndex struct {
	entries []toolEntry
	exact   map[string]int32
	globs   []int32 // most specific first
	pats    []*glob
}

func (t *toolIndex) lookup(name string) int {
	if i, ok := t.exact[name]; ok {
		return int(i)
	}
	for _, i := range t.globs {
		if t.pats[i].match(name) {
			return int(i)
		}
	}
	return -1
}

type planEntry struct {
	prio  int
	group int // 0 explicit, 1 section
	seq   int
	st    step
	kinds [numKinds]bool
	lit   string // literal name for indexing
	isLit bool
	rule  *compiledRule
}

func allKinds() [numKinds]bool {
	var k [numKinds]bool
	for _, kind := range action.Kinds() {
		k[kind] = true
	}
	return k
}

func onlyKind(kind action.Kind) [numKinds]bool {
	var k [numKinds]bool
	k[kind] = true
	return k
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// build compiles a validated document into its evaluation plan.
func (c *compiler) build(doc *Document) *docPlan {
	s := &doc.Spec
	name := doc.Metadata.Name
	id := func(suffix string) string { return name + "/" + suffix }
	d := &docPlan{doc: doc, name: name, mode: s.EnforcementMode, toolScope: c.toolScope}
	d.def = outcome{rank: rankDefault, decision: s.Default, ruleID: id("default"), reason: fmt.Sprintf("no rule of policy %q matched; its default is %s", name, s.Default)}

	var entries []planEntry
	add := func(prio, group, seq int, st step, kinds [numKinds]bool) {
		entries = append(entries, planEntry{prio: prio, group: group, seq: seq, st: st, kinds: kinds})
	}

	for i := range s.Rules {
		r := &s.Rules[i]
		rp := c.rules[i]
		cr := &compiledRule{name: rp.name, resource: rp.resource, when: rp.when, whenSrc: r.When}
		reason := r.Reason
		if reason == "" {
			reason = fmt.Sprintf("rule %q of policy %q: %s", r.ID, name, r.Decision)
		}
		cr.out = outcome{rank: rankRule, decision: r.Decision, ruleID: id(r.ID), reason: reason}
		kinds := allKinds()
		if r.Match.Actions != nil {
			kinds = [numKinds]bool{}
			for _, k := range r.Match.Actions {
				kinds[k] = true
			}
		}
		if cr.name != nil && strings.ToLower(cr.name.pattern) != cr.name.pattern {
			if g, err := compileGlob(strings.ToLower(cr.name.pattern)); err == nil {
				cr.nameLower = g
			}
		}
		e := planEntry{prio: r.Priority, seq: i, st: step{kind: stepRule, rule: cr}, kinds: kinds, rule: cr}
		if cr.name != nil && cr.name.literal {
			e.isLit, e.lit = true, cr.name.lit
		}
		entries = append(entries, e)
	}

	if sc := s.Schedule; sc != nil {
		d.schedule = sc
		add(RestrictivePriority, 1, 0, step{kind: stepSchedule, out: outcome{
			rank: rankRule, decision: action.Deny, ruleID: id("schedule"),
			reason: fmt.Sprintf("outside the active hours of policy %q (%s)", name, sc.Timezone),
		}}, allKinds())
	}
	if s.Capabilities != nil {
		for _, k := range action.Kinds() {
			if slices.Contains(s.Capabilities, k) {
				continue
			}
			add(RestrictivePriority, 1, 1, step{kind: stepCapability, out: outcome{
				rank: rankRule, decision: action.Deny, ruleID: id("capabilities"),
				reason: fmt.Sprintf("policy %q does not grant the %s capability", name, k),
			}}, onlyKind(k))
		}
	}
	if fs := s.Filesystem; fs != nil {
		if len(c.fsDeny) > 0 {
			d.fsDeny = c.fsDeny
			for i, p := range fs.Deny {
				d.fsDenyID = append(d.fsDenyID, outcome{rank: rankRule, decision: action.Deny, ruleID: id(fmt.Sprintf("filesystem.deny[%d]", i)),
					reason: fmt.Sprintf("path matches %q in filesystem.deny of policy %q", p, name)})
			}
			add(RestrictivePriority, 1, 2, step{kind: stepFSDeny}, onlyKind(action.KindFileOperation))
		}
		mk := func(list []string, entries []fsEntry, class string) *fsAccess {
			if list == nil {
				return nil
			}
			a := &fsAccess{entries: entries, deny: outcome{decision: action.Deny, rank: rankMiss, ruleID: id("filesystem." + class),
				reason: fmt.Sprintf("path is not in filesystem.%s of policy %q", class, name)}}
			for i, p := range list {
				a.allow = append(a.allow, outcome{rank: rankRule, decision: action.Allow, ruleID: id(fmt.Sprintf("filesystem.%s[%d]", class, i)),
					reason: fmt.Sprintf("path matches %q in filesystem.%s of policy %q", p, class, name)})
			}
			return a
		}
		d.fsRead = mk(fs.Read, c.fsRead, "read")
		d.fsWrite = mk(fs.Write, c.fsWrite, "write")
		if d.fsRead != nil || d.fsWrite != nil {
			add(SectionPriority, 1, 12, step{kind: stepFSAccess}, onlyKind(action.KindFileOperation))
		}
	}
	if ps := s.Process; ps != nil {
		pi := &procIndex{allow: c.procAllow, deny: c.procDeny}
		for i, p := range ps.Deny {
			pi.denyOut = append(pi.denyOut, outcome{rank: rankRule, decision: action.Deny, ruleID: id(fmt.Sprintf("process.deny[%d]", i)),
				reason: fmt.Sprintf("command matches %q in process.deny of policy %q", p, name)})
		}
		for i, p := range ps.Allow {
			pi.allowOut = append(pi.allowOut, outcome{rank: rankRule, decision: action.Allow, ruleID: id(fmt.Sprintf("process.allow[%d]", i)),
				reason: fmt.Sprintf("command matches %q in process.allow of policy %q", p, name)})
		}
		pi.allowNo = outcome{decision: action.Deny, rank: rankMiss, ruleID: id("process.allow"), reason: fmt.Sprintf("command is not in process.allow of policy %q", name)}
		d.proc = pi
		if len(pi.deny) > 0 {
			add(RestrictivePriority, 1, 3, step{kind: stepProcDeny}, onlyKind(action.KindProcessExec))
		}
		if ps.Allow != nil {
			add(SectionPriority, 1, 13, step{kind: stepProcAllow}, onlyKind(action.KindProcessExec))
		}
	}
	if len(s.Tools) > 0 {
		ti := &toolIndex{exact: map[string]int32{}}
		for i, te := range s.Tools {
			tp := c.tools[i]
			ruleID := id("tools[" + te.Pattern + "]")
			e := toolEntry{allow: te.Allow, limit: te.LimitPerHour, cond: tp.cond, condSrc: te.RequiresApprovalIf, unparseable: tp.unparseable, pattern: te.Pattern}
			e.allowed = outcome{rank: rankRule, decision: action.Allow, ruleID: ruleID, limit: te.LimitPerHour,
				reason: fmt.Sprintf("tool allowed by tools[%s] of policy %q", te.Pattern, name)}
			e.pending = outcome{rank: rankRule, decision: action.Pending, ruleID: ruleID, limit: te.LimitPerHour,
				reason: fmt.Sprintf("tools[%s] of policy %q requires approval: %s", te.Pattern, name, te.RequiresApprovalIf)}
			if tp.unparseable != "" {
				e.pending.reason = fmt.Sprintf("tools[%s] of policy %q requires approval: its requires_approval_if cannot be parsed, so approval is always required (fail-safe; see the policy warnings)", te.Pattern, name)
			}
			e.denied = outcome{rank: rankRule, decision: action.Deny, ruleID: ruleID,
				reason: fmt.Sprintf("tool denied by tools[%s] of policy %q", te.Pattern, name)}
			ti.entries = append(ti.entries, e)
			ti.pats = append(ti.pats, tp.glob)
			if tp.glob.literal {
				ti.exact[tp.glob.lit] = int32(i)
			} else {
				ti.globs = append(ti.globs, int32(i))
			}
		}
		slices.SortStableFunc(ti.globs, func(a, b int32) int { return ti.pats[b].score - ti.pats[a].score })
		d.tools = ti
		add(SectionPriority, 1, 10, step{kind: stepTools}, onlyKind(action.KindToolCall))
	}
	if ns := s.Network; ns != nil && ns.Allowlist != nil {
		d.net = buildNetIndex(name, ns.Allowlist)
		add(SectionPriority, 1, 11, step{kind: stepNetwork}, onlyKind(action.KindNetworkCall))
	}
	if ls := s.LLM; ls != nil && (ls.Providers != nil || ls.Models != nil) {
		d.llm = &llmIndex{providers: ls.Providers, models: c.llmModels,
			allow:       outcome{rank: rankRule, decision: action.Allow, ruleID: id("llm"), reason: fmt.Sprintf("provider and model allowed by llm of policy %q", name)},
			badProvider: outcome{decision: action.Deny, rank: rankMiss, ruleID: id("llm.providers"), reason: fmt.Sprintf("provider is not in llm.providers of policy %q (%s)", name, quoteList(ls.Providers))},
			badModel:    outcome{decision: action.Deny, rank: rankMiss, ruleID: id("llm.models"), reason: fmt.Sprintf("model is not in llm.models of policy %q (%s)", name, quoteList(ls.Models))},
		}
		add(SectionPriority, 1, 14, step{kind: stepLLM}, onlyKind(action.KindLLMCall))
	}

	slices.SortStableFunc(entries, func(a, b planEntry) int {
		if a.prio != b.prio {
			return b.prio - a.prio
		}
		if a.group != b.group {
			return a.group - b.group
		}
		return a.seq - b.seq
	})
	for _, k := range action.Kinds() {
		kp := &d.kinds[k]
		for _, e := range entries {
			if !e.kinds[k] {
				continue
			}
			idx := int32(len(kp.steps))
			kp.steps = append(kp.steps, e.st)
			nameGlob := (*glob)(nil)
			if e.rule != nil {
				nameGlob = e.rule.name
				if k == action.KindNetworkCall && e.rule.nameLower != nil {
					nameGlob = e.rule.nameLower
				}
			}
			switch {
			case e.isLit:
				key := e.lit
				if k == action.KindNetworkCall {
					key = normalizeActionHost(key)
				}
				appendIndex(&kp.byName, key, idx)
			case nameSuffixKey(nameGlob) != "":
				appendIndex(&kp.byNameSuffix, nameSuffixKey(nameGlob), idx)
			case e.rule != nil && resourcePrefixKey(e.rule.resource) != "":
				appendIndex(&kp.byResourcePrefix, resourcePrefixKey(e.rule.resource), idx)
			default:
				kp.general = append(kp.general, idx)
			}
		}
	}
	return d
}

// normalizeActionHost lower-cases a host and drops a trailing dot. It only
// allocates when the host has upper-case letters.
func normalizeActionHost(h string) string {
	if len(h) > 0 && h[len(h)-1] == '.' {
		h = h[:len(h)-1]
	}
	return strings.ToLower(h)
}

// netIndex is the compiled network allowlist: exact hosts in a map,
// "*.suffix" wildcards in a map keyed by suffix (looked up once per label of
// the action's host), and CIDRs in binary prefix tries.
type netIndex struct {
	entries []netEntry
	exact   map[string][]int32
	wild    map[string][]int32
	any     []int32
	v4, v6  *cidrNode
	deny    outcome
}

type netEntry struct {
	ports []uint16
	out   outcome
}

type cidrNode struct {
	child   [2]*cidrNode
	entries []int32
}

func buildNetIndex(name string, list []NetworkEntry) *netIndex {
	ni := &netIndex{exact: map[string][]int32{}, wild: map[string][]int32{},
		deny: outcome{decision: action.Deny, rank: rankMiss, ruleID: name + "/network.allowlist",
			reason: fmt.Sprintf("destination is not in network.allowlist of policy %q", name)}}
	for i, e := range list {
		idx := int32(i)
		what := e.Host
		if what == "" {
			what = e.CIDR.String()
		}
		if len(e.Ports) > 0 {
			ps := make([]string, len(e.Ports))
			for j, p := range e.Ports {
				ps[j] = fmt.Sprint(p)
			}
			what += " ports " + strings.Join(ps, ",")
		}
		ni.entries = append(ni.entries, netEntry{ports: e.Ports, out: outcome{rank: rankRule, decision: action.Allow,
			ruleID: fmt.Sprintf("%s/network.allowlist[%d]", name, i),
			reason: fmt.Sprintf("destination matches %s in network.allowlist of policy %q", what, name)}})
		switch {
		case e.Host == "*":
			ni.any = append(ni.any, idx)
		case strings.HasPrefix(e.Host, "*."):
			ni.wild[e.Host[2:]] = append(ni.wild[e.Host[2:]], idx)
		case e.Host != "":
			if a, err := netip.ParseAddr(e.Host); err == nil {
				ni.insert(netip.PrefixFrom(a, a.BitLen()), idx)
			} else {
				ni.exact[e.Host] = append(ni.exact[e.Host], idx)
			}
		case e.CIDR.IsValid():
			ni.insert(e.CIDR, idx)
		}
	}
	return ni
}

func (ni *netIndex) insert(p netip.Prefix, idx int32) {
	root := &ni.v4
	if !p.Addr().Is4() {
		root = &ni.v6
	}
	if *root == nil {
		*root = &cidrNode{}
	}
	(*root).insert(p, idx)
}

func addrBit(b []byte, i int) int { return int(b[i>>3]>>(7-uint(i)&7)) & 1 }

func (n *cidrNode) insert(p netip.Prefix, idx int32) {
	var b []byte
	if p.Addr().Is4() {
		a := p.Addr().As4()
		b = a[:]
	} else {
		a := p.Addr().As16()
		b = a[:]
	}
	for i := 0; i < p.Bits(); i++ {
		bit := addrBit(b, i)
		if n.child[bit] == nil {
			n.child[bit] = &cidrNode{}
		}
		n = n.child[bit]
	}
	n.entries = append(n.entries, idx)
}

// best returns the lowest allowlist index in list that allows port, or cur.
func (ni *netIndex) best(list []int32, port uint32, cur int) int {
	for _, i := range list {
		if cur >= 0 && int(i) >= cur {
			break
		}
		if portAllowed(ni.entries[i].ports, port) {
			return int(i)
		}
	}
	return cur
}

func portAllowed(ports []uint16, port uint32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if uint32(p) == port {
			return true
		}
	}
	return false
}

// lookup returns the index of the first allowlist entry that admits
// host:port, or -1. host must be normalised (normalizeActionHost).
func (ni *netIndex) lookup(host string, port uint32) int {
	best := ni.best(ni.exact[host], port, -1)
	best = ni.best(ni.any, port, best)
	if addr, ok := parseIPHost(host); ok {
		root, b := ni.v4, []byte(nil)
		var a4 [4]byte
		var a16 [16]byte
		if addr.Is4() {
			a4 = addr.As4()
			b = a4[:]
		} else {
			root = ni.v6
			a16 = addr.As16()
			b = a16[:]
		}
		n := root
		for i := 0; n != nil; i++ {
			best = ni.best(n.entries, port, best)
			if i >= len(b)*8 {
				break
			}
			n = n.child[addrBit(b, i)]
		}
		return best
	}
	for i := 0; i < len(host); i++ {
		if host[i] == '.' {
			if l, ok := ni.wild[host[i+1:]]; ok {
				best = ni.best(l, port, best)
			}
		}
	}
	return best
}

// parseIPHost parses host as an IP address without allocating for host
// names: only strings that look like addresses are handed to netip.
func parseIPHost(host string) (netip.Addr, bool) {
	if host == "" {
		return netip.Addr{}, false
	}
	if strings.IndexByte(host, ':') < 0 {
		for i := 0; i < len(host); i++ {
			if c := host[i]; (c < '0' || c > '9') && c != '.' {
				return netip.Addr{}, false
			}
		}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// active reports whether t falls in one of the schedule's windows.
func (s *ScheduleSpec) active(t time.Time) bool {
	lt := t.In(s.Timezone)
	h, m, _ := lt.Clock()
	minute := h*60 + m
	wd := lt.Weekday()
	prev := (wd + 6) % 7
	for i := range s.ActiveHours {
		w := &s.ActiveHours[i]
		if w.End > w.Start {
			if dayListed(w.Days, wd) && minute >= w.Start && minute < w.End {
				return true
			}
			continue
		}
		if dayListed(w.Days, wd) && minute >= w.Start {
			return true
		}
		if dayListed(w.Days, prev) && minute < w.End {
			return true
		}
	}
	return false
}

func dayListed(days []time.Weekday, d time.Weekday) bool {
	if len(days) == 0 {
		return true
	}
	for _, x := range days {
		if x == d {
			return true
		}
	}
	return false
}
