package policy

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// Input is what Evaluate decides on.
type Input struct {
	// Action is the normalised action; nil is denied.
	Action *action.Action
	// Labels are the agent's labels (from its registration), visible to
	// CEL as agent.labels. Nil means none.
	Labels map[string]string
}

// Result is the decision for one action.
type Result struct {
	// Decision is the enforced decision.
	Decision action.Decision
	// Mode is the enforcement mode of the document that decided:
	// ModeEnforce, or ModeObserve when only observe documents applied (the
	// action is then allowed).
	Mode action.Mode
	// Policy is the name of the deciding document ("" when none applied).
	Policy string
	// RuleID names the deciding rule as "policy/rule"; "default" when no
	// document applies, "observe" when only observe documents apply.
	RuleID string
	// Reason is a human-readable explanation.
	Reason string
	// PolicyVersion is the snapshot's version.
	PolicyVersion string

	// ShadowDecision is the decision that would be enforced if every
	// observe document were in enforce mode. It is DecisionUnspecified when
	// no observe document applied.
	ShadowDecision action.Decision
	ShadowPolicy   string
	ShadowRuleID   string
	ShadowReason   string

	// RequiresApproval is true when Decision is Pending: a human must
	// approve the action.
	RequiresApproval bool
	// ToolLimitPerHour is the smallest limit_per_hour of the tools entries
	// that allowed this tool call in enforce documents; 0 means no limit.
	ToolLimitPerHour int
}

// TraceStep is one line of an Explain trace.
type TraceStep struct {
	// Policy is the document the step belongs to ("" for cascade steps).
	Policy string
	// RuleID is the rule considered ("" for document-level steps).
	RuleID string
	// Matched reports whether the rule matched (or the document applied).
	Matched bool
	// Decision is the rule's decision when it matched.
	Decision action.Decision
	// Detail says why, including CEL results and errors.
	Detail string
}

// String renders the step on one line.
func (t TraceStep) String() string {
	var b strings.Builder
	if t.Policy != "" {
		b.WriteString(t.Policy)
	} else {
		b.WriteString("cascade")
	}
	if t.RuleID != "" {
		b.WriteString(" rule ")
		b.WriteString(t.RuleID)
	}
	if t.Matched && t.Decision != action.DecisionUnspecified {
		b.WriteString(" => ")
		b.WriteString(t.Decision.String())
	}
	b.WriteString(": ")
	b.WriteString(t.Detail)
	return b.String()
}

type tracer struct{ steps []TraceStep }

func (t *tracer) add(policy, rule string, matched bool, d action.Decision, format string, args ...any) {
	t.steps = append(t.steps, TraceStep{Policy: policy, RuleID: rule, Matched: matched, Decision: d, Detail: fmt.Sprintf(format, args...)})
}

// evalCtx is the per-evaluation state. It lives on the stack.
type evalCtx struct {
	snap     *Snapshot
	labels   map[string]string
	a        *action.Action
	kind     action.Kind
	name     string // Action.Name, host normalised for network calls
	resource string // Action.Resource, cleaned for file operations
	now      time.Time
	tr       *tracer
	vars     map[string]any
	fullScan bool // evaluate every rule in order, bypassing the indexes (tests)
}

const (
	reasonNoPolicy     = "no policy applies to this agent: unattributed agents are denied"
	reasonUnattributed = "no org, team, agent or tool policy applies to this agent: unattributed agents are denied (a global document may set unattributed: allow)"
	reasonObserveOnly  = "only observe-mode policies apply: allowed; the would-be decision is the shadow decision"
	reasonBadAction    = "invalid action: missing or unknown kind"
)

// Evaluate decides on one action. It is safe for concurrent use and does not
// allocate unless a CEL condition is evaluated.
func (s *Snapshot) Evaluate(in Input) Result {
	return s.evaluate(&in, nil, false)
}

// Explain evaluates like Evaluate and also returns every document and rule
// considered, in order, with why each did or did not match.
func (s *Snapshot) Explain(in Input) (Result, []TraceStep) {
	tr := &tracer{}
	r := s.evaluate(&in, tr, false)
	return r, tr.steps
}

