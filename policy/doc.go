// Package policy parses, validates and compiles policy documents into an
// immutable, indexed Snapshot that decides on agent actions.
//
// The document format is specified in docs/policy.md; this comment summarises
// the semantics the code implements.
//
// # Loading
//
// Parse validates one YAML document (one per file; unknown keys, wrong types,
// bad globs, CIDRs, regular expressions, CEL, time zones and enum values are
// errors) and returns Errors, each "file:line:column: field.path: message".
// Problems that do not reject a document are Document.Warnings (and
// Snapshot.Warnings), in the same format. LoadPath loads a file or the .yaml/.yml files of a directory. Compile indexes
// documents into a Snapshot for one version; Fingerprint derives a version from
// the documents' canonical content.
//
// # One document
//
// A document's sections compile into rules, evaluated in order of priority
// (higher first); at equal priority explicit rules come before section rules,
// and rules keep document order. The first rule that matches decides; if none
// does, the document's default decides (deny unless `default: allow`).
//
//   - RestrictivePriority (1000): schedule (deny outside active hours),
//     capabilities (deny kinds not granted), filesystem.deny, process.deny.
//   - SectionPriority (0): tools (allow, deny, or pending when
//     requires_approval_if holds), network.allowlist, filesystem.read/write,
//     process.allow, llm. These are allowlists: an action of their kind that
//     they do not list is denied (rule ids without an index, such as
//     "doc/network.allowlist"), except tools, where an unlisted tool falls
//     through (use a "*" entry to close the list).
//
// Explicit rules default to priority 0, so they override allowlist sections
// but need a priority of at least 1000 to override a restrictive one. Rule
// ids are "doc/id" for explicit rules and, for section rules, for example
// "doc/tools[shell_*]", "doc/network.allowlist[0]", "doc/filesystem.deny[1]",
// "doc/capabilities", "doc/schedule" and "doc/default".
//
// # Cascade
//
// The documents that apply to an action are the global ones, those of the
// agent's org, of its org and team, those naming the agent (optionally pinned
// to an org and team), and, for tool calls and results, the tool documents
// whose tool glob matches. Each decides; the most restrictive decision wins
// (deny > pending > redact > allow). On equal decisions the reported rule is
// an explicit rule or matched section entry before an allowlist miss before a
// default, then the more specific document. Disabled documents are skipped.
// Observe documents do not affect the enforced decision: Result.ShadowDecision
// is what would be enforced if they were enforced. If only observe documents
// apply the action is allowed in observe mode; if nothing applies it is denied
// with rule "default": unattributed agents are never silently allowed.
//
// # CEL
//
// `when` and `requires_approval_if` are CEL expressions over agent (org, team,
// id, labels), action (kind, name, resource, and llm, tool, file, network,
// exec or spawn for its kind), args (the tool call's JSON arguments, {} if
// absent or not an object) and now (timestamp), type-checked to bool when
// the document is parsed. A condition that fails at run time is resolved
// fail-closed and counted (Snapshot.CELErrors): a deny, pending or redact
// rule matches, an allow rule does not, and requires_approval_if requires
// approval.
//
// # Clause grammar
//
// requires_approval_if may also use the clause grammar of the original
// system: clauses "operand op value" joined by AND and OR (AND binds
// tighter; parentheses group; keywords are case-insensitive), with the
// operators ==, !=, >, >=, <, <=, contains, starts_with, in and not_in, and
// the operands tool, path, url, method, command, args.<path> (with [n]
// indexes), agent.id, agent.org, agent.team, agent.labels.<key>, team.id
// and team.org. A missing operand, or a value of another type, makes a
// clause false. A condition that compiles as CEL is CEL; otherwise it is a
// clause expression if it parses as one. Clause expressions are translated
// to CEL (with guards for missing operands) and evaluated like CEL.
//
// A requires_approval_if that is neither (not even CEL syntax, or reading as
// clauses through AND, OR, a word operator or a clause-only operand) does
// not reject the document: the entry always requires approval (fail-safe),
// Document.Warnings reports "unparseable condition, approval will always be
// required: ..." and Explain says why. CEL that parses but does not
// type-check, and any bad `when`, still reject the document.
//
// # Performance
//
// Snapshot.Evaluate does not allocate unless a CEL condition runs or the
// action needs normalising (upper-case host, unclean path). Documents are
// indexed by scope, rules by action kind and then by literal name, host
// suffix and path prefix; network allowlists use host and suffix maps and
// CIDR tries; globs compile to allocation-free NFAs.
package policy
