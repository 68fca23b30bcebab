package policy

import (
	"cmp"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/agent-assembly/agent-assembly/action"
)

// Snapshot is an immutable, indexed set of documents compiled for one policy
// version. It is safe for concurrent use; reload by compiling a new Snapshot
// and swapping a pointer to it.
type Snapshot struct {
	version string
	docs    []*Document // sorted by name

	global    []*docPlan
	orgs      map[string][]*docPlan
	teams     map[teamKey][]*docPlan
	agents    map[string][]*docPlan
	toolExact map[string][]*docPlan
	toolGlob  []*docPlan

	// unattributedAllow is true when a global document says
	// `unattributed: allow` and none says deny.
	unattributedAllow bool

	warnings Errors

	celErrors atomic.Uint64
}

type teamKey struct{ org, team string }

// Compile indexes documents into a Snapshot labelled with version. The
// documents must come from Parse or LoadPath; their metadata.name values
// must be unique. An empty list compiles to a snapshot that denies every
// action.
func Compile(docs []*Document, version string) (*Snapshot, error) {
	s := &Snapshot{
		version:   version,
		orgs:      map[string][]*docPlan{},
		teams:     map[teamKey][]*docPlan{},
		agents:    map[string][]*docPlan{},
		toolExact: map[string][]*docPlan{},
	}
	var errs Errors
	byName := map[string]*Document{}
	for i, d := range docs {
		if d == nil || d.plan == nil {
			return nil, fmt.Errorf("compile policy: document %d was not produced by Parse", i)
		}
		if first, dup := byName[d.Metadata.Name]; dup {
			errs = append(errs, &ValidationError{File: d.Source, Line: d.nameAt.line, Column: d.nameAt.col, Field: "metadata.name",
				Msg: fmt.Sprintf("duplicate policy name %q (also used by %s:%d)", d.Metadata.Name, first.Source, first.nameAt.line)})
			continue
		}
		byName[d.Metadata.Name] = d
		s.docs = append(s.docs, d)
	}
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	slices.SortFunc(s.docs, func(a, b *Document) int { return cmp.Compare(a.Metadata.Name, b.Metadata.Name) })
	for _, d := range s.docs {
		s.warnings = append(s.warnings, d.warnings...)
	}
	s.warnings.sort()
	unattributedDeny := false
	for _, d := range s.docs {
		p := d.plan
		sc := d.Spec.Scope
		switch sc.Level {
		case ScopeGlobal:
			s.global = append(s.global, p)
			switch d.Spec.Unattributed {
			case action.Allow:
				if !unattributedDeny {
					s.unattributedAllow = true
				}
			case action.Deny:
				unattributedDeny, s.unattributedAllow = true, false
			}
		case ScopeOrg:
			s.orgs[sc.Org] = append(s.orgs[sc.Org], p)
		case ScopeTeam:
			k := teamKey{sc.Org, sc.Team}
			s.teams[k] = append(s.teams[k], p)
		case ScopeAgent:
			s.agents[sc.Agent] = append(s.agents[sc.Agent], p)
		case ScopeTool:
			if p.toolScope.literal {
				s.toolExact[p.toolScope.lit] = append(s.toolExact[p.toolScope.lit], p)
			} else {
				s.toolGlob = append(s.toolGlob, p)
			}
		}
	}
	return s, nil
}

// Version returns the version string given to Compile.
func (s *Snapshot) Version() string { return s.version }

// Documents returns the snapshot's documents sorted by name. The slice and
// the documents must not be modified.
func (s *Snapshot) Documents() []*Document { return s.docs }

// Warnings returns the warnings of the snapshot's documents (see
// Document.Warnings), sorted by file and position. The slice must not be
// modified.
func (s *Snapshot) Warnings() []*ValidationError { return s.warnings }

// CELErrors returns how many CEL conditions failed at run time since the
// snapshot was compiled. Each failure is resolved fail-closed (see the
// package documentation).
func (s *Snapshot) CELErrors() uint64 { return s.celErrors.Load() }

// selectorsMatch checks the optional org/team/agent selectors of agent- and
// tool-level documents.
func selectorsMatch(sc *Scope, id *action.AgentID) bool {
	return (sc.Org == "" || sc.Org == id.Org) && (sc.Team == "" || sc.Team == id.Team) && (sc.Agent == "" || sc.Agent == id.Agent)
}

// ApplicableDocuments returns, in cascade order (global, org, team, agent),
// the documents that apply to every action of agent, including observe and
// disabled ones. Tool-level documents are not included: they apply per tool.
func (s *Snapshot) ApplicableDocuments(agent action.AgentID) []*Document {
	var out []*Document
	for _, p := range s.global {
		out = append(out, p.doc)
	}
	if agent.Org != "" {
		for _, p := range s.orgs[agent.Org] {
			out = append(out, p.doc)
		}
		if agent.Team != "" {
			for _, p := range s.teams[teamKey{agent.Org, agent.Team}] {
				out = append(out, p.doc)
			}
		}
	}
	if agent.Agent != "" {
		for _, p := range s.agents[agent.Agent] {
			if selectorsMatch(&p.doc.Spec.Scope, &agent) {
				out = append(out, p.doc)
			}
		}
	}
	return out
}