type verdict struct {
	set    bool
	out    outcome
	policy string
}

func (v *verdict) merge(o *outcome, policy string) {
	// On equal decisions the higher rank is reported, then the later (more
	// specific) document.
	if !v.set || o.decision > v.out.decision || (o.decision == v.out.decision && o.rank >= v.out.rank) {
		v.set, v.out, v.policy = true, *o, policy
	}
}

type cascade struct {
	// attributed is set when a non-global document applied.
	attributed bool
	enforced   verdict
	shadow     verdict
	observed   bool
	limit      int
}

func (s *Snapshot) evaluate(in *Input, tr *tracer, fullScan bool) Result {
	res := Result{PolicyVersion: s.version}
	a := in.Action
	if a == nil || a.Kind == action.KindUnspecified || int(a.Kind) >= numKinds {
		res.Decision, res.Mode, res.RuleID, res.Reason = action.Deny, action.ModeEnforce, "invalid-action", reasonBadAction
		if tr != nil {
			tr.add("", "invalid-action", true, action.Deny, "%s", reasonBadAction)
		}
		return res
	}
	ctx := newEvalCtx(s, in, tr, fullScan)

	var cs cascade
	for _, d := range s.global {
		s.consider(&ctx, d, &cs)
	}
	id := &a.Agent
	if id.Org != "" {
		for _, d := range s.orgs[id.Org] {
			s.consider(&ctx, d, &cs)
		}
		if id.Team != "" {
			for _, d := range s.teams[teamKey{id.Org, id.Team}] {
				s.consider(&ctx, d, &cs)
			}
		}
	}
	if id.Agent != "" {
		for _, d := range s.agents[id.Agent] {
			if selectorsMatch(&d.doc.Spec.Scope, id) {
				s.consider(&ctx, d, &cs)
			} else if tr != nil {
				tr.add(d.name, "", false, 0, "does not apply: %s does not match agent %s", d.doc.explain, id)
			}
		}
	}
	if a.Kind == action.KindToolCall || a.Kind == action.KindToolResult {
		for _, d := range s.toolExact[ctx.name] {
			if selectorsMatch(&d.doc.Spec.Scope, id) {
				s.consider(&ctx, d, &cs)
			}
		}
		for _, d := range s.toolGlob {
			if d.toolScope.match(ctx.name) && selectorsMatch(&d.doc.Spec.Scope, id) {
				s.consider(&ctx, d, &cs)
			} else if tr != nil {
				tr.add(d.name, "", false, 0, "does not apply: %s does not match tool %q of agent %s", d.doc.explain, ctx.name, id)
			}
		}
	}

	switch {
	case !cs.attributed && !s.unattributedAllow:
		res.Decision, res.Mode, res.RuleID, res.Reason = action.Deny, action.ModeEnforce, "unattributed", reasonUnattributed
	case cs.enforced.set:
		v := &cs.enforced
		res.Decision, res.Mode, res.Policy, res.RuleID, res.Reason = v.out.decision, action.ModeEnforce, v.policy, v.out.ruleID, v.out.reason
		res.ToolLimitPerHour = cs.limit
	case cs.observed:
		res.Decision, res.Mode, res.Policy, res.RuleID, res.Reason = action.Allow, action.ModeObserve, cs.shadow.policy, "observe", reasonObserveOnly
	default:
		res.Decision, res.Mode, res.RuleID, res.Reason = action.Deny, action.ModeEnforce, "default", reasonNoPolicy
	}
	if cs.observed {
		v := &cs.shadow
		res.ShadowDecision, res.ShadowPolicy, res.ShadowRuleID, res.ShadowReason = v.out.decision, v.policy, v.out.ruleID, v.out.reason
	}
	res.RequiresApproval = res.Decision == action.Pending
	if tr != nil {
		tr.add("", res.RuleID, true, res.Decision, "enforced decision %s (mode %s) by %s", res.Decision, res.Mode, orNone(res.RuleID))
		if cs.observed {
			tr.add("", res.ShadowRuleID, true, res.ShadowDecision, "shadow decision %s by %s", res.ShadowDecision, res.ShadowRuleID)
		}
	}
	return res
}

