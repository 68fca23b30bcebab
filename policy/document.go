package policy

import (
	"net/netip"
	"regexp"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"go.yaml.in/yaml/v3"
)

// APIVersion is the only apiVersion a policy document may declare.
const APIVersion = "agent-assembly/v1"

// DocumentKind is the only kind a policy document may declare.
const DocumentKind = "Policy"

// Document is one parsed and validated policy document. Documents are
// produced by Parse and LoadPath and must not be modified afterwards: the
// compiled matchers are built from them once, during Parse.
type Document struct {
	// Source is the name passed to Parse (usually the file path).
	Source   string
	Metadata Metadata
	Spec     Spec

	root     *yaml.Node // for Fingerprint
	nameAt   position   // metadata.name, for Compile errors
	plan     *docPlan   // compiled form, built by Parse
	explain  string     // "team acme/eng", for traces
	warnings Errors
}

// Name returns metadata.name, the document's unique name within a snapshot.
func (d *Document) Name() string { return d.Metadata.Name }

// Warnings returns the problems Parse found that do not reject the
// document, sorted by position, in the format of validation errors. Today
// these are requires_approval_if conditions that parse neither as clause
// expressions nor as CEL: such an entry always requires approval, and the
// warning's message starts with "unparseable condition, approval will
// always be required: ". The slice must not be modified.
func (d *Document) Warnings() []*ValidationError { return d.warnings }

type position struct{ line, col int }

// Metadata identifies a document.
type Metadata struct {
	Name        string
	Description string
	Labels      map[string]string
}

// ScopeLevel is the level of the cascade a document applies at.
type ScopeLevel uint8

// Scope levels, from broadest to narrowest. Documents are evaluated in this
// order; the order matters only for which rule is reported on ties.
const (
	ScopeGlobal ScopeLevel = iota + 1
	ScopeOrg
	ScopeTeam
	ScopeAgent
	ScopeTool
)

var scopeNames = [...]string{ScopeGlobal: "global", ScopeOrg: "org", ScopeTeam: "team", ScopeAgent: "agent", ScopeTool: "tool"}

// String returns the name used in documents.
func (l ScopeLevel) String() string {
	if int(l) < len(scopeNames) && l != 0 {
		return scopeNames[l]
	}
	return "unknown"
}

// Scope selects the agents (and, at ScopeTool, the tools) a document applies
// to. Org, Team and Agent are exact names; Tool is a glob.
type Scope struct {
	Level ScopeLevel
	Org   string
	Team  string
	Agent string
	Tool  string
}

// Spec is the body of a document. Nil section pointers and nil slices mean
// the section is absent.
type Spec struct {
	Scope Scope
	// EnforcementMode is action.ModeEnforce, ModeObserve or ModeDisabled.
	EnforcementMode action.Mode
	// Default is the decision when no rule matches: action.Deny unless the
	// document says `default: allow`.
	Default action.Decision
	// Unattributed, in a global document, is the decision for agents that
	// no org, team, agent or tool document applies to: action.Deny unless
	// a global document says `unattributed: allow` (and none says deny).
	// Zero when the document does not set it.
	Unattributed action.Decision

	Network *NetworkSpec
	// Tools lists the tools map in document order.
	Tools []ToolEntry
	// Capabilities lists the action kinds the scope may perform; nil means all.
	Capabilities []action.Kind
	Filesystem   *FilesystemSpec
	Process      *ProcessSpec
	LLM          *LLMSpec
	Schedule     *ScheduleSpec
	Budget       *BudgetSpec
	Data         *DataSpec
	Approval     *ApprovalSpec
	Rules        []Rule
}

// NetworkEnforcement tells the kernel layer what to do with a connection the
// policy denies.
type NetworkEnforcement string

// Network enforcement values.
const (
	// NetworkDeny refuses the connection (EPERM).
	NetworkDeny NetworkEnforcement = "deny"
	// NetworkRedirect rewrites the destination to the local Envoy listener.
	NetworkRedirect NetworkEnforcement = "redirect"
)

// NetworkSpec is the network section.
type NetworkSpec struct {
	Allowlist []NetworkEntry
	// Enforcement defaults to NetworkDeny.
	Enforcement NetworkEnforcement
}

// NetworkEntry is one allowlist entry: exactly one of Host and CIDR is set.
type NetworkEntry struct {
	// Host is a lower-case host name, IP address, "*.suffix" (any subdomain
	// of suffix, not suffix itself) or "*" (any host).
	Host string
	// CIDR is the allowed prefix when the entry is a CIDR entry.
	CIDR netip.Prefix
	// Ports restricts the entry to these ports; empty means any port.
	Ports []uint16
	// Inject, when set, asks the egress proxy to add a header to requests
	// to this destination.
	Inject *Inject
}