// Settings is the per-agent view of the sections the policy engine does not
// enforce itself. Documents in observe mode contribute (tagged with their
// mode where it matters); disabled documents do not.
type Settings struct {
	// Documents are the applicable enforce and observe documents in cascade
	// order.
	Documents []*Document
	// Budgets lists every budget that applies, most general first; the
	// gateway enforces each one against its own accounting unit (Per).
	Budgets []BudgetSetting
	// SensitivePatterns is the union of data.sensitive_patterns.
	SensitivePatterns []SensitivePattern
	// CredentialAction is the most restrictive data.credential_action of
	// the enforce documents, or "" when none sets a data section.
	CredentialAction CredentialAction
	// Approval has the shortest timeout set by any document and the
	// escalation role of the most specific document that names one.
	Approval ApprovalSpec
	// NetworkEnforcement is NetworkDeny if any enforce document with a
	// network section says deny, NetworkRedirect if they all say redirect,
	// and "" when none has a network section.
	NetworkEnforcement NetworkEnforcement
	// Injections lists every allowlist entry with an inject block.
	Injections []Injection
}

// BudgetSetting is one document's budget.
type BudgetSetting struct {
	Policy string
	Mode   action.Mode
	Budget BudgetSpec
}

// Injection is an allowlist entry that carries a header to inject.
type Injection struct {
	Policy string
	Entry  NetworkEntry
}

// Settings merges the non-decision sections of the documents that apply to
// agent. It allocates and is meant for the slow path (registration, cache
// fill, xDS snapshot generation), not for every check.
func (s *Snapshot) Settings(agent action.AgentID) Settings {
	var st Settings
	for _, d := range s.ApplicableDocuments(agent) {
		mode := d.Spec.EnforcementMode
		if mode == action.ModeDisabled {
			continue
		}
		st.Documents = append(st.Documents, d)
		sp := &d.Spec
		if sp.Budget != nil {
			st.Budgets = append(st.Budgets, BudgetSetting{Policy: d.Metadata.Name, Mode: mode, Budget: *sp.Budget})
		}
		if sp.Data != nil {
			for _, p := range sp.Data.SensitivePatterns {
				if !slices.ContainsFunc(st.SensitivePatterns, func(q SensitivePattern) bool {
					return q.Name == p.Name && q.Regex.String() == p.Regex.String()
				}) {
					st.SensitivePatterns = append(st.SensitivePatterns, p)
				}
			}
			if mode == action.ModeEnforce && sp.Data.CredentialAction.rank() > st.CredentialAction.rank() {
				st.CredentialAction = sp.Data.CredentialAction
			}
		}
		if a := sp.Approval; a != nil {
			if a.Timeout > 0 && (st.Approval.Timeout == 0 || a.Timeout < st.Approval.Timeout) {
				st.Approval.Timeout = a.Timeout
			}
			if a.EscalationRole != "" {
				st.Approval.EscalationRole = a.EscalationRole
			}
		}
		if n := sp.Network; n != nil {
			if mode == action.ModeEnforce {
				if n.Enforcement == NetworkDeny || st.NetworkEnforcement == "" {
					if st.NetworkEnforcement != NetworkDeny {
						st.NetworkEnforcement = n.Enforcement
					}
				}
			}
			for _, e := range n.Allowlist {
				if e.Inject != nil {
					st.Injections = append(st.Injections, Injection{Policy: d.Metadata.Name, Entry: e})
				}
			}
		}
	}
	return st
}

// ToolEntry returns the tools entry of d that governs the tool name (the
// exact entry, else the most specific matching glob) and whether there is one.
func (d *Document) ToolEntry(name string) (ToolEntry, bool) {
	if d.plan == nil || d.plan.tools == nil {
		return ToolEntry{}, false
	}
	i := d.plan.tools.lookup(name)
	if i < 0 || i >= len(d.Spec.Tools) {
		return ToolEntry{}, false
	}
	return d.Spec.Tools[i], true
}

// ToolSecrets returns the secrets whose ${NAME} placeholders the arguments
// of tool may carry (SecretsService.DispatchTool): the union of the
// `secrets` of the allowed tools entries that govern tool in the enforce
// documents. Whether the call itself is allowed is decided by Evaluate.
func (st Settings) ToolSecrets(tool string) []string {
	var out []string
	for _, d := range st.Documents {
		if d.Spec.EnforcementMode != action.ModeEnforce {
			continue
		}
		if te, ok := d.ToolEntry(tool); ok && te.Allow {
			for _, s := range te.Secrets {
				if !slices.Contains(out, s) {
					out = append(out, s)
				}
			}
		}
	}
	return out
}