// newEvalCtx prepares the evaluation of in.Action, which must be valid:
// the host of a network call is normalised, a file path cleaned.
func newEvalCtx(s *Snapshot, in *Input, tr *tracer, fullScan bool) evalCtx {
	a := in.Action
	ctx := evalCtx{snap: s, labels: in.Labels, a: a, kind: a.Kind, name: a.Name(), resource: a.Resource(), now: a.Time, tr: tr, fullScan: fullScan}
	switch a.Kind {
	case action.KindNetworkCall:
		ctx.name = normalizeActionHost(ctx.name)
	case action.KindFileOperation:
		if ctx.resource != "" {
			ctx.resource = path.Clean(ctx.resource)
		}
	}
	if ctx.now.IsZero() {
		ctx.now = time.Now()
	}
	return ctx
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func (s *Snapshot) consider(ctx *evalCtx, d *docPlan, cs *cascade) {
	if d.mode == action.ModeDisabled {
		if ctx.tr != nil {
			ctx.tr.add(d.name, "", false, 0, "applies (%s) but is disabled: skipped", d.doc.explain)
		}
		return
	}
	if ctx.tr != nil {
		ctx.tr.add(d.name, "", true, 0, "applies (%s, mode %s)", d.doc.explain, d.mode)
	}
	o := d.decide(ctx)
	if ctx.tr != nil {
		ctx.tr.add(d.name, "", true, o.decision, "policy decides %s by %s: %s", o.decision, o.ruleID, o.reason)
	}
	if d.doc.Spec.Scope.Level != ScopeGlobal {
		cs.attributed = true
	}
	switch d.mode {
	case action.ModeEnforce:
		cs.enforced.merge(&o, d.name)
		cs.shadow.merge(&o, d.name)
		if o.limit > 0 && (cs.limit == 0 || o.limit < cs.limit) {
			cs.limit = o.limit
		}
	case action.ModeObserve:
		cs.shadow.merge(&o, d.name)
		cs.observed = true
	}
}

// maxCandidateLists bounds the candidate lists merged on the stack; an
// action whose name or resource has more labels or path segments than that
// is evaluated by a full scan of the kind's rules instead.
const maxCandidateLists = 32

// decide runs one document: the first matching step in evaluation order
// decides, else the document's default.
func (d *docPlan) decide(ctx *evalCtx) outcome {
	kp := &d.kinds[ctx.kind]
	var lists [maxCandidateLists][]int32
	n := 0
	overflow := false
	if kp.byName != nil {
		lists[n] = kp.byName[ctx.name] // list 0: name already matched
	}
	n++
	lists[n] = kp.general
	n++
	if kp.byNameSuffix != nil {
		name := ctx.name
		for i := 0; i < len(name); i++ {
			if name[i] != '.' {
				continue
			}
			if l, ok := kp.byNameSuffix[name[i:]]; ok {
				if n == maxCandidateLists {
					overflow = true
					break
				}
				lists[n] = l
				n++
			}
		}
	}
	if kp.byResourcePrefix != nil && !overflow {
		res := ctx.resource
		for i := 1; i <= len(res); i++ {
			if i < len(res) && res[i] != '/' {
				continue
			}
			if l, ok := kp.byResourcePrefix[res[:i]]; ok {
				if n == maxCandidateLists {
					overflow = true
					break
				}
				lists[n] = l
				n++
			}
		}
	}
	if overflow || ctx.fullScan {
		for i := range kp.steps {
			if o, ok := d.evalStep(ctx, &kp.steps[i], false); ok {
				return o
			}
		}
	} else {
		for {
			best, bv := -1, int32(0)
			for li := 0; li < n; li++ {
				if l := lists[li]; len(l) > 0 && (best < 0 || l[0] < bv) {
					best, bv = li, l[0]
				}
			}
			if best < 0 {
				break
			}
			lists[best] = lists[best][1:]
			if o, ok := d.evalStep(ctx, &kp.steps[bv], best == 0); ok {
				return o
			}
		}
	}
	if ctx.tr != nil {
		ctx.tr.add(d.name, d.def.ruleID, true, d.def.decision, "no rule matched: default %s", d.def.decision)
	}
	return d.def
}

func (d *docPlan) evalStep(ctx *evalCtx, st *step, byName bool) (outcome, bool) {
	tr := ctx.tr
	switch st.kind {
	case stepRule:
		return d.evalRule(ctx, st.rule, byName)
	case stepSchedule:
		if d.schedule.active(ctx.now) {
			if tr != nil {
				tr.add(d.name, st.out.ruleID, false, 0, "%s is within the active hours", ctx.now.In(d.schedule.Timezone).Format("Mon 15:04 MST"))
			}
			return outcome{}, false
		}
		if tr != nil {
			tr.add(d.name, st.out.ruleID, true, st.out.decision, "%s is outside the active hours", ctx.now.In(d.schedule.Timezone).Format("Mon 15:04 MST"))
		}
		return st.out, true
	case stepCapability:
		if tr != nil {
			tr.add(d.name, st.out.ruleID, true, st.out.decision, "capability %s is not granted", ctx.kind)
		}
		return st.out, true
	case stepFSDeny:
		for i := range d.fsDeny {
			if d.fsDeny[i].match(ctx.resource) {
				o := d.fsDenyID[i]
				if tr != nil {
					tr.add(d.name, o.ruleID, true, o.decision, "path %q matches filesystem.deny %q", ctx.resource, d.doc.Spec.Filesystem.Deny[i])
				}
				return o, true
			}
		}
		if tr != nil {
			tr.add(d.name, d.name+"/filesystem.deny", false, 0, "path %q matches no filesystem.deny pattern", ctx.resource)
		}
	case stepFSAccess:
		acc, class := d.fsWrite, "write"
		if isReadOp(ctx.a.File.Operation) {
			acc, class = d.fsRead, "read"
		}
		if acc == nil {
			if tr != nil {
				tr.add(d.name, d.name+"/filesystem."+class, false, 0, "operation %q is a %s; filesystem.%s is not set", ctx.a.File.Operation, class, class)
			}
			return outcome{}, false
		}
		for i := range acc.entries {
			if acc.entries[i].match(ctx.resource) {
				if tr != nil {
					tr.add(d.name, acc.allow[i].ruleID, true, action.Allow, "path %q matches filesystem.%s[%d]", ctx.resource, class, i)
				}
				return acc.allow[i], true
			}
		}
		if tr != nil {
			tr.add(d.name, acc.deny.ruleID, true, action.Deny, "path %q matches no filesystem.%s pattern", ctx.resource, class)
		}
		return acc.deny, true
	case stepProcDeny:
		cmd := ctx.a.Exec.Command
		for i, g := range d.proc.deny {
			if matchCommand(g, cmd) {
				if tr != nil {
					tr.add(d.name, d.proc.denyOut[i].ruleID, true, action.Deny, "command %q matches process.deny %q", cmd, g.pattern)
				}
				return d.proc.denyOut[i], true
			}
		}
		if tr != nil {
			tr.add(d.name, d.name+"/process.deny", false, 0, "command %q matches no process.deny pattern", cmd)
		}
	case stepProcAllow:
		cmd := ctx.a.Exec.Command
		for i, g := range d.proc.allow {
			if matchCommand(g, cmd) {
				if tr != nil {
					tr.add(d.name, d.proc.allowOut[i].ruleID, true, action.Allow, "command %q matches process.allow %q", cmd, g.pattern)
				}
				return d.proc.allowOut[i], true
			}
		}
		if tr != nil {
			tr.add(d.name, d.proc.allowNo.ruleID, true, action.Deny, "command %q matches no process.allow pattern", cmd)
		}
		return d.proc.allowNo, true
	case stepTools:
		return d.evalTools(ctx)
	case stepNetwork:
		port := ctx.a.Network.Port
		if i := d.net.lookup(ctx.name, port); i >= 0 {
			o := d.net.entries[i].out
			if tr != nil {
				tr.add(d.name, o.ruleID, true, o.decision, "%s:%d: %s", ctx.name, port, o.reason)
			}
			return o, true
		}
		if tr != nil {
			tr.add(d.name, d.net.deny.ruleID, true, action.Deny, "%s:%d matches no network.allowlist entry", ctx.name, port)
		}
		return d.net.deny, true
	case stepLLM:
		l := d.llm
		p := ctx.a.LLM.Provider
		if l.providers != nil && !containsFold(l.providers, p) {
			if tr != nil {
				tr.add(d.name, l.badProvider.ruleID, true, action.Deny, "provider %q is not listed", p)
			}
			return l.badProvider, true
		}
		if l.models != nil {
			m := ctx.a.LLM.Model
			ok := false
			for _, g := range l.models {
				if g.match(m) {
					ok = true
					break
				}
			}
			if !ok {
				if tr != nil {
					tr.add(d.name, l.badModel.ruleID, true, action.Deny, "model %q matches no llm.models glob", m)
				}
				return l.badModel, true
			}
		}
		if tr != nil {
			tr.add(d.name, l.allow.ruleID, true, action.Allow, "provider %q and model %q are allowed", p, ctx.a.LLM.Model)
		}
		return l.allow, true
	}
	return outcome{}, false
}

func (d *docPlan) evalRule(ctx *evalCtx, r *compiledRule, byName bool) (outcome, bool) {
	tr := ctx.tr
	if !byName && r.name != nil {
		g := r.name
		if ctx.kind == action.KindNetworkCall && r.nameLower != nil {
			g = r.nameLower
		}
		if !g.match(ctx.name) {
			if tr != nil {
				tr.add(d.name, r.out.ruleID, false, 0, "name glob %q did not match %q", g.pattern, ctx.name)
			}
			return outcome{}, false
		}
	}
	if r.resource != nil && !r.resource.match(ctx.resource) {
		if tr != nil {
			tr.add(d.name, r.out.ruleID, false, 0, "resource glob %q did not match %q", r.resource.pattern, ctx.resource)
		}
		return outcome{}, false
	}
	if r.when != nil {
		ok, err := r.when.eval(ctx.condVars(r.when))
		if err != nil {
			ctx.snap.celErrors.Add(1)
			// Fail closed: a restrictive rule applies, a permissive one does not.
			ok = r.out.decision != action.Allow
			if tr != nil {
				tr.add(d.name, r.out.ruleID, ok, r.out.decision, "when %q failed: %v; fail-closed: treated as %v", r.whenSrc, err, ok)
			}
		} else if tr != nil && !ok {
			tr.add(d.name, r.out.ruleID, false, 0, "when %q is false", r.whenSrc)
		}
		if !ok {
			return outcome{}, false
		}
		if tr != nil && err == nil {
			tr.add(d.name, r.out.ruleID, true, r.out.decision, "matched; when %q is true", r.whenSrc)
		}
		return r.out, true
	}
	if tr != nil {
		tr.add(d.name, r.out.ruleID, true, r.out.decision, "matched")
	}
	return r.out, true
}

func (d *docPlan) evalTools(ctx *evalCtx) (outcome, bool) {
	tr := ctx.tr
	i := d.tools.lookup(ctx.name)
	if i < 0 {
		if tr != nil {
			tr.add(d.name, d.name+"/tools", false, 0, "tool %q matches no tools entry", ctx.name)
		}
		return outcome{}, false
	}
	e := &d.tools.entries[i]
	if !e.allow {
		if tr != nil {
			tr.add(d.name, e.denied.ruleID, true, action.Deny, "tool %q matches tools[%s] with allow: false", ctx.name, e.pattern)
		}
		return e.denied, true
	}
	if e.unparseable != "" {
		if tr != nil {
			tr.add(d.name, e.pending.ruleID, true, action.Pending, "tool %q matches tools[%s]; requires_approval_if %q cannot be parsed (%s): fail-safe, approval required", ctx.name, e.pattern, e.condSrc, e.unparseable)
		}
		return e.pending, true
	}
	if e.cond != nil {
		need, err := e.cond.eval(ctx.condVars(e.cond))
		if err != nil {
			ctx.snap.celErrors.Add(1)
			need = true // fail closed: ask a human
			if tr != nil {
				tr.add(d.name, e.pending.ruleID, true, action.Pending, "requires_approval_if %q failed: %v; fail-closed: approval required", e.condSrc, err)
			}
			return e.pending, true
		}
		if need {
			if tr != nil {
				tr.add(d.name, e.pending.ruleID, true, action.Pending, "tool %q matches tools[%s]; requires_approval_if %q is true", ctx.name, e.pattern, e.condSrc)
			}
			return e.pending, true
		}
		if tr != nil {
			tr.add(d.name, e.allowed.ruleID, true, action.Allow, "tool %q matches tools[%s]; requires_approval_if %q is false", ctx.name, e.pattern, e.condSrc)
		}
		return e.allowed, true
	}
	if tr != nil {
		tr.add(d.name, e.allowed.ruleID, true, action.Allow, "tool %q matches tools[%s]", ctx.name, e.pattern)
	}
	return e.allowed, true
}

// isReadOp classifies file operations; anything not known to be a read is a
// write (the more restrictive class).
func isReadOp(op string) bool {
	switch op {
	case "read", "list", "stat":
		return true
	}
	return false
}

// matchCommand matches a process glob against the command's base name, or
// against the full command when the glob contains '/'.
func matchCommand(g *glob, cmd string) bool {
	if strings.IndexByte(g.pattern, '/') >= 0 {
		return g.match(cmd)
	}
	if i := strings.LastIndexByte(cmd, '/'); i >= 0 {
		cmd = cmd[i+1:]
	}
	return g.match(cmd)
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// celVars builds the CEL activation once per evaluation, on first use.
func (c *evalCtx) celVars() map[string]any {
	if c.vars != nil {
		return c.vars
	}
	a := c.a
	labels := c.labels
	if labels == nil {
		labels = map[string]string{}
	}
	agent := map[string]any{"org": a.Agent.Org, "team": a.Agent.Team, "id": a.Agent.Agent, "labels": labels}
	act := map[string]any{"kind": a.Kind.String(), "name": a.Name(), "resource": a.Resource()}
	args := map[string]any{}
	switch a.Kind {
	case action.KindLLMCall:
		act["llm"] = map[string]any{"provider": a.LLM.Provider, "model": a.LLM.Model, "prompt_tokens": a.LLM.PromptTokens, "completion_tokens": a.LLM.CompletionTokens}
	case action.KindToolCall:
		act["tool"] = map[string]any{"name": a.Tool.Name, "source": a.Tool.Source, "target_url": a.Tool.TargetURL}
		if a.Tool.ArgsJSON != "" {
			var parsed map[string]any
			if json.Unmarshal([]byte(a.Tool.ArgsJSON), &parsed) == nil && parsed != nil {
				args = parsed
			}
		}
	case action.KindToolResult:
		act["tool"] = map[string]any{"name": a.Result.Name}
	case action.KindFileOperation:
		act["file"] = map[string]any{"operation": a.File.Operation, "path": c.resource}
	case action.KindNetworkCall:
		act["network"] = map[string]any{"host": c.name, "port": int64(a.Network.Port), "protocol": a.Network.Protocol, "method": a.Network.Method, "path": a.Network.Path}
	case action.KindProcessExec:
		execArgs := a.Exec.Args
		if execArgs == nil {
			execArgs = []string{}
		}
		act["exec"] = map[string]any{"command": a.Exec.Command, "args": execArgs}
	case action.KindAgentSpawn:
		act["spawn"] = map[string]any{"org": a.Spawn.Child.Org, "team": a.Spawn.Child.Team, "agent": a.Spawn.Child.Agent}
	}
	c.vars = make(map[string]any, 5)
	c.vars["agent"], c.vars["action"], c.vars["args"], c.vars["now"] = agent, act, args, c.now
	return c.vars
}

// condVars returns the activation for cond: celVars, plus the clause
// variable for translated clause expressions.
func (c *evalCtx) condVars(cond condition) map[string]any {
	vars := c.celVars()
	if cc, ok := cond.(celCondition); ok && cc.clauses {
		if _, ok := vars[clauseVar]; !ok {
			vars[clauseVar] = clauseOperands(c)
		}
	}
	return vars
}