// Inject is a header the egress proxy adds to requests, typically a
// credential the agent never sees.
type Inject struct {
	Header string
	// Value may reference secrets as ${NAME}.
	Value string
	// SecretRefs lists the NAMEs referenced by Value, in order of appearance.
	SecretRefs []string
}

// ToolEntry is one entry of the tools map.
type ToolEntry struct {
	// Pattern is the map key: an exact tool name or a glob.
	Pattern string
	Allow   bool
	// LimitPerHour is the per-agent call limit for the tool; 0 means none.
	LimitPerHour int
	// RequiresApprovalIf is a condition, a clause expression or CEL; when
	// it holds, an allowed call becomes pending. When it parses as neither,
	// every call requires approval (see Document.Warnings).
	RequiresApprovalIf string
	// Secrets names the secrets whose ${NAME} placeholders this tool's
	// arguments may carry through SecretsService.DispatchTool; a placeholder
	// for any other secret is refused. Empty means none.
	Secrets []string
}

// FilesystemSpec is the filesystem section. Read and Write are allowlists
// for their operation class (nil means the document has no opinion on that
// class; an empty list allows nothing); Deny always wins within the document.
type FilesystemSpec struct {
	Read  []string
	Write []string
	Deny  []string
}

// ProcessSpec is the process section: globs over the executed command's
// base name (or its full path when the glob contains '/').
type ProcessSpec struct {
	Allow []string
	Deny  []string
}

// LLMSpec is the llm section: allowed providers (exact, case-insensitive)
// and model globs. A nil list allows any.
type LLMSpec struct {
	Providers []string
	Models    []string
}

// ScheduleSpec is the schedule section: actions outside every window are
// denied.
type ScheduleSpec struct {
	Timezone    *time.Location
	ActiveHours []Window
}

// Window is one active-hours window. Start and End are minutes after
// midnight in the schedule's time zone (End may be 1440); End < Start makes
// an overnight window that starts on the listed days.
type Window struct {
	Days  []time.Weekday
	Start int
	End   int
}

// BudgetPer says whose spending a budget counts.
type BudgetPer string

// Budget accounting units.
const (
	BudgetPerAgent BudgetPer = "agent"
	BudgetPerTeam  BudgetPer = "team"
	BudgetPerOrg   BudgetPer = "org"
)

// BudgetAction says what happens when a budget is exhausted.
type BudgetAction string

// Budget actions.
const (
	BudgetDeny    BudgetAction = "deny"
	BudgetSuspend BudgetAction = "suspend"
)

// BudgetSpec is the budget section. Enforcement belongs to the gateway.
type BudgetSpec struct {
	// DailyUSD and MonthlyUSD are limits in US dollars; 0 means no limit.
	DailyUSD   float64
	MonthlyUSD float64
	// Per defaults to BudgetPerAgent.
	Per BudgetPer
	// Timezone is where days and months start; defaults to UTC.
	Timezone *time.Location
	// ActionOnExceed defaults to BudgetDeny.
	ActionOnExceed BudgetAction
}

// CredentialAction says what the scanner does when it finds a credential.
type CredentialAction string

// Credential actions, from least to most restrictive.
const (
	CredentialAlertOnly      CredentialAction = "alert_only"
	CredentialRedactOnly     CredentialAction = "redact_only"
	CredentialAlertAndRedact CredentialAction = "alert_and_redact"
	CredentialBlock          CredentialAction = "block"
)

func (c CredentialAction) rank() int {
	switch c {
	case CredentialAlertOnly:
		return 1
	case CredentialRedactOnly:
		return 2
	case CredentialAlertAndRedact:
		return 3
	case CredentialBlock:
		return 4
	}
	return 0
}

// DataSpec is the data section, consumed by the scanner.
type DataSpec struct {
	SensitivePatterns []SensitivePattern
	// CredentialAction defaults to CredentialBlock.
	CredentialAction CredentialAction
}

// SensitivePattern is a named regular expression (RE2 syntax).
type SensitivePattern struct {
	Name  string
	Regex *regexp.Regexp
}

// ApprovalSpec is the approval section, consumed by the gateway.
type ApprovalSpec struct {
	// Timeout bounds how long a pending action waits; 0 means the gateway's
	// default.
	Timeout        time.Duration
	EscalationRole string
}

// Rule is one explicit rule.
type Rule struct {
	// ID is unique within the document; decisions report it as "doc/ID".
	ID string
	// Priority orders rules, higher first; equal priorities keep document
	// order.
	Priority int
	Match    Match
	// When is an optional CEL condition.
	When     string
	Decision action.Decision
	Reason   string
}

// Match selects the actions a rule applies to. Zero values match anything.
type Match struct {
	// Actions lists the kinds the rule applies to; nil means all.
	Actions []action.Kind
	// Name is a glob over action.Action.Name.
	Name string
	// Resource is a glob over action.Action.Resource.
	Resource string
}
