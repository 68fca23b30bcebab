// Package storage defines what the gateway needs from persistent state, as
// small interfaces over domain types, and the errors drivers return.
//
// Drivers live in sub-packages: memory (tests), sqlite (embedded default),
// postgres (shared by replicas) and redis (counters, rate limits and
// notification fan-out). storagetest is the conformance suite every driver
// passes.
package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
)

// Sentinel errors. Drivers wrap them with context; callers match with errors.Is.
var (
	// ErrNotFound means the requested item does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the write conflicts with existing state
	// (duplicate key, approval already decided, nonce already used).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable means the backend cannot be reached; callers fail closed.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrNotSupported means the driver does not implement the capability.
	ErrNotSupported = errors.New("not supported by this storage driver")
	// ErrInvalid means the caller passed bad input (a record without a chain,
	// an empty name, a negative amount); nothing was changed.
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed means the store or writer was closed.
	ErrClosed = errors.New("storage closed")
)

// Notifier topics the storage layer and the gateway agree on. Payloads are
// small: an id, never a secret.
const (
	// TopicApprovals carries the id of an approval that was decided; every
	// replica's WaitApproval for that id wakes up.
	TopicApprovals = "approvals"
	// TopicAgents carries the id (org/team/agent) of an agent that changed.
	TopicAgents = "agents"
	// TopicPolicy carries the version that was activated.
	TopicPolicy = "policy"
	// TopicInvalidations carries the sequence number (decimal) of an
	// invalidation event just appended to the InvalidationLog, so every
	// replica's subscribers read it at once instead of at their next poll.
	TopicInvalidations = "invalidations"
)

// Sealer encrypts secrets at rest. secretbox.Box implements it. aad is
// authenticated but not encrypted; drivers pass the secret's name so a
// ciphertext cannot be moved to another name.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(ciphertext, aad []byte) ([]byte, error)
	// NeedsReseal reports whether ciphertext was sealed with another key
	// than the one Seal uses now (a key kept only to open old values).
	NeedsReseal(ciphertext []byte) bool
}

// Store is everything the gateway keeps. A driver may implement only some of
// the parts; Compose assembles a Store from several drivers.
type Store interface {
	AuditLog
	AgentRegistry
	PolicyStore
	Approvals
	Secrets
	Counters
	Notifier
	InvalidationLog
	Alerts
	CostLedger
	APIKeys
	// Ping checks that the backends answer.
	Ping(ctx context.Context) error
	// Close releases connections and flushes buffered writes.
	Close() error
}

// ---------------------------------------------------------------- audit

// Durability is how far an audit append must have gone before Append returns.
type Durability string

const (
	// DurabilitySync waits for fsync / synchronous commit: survives power loss.
	DurabilitySync Durability = "sync"
	// DurabilityOS waits for the write to reach the OS (or the database
	// server), which flushes it to disk within a bounded window (SQLite:
	// twice its flush interval, 50 ms by default; PostgreSQL: the server's
	// wal_writer_delay): survives a crash of the gateway process, not of
	// the machine.
	DurabilityOS Durability = "os"
)

// RecordEvent says what an audit record is about.
type RecordEvent string

// Audit record events.
const (
	// EventDecision is a decision on an action.
	EventDecision RecordEvent = "decision"
	// EventRejected is a request rejected before evaluation (malformed, oversized).
	EventRejected RecordEvent = "rejected"
	// EventGovernance is an operator or system action (policy change, suspend, auth failure).
	EventGovernance RecordEvent = "governance"
)

// AuditRecord is one entry of the hash-chained audit log. The driver assigns
// Seq, PrevHash and Hash on append; everything else is set by the caller.
type AuditRecord struct {
	// Chain names the hash chain the record belongs to (one per writer, e.g.
	// the gateway replica id), so replicas never contend on one chain head.
	Chain string
	// Seq is the record's position in its chain, starting at 1.
	Seq int64
	// ID is the globally unique decision id returned to the client.
	ID string
	// Time is when the decision was made. Drivers store it to the
	// nanosecond: the hash covers it.
	Time  time.Time
	Event RecordEvent
	Agent action.AgentID
	// SessionID, TraceID and SpanID correlate the records of one agent run.
	SessionID string
	TraceID   string
	SpanID    string
	Kind      action.Kind
	// Payload is the normalised action as JSON with secrets already redacted.
	Payload        []byte
	Decision       action.Decision
	RuleID         string
	PolicyVersion  string
	Mode           action.Mode
	ShadowDecision action.Decision
	Reason         string
	// Latency is the time from receiving the request to deciding.
	Latency time.Duration
	// PrevHash is the Hash of the previous record in the chain (32 zero bytes for the first).
	PrevHash []byte
	// Hash is SHA-256 over the canonical encoding of every other field and PrevHash.
	Hash []byte
	// Seal, when set, is called by LinkRecord with the head the record is
	// about to follow, before it is hashed, and its result becomes Payload.
	// It lets a writer sign the chain position a record lands at (see
	// CheckpointSigner). It is neither stored nor hashed.
	Seal func(prev ChainHead) []byte
}

// AuditQuery filters and pages the audit log. Zero values mean "any".
type AuditQuery struct {
	Org, Team, Agent string
	SessionID        string
	TraceID          string
	Kind             action.Kind
	Decision         action.Decision
	Event            RecordEvent
	// Since is inclusive, Until exclusive.
	Since, Until time.Time
	// Cursor is the opaque NextCursor of a previous page.
	Cursor string
	// Limit caps the page size; drivers apply a default of 100 and a maximum of 1000.
	Limit int
	// Ascending orders oldest first; the default is newest first.
	Ascending bool
}

// AuditPage is one page of query results.
type AuditPage struct {
	Records []*AuditRecord
	// NextCursor is empty on the last page.
	NextCursor string
}

// VerifyReport is the result of checking a chain.
type VerifyReport struct {
	Chain   string
	Records int64
	// OK is true when every record's hash and link check out.
	OK bool
	// FirstBadSeq is the first record whose hash or link is wrong (0 when OK).
	FirstBadSeq int64
	// Problem says what is wrong with FirstBadSeq.
	Problem string
	// Head is the hash of the last record, and HeadSeq its sequence number.
	Head    []byte
	HeadSeq int64
	// Checkpoints counts the signed checkpoints verified (CheckpointRule),
	// and LastCheckpointSeq is the last of them: every record before it is
	// vouched for by its signature.
	Checkpoints       int64
	LastCheckpointSeq int64
	// CheckpointKeys are the keys whose checkpoints verified, in the order
	// first met. A checkpoint proves something only if its key is trusted:
	// the gateway compares them with its own.
	CheckpointKeys []CheckpointKey
}

// AuditLog is the append-only, hash-chained decision log.
type AuditLog interface {
	// AppendAudit appends records in order, assigning Seq, PrevHash and Hash,
	// and returns when they are durable as configured. It is all or nothing.
	AppendAudit(ctx context.Context, recs []*AuditRecord) error
	// QueryAudit returns one page of records matching q.
	QueryAudit(ctx context.Context, q AuditQuery) (AuditPage, error)
	// TailAudit delivers records appended after the call until ctx ends.
	// The channel is closed when ctx ends, or early when the consumer falls
	// too far behind (it then resumes with QueryAudit).
	TailAudit(ctx context.Context) (<-chan *AuditRecord, error)
	// AuditChains lists the chain ids present in the log.
	// They are sorted.
	AuditChains(ctx context.Context) ([]string, error)
	// VerifyAudit recomputes every hash of one chain in order.
	// Problems are reported in the VerifyReport; ErrNotFound means the chain
	// has no records. Drivers feed their records to a ChainVerifier.
	// anchors are heads kept outside the database that the chain must
	// hold (ChainVerifier.Anchor).
	VerifyAudit(ctx context.Context, chain string, anchors ...ChainHead) (VerifyReport, error)
}

// ---------------------------------------------------------------- agents

// AgentStatus is an agent's lifecycle state.
type AgentStatus string

// Agent statuses.
const (
	AgentActive    AgentStatus = "active"
	AgentSuspended AgentStatus = "suspended"
	AgentKilled    AgentStatus = "killed"
	AgentStale     AgentStatus = "stale"
)

// Agent is a registered agent.
type Agent struct {
	ID        action.AgentID
	Labels    map[string]string
	PublicKey []byte
	Status    AgentStatus
	// StatusReason says why the status was last changed.
	StatusReason string
	// Parent is the agent that spawned this one (zero for a root agent).
	Parent action.AgentID
	// Depth is the delegation depth (0 for a root agent).
	Depth        int
	RegisteredAt time.Time
	LastSeen     time.Time
	// Mode, when not action.ModeUnspecified, overrides the enforcement mode
	// of the policy documents for this agent (an operator's runtime switch).
	Mode action.Mode
}

// AgentFilter selects agents. Zero values mean "any".
type AgentFilter struct {
	Org, Team string
	Status    AgentStatus
}

// AgentRegistry keeps agents, registration nonces and revoked credentials.
type AgentRegistry interface {
	// PutAgent creates or replaces an agent.
	PutAgent(ctx context.Context, a *Agent) error
	// GetAgent returns ErrNotFound for an unknown agent.
	GetAgent(ctx context.Context, id action.AgentID) (*Agent, error)
	// ListAgents returns matching agents sorted by org, team, agent.
	ListAgents(ctx context.Context, f AgentFilter) ([]*Agent, error)
	// SetAgentStatus changes status and reason; ErrNotFound for an unknown agent.
	SetAgentStatus(ctx context.Context, id action.AgentID, s AgentStatus, reason string) error
	// TouchAgent records a heartbeat.
	TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error
	// SetAgentMode sets the agent's enforcement-mode override
	// (action.ModeUnspecified clears it); ErrNotFound for an unknown agent,
	// ErrInvalid for a mode that is not a known one.
	SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error
	// PutNonce stores a single-use registration nonce until expiry.
	PutNonce(ctx context.Context, nonce string, expires time.Time) error
	// ConsumeNonce deletes a live nonce; ErrNotFound if unknown, expired or used.
	ConsumeNonce(ctx context.Context, nonce string, now time.Time) error
	// RevokeCredential marks a credential token id as revoked until its expiry.
	RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error
	// CredentialRevoked reports whether a token id was revoked.
	CredentialRevoked(ctx context.Context, tokenID string) (bool, error)
}

// ValidAgentMode reports whether m can be stored as an agent's mode override.
func ValidAgentMode(m action.Mode) error {
	if m > action.ModeDisabled {
		return fmt.Errorf("agent mode %s: want enforce, observe, disabled or unspecified: %w", m, ErrInvalid)
	}
	return nil
}

// AgentModeName is how drivers store a mode override: "" for none, else
// the mode's name.
func AgentModeName(m action.Mode) string {
	if m == action.ModeUnspecified {
		return ""
	}
	return m.String()
}

// ParseAgentMode reverses AgentModeName; anything unknown is no override.
func ParseAgentMode(s string) action.Mode {
	m, _ := action.ParseMode(s)
	return m
}

// ---------------------------------------------------------------- invalidations

// InvalidationType says what an invalidation event invalidates.
type InvalidationType string

// Invalidation event types.
const (
	InvalidatePolicy     InvalidationType = "policy_changed"
	InvalidateApproval   InvalidationType = "approval_resolved"
	InvalidateSuspended  InvalidationType = "agent_suspended"
	InvalidateResumed    InvalidationType = "agent_resumed"
	InvalidateKilled     InvalidationType = "agent_killed"
	InvalidateRevoked    InvalidationType = "credential_revoked"
	InvalidateAgentMode  InvalidationType = "agent_mode_changed"
	InvalidateRegistered InvalidationType = "agent_registered"
)

// InvalidationEvent is one entry of the invalidation log: something runtimes
// and Envoy nodes that cache decisions must drop.
type InvalidationEvent struct {
	// Seq is assigned by AppendInvalidation: 1, 2, 3, … with no gaps, and
	// events become visible to InvalidationsSince in Seq order.
	Seq  int64
	Type InvalidationType
	// Agent is the agent concerned (zero for every agent).
	Agent         action.AgentID
	PolicyVersion string
	ApprovalID    string
	Reason        string
	Time          time.Time
	// Key, when not empty, makes the append idempotent across replicas: an
	// event whose key is already in the log is not stored again
	// (AppendInvalidation returns ErrConflict).
	Key string
}

// InvalidationLog is an ordered, replica-shared log of invalidation events.
// Subscribers resume from the last sequence number they saw, so no event is
// lost across reconnects; TopicInvalidations wakes them.
type InvalidationLog interface {
	// AppendInvalidation stores ev with the next sequence number, sets
	// ev.Seq and returns it. ErrConflict when ev.Key is already logged.
	AppendInvalidation(ctx context.Context, ev *InvalidationEvent) (int64, error)
	// InvalidationsSince returns up to limit events with Seq > after, in Seq
	// order (limit <= 0 means 1000).
	InvalidationsSince(ctx context.Context, after int64, limit int) ([]*InvalidationEvent, error)
	// TrimInvalidations deletes events older than before, keeping the newest
	// one so sequence numbers keep increasing; it returns how many it deleted.
	TrimInvalidations(ctx context.Context, before time.Time) (int64, error)
}

// ---------------------------------------------------------------- policies

// PolicyDocument is one stored policy file.
type PolicyDocument struct {
	Name   string
	Source []byte
}

// PolicyVersion is one immutable set of policy documents.
type PolicyVersion struct {
	Version   string
	Documents []PolicyDocument
	Author    string
	Message   string
	CreatedAt time.Time
	// ActivatedAt is when the version was last made active (zero if never).
	ActivatedAt time.Time
	Active      bool
}

// PolicyStore keeps policy versions and which one is active.
type PolicyStore interface {
	// SavePolicyVersion stores a new version; ErrConflict if it exists.
	SavePolicyVersion(ctx context.Context, v *PolicyVersion) error
	// ActivatePolicyVersion makes v the active version (rollback activates an older one).
	ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error
	// ActivePolicyVersion returns ErrNotFound when none is active.
	ActivePolicyVersion(ctx context.Context) (*PolicyVersion, error)
	GetPolicyVersion(ctx context.Context, version string) (*PolicyVersion, error)
	// PolicyHistory lists versions newest first.
	// A limit <= 0 means all. Ties in CreatedAt put the later save first.
	PolicyHistory(ctx context.Context, limit int) ([]*PolicyVersion, error)
}

// ---------------------------------------------------------------- counters

// Reservation is the outcome of Counters.Reserve.
type Reservation struct {
	// Allowed is false when the amount would take the counter over the limit;
	// the counter is then unchanged.
	Allowed bool
	// Used is the counter's value after the call.
	Used int64
}

// Counters are windowed integer counters for budgets (micro-USD) and rate
// limits (counts). Keys include their window (e.g. "budget:agent:acme/eng/a:2026-11-25").
type Counters interface {
	// Reserve atomically adds amount if used+amount <= limit. The key expires at expires.
	Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (Reservation, error)
	// Adjust adds delta (which may be negative) unconditionally, for reconciliation.
	Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error)
	// Counter returns the current value (0 for a missing key).
	Counter(ctx context.Context, key string) (int64, error)
	// TakeToken takes one token from a bucket refilled at rate tokens per
	// second up to burst; when empty it returns false and the wait until a token.
	TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error)
	// PutHold stores data under key until expires, replacing any earlier
	// value. The gateway keeps each budget reservation here until its usage
	// is reported, so any replica can settle it.
	PutHold(ctx context.Context, key string, data []byte, expires time.Time) error
	// TakeHold returns the data stored under key and removes it in one
	// atomic step: of several callers, on any replica, exactly one gets it.
	// It returns ErrNotFound when key holds nothing or has expired.
	TakeHold(ctx context.Context, key string) ([]byte, error)
	// PeekHold returns the data stored under key without removing it, or
	// ErrNotFound. The gateway reads whose reservation a usage report names
	// before it takes it, so a report by the wrong agent changes nothing.
	PeekHold(ctx context.Context, key string) ([]byte, error)
}

// ---------------------------------------------------------------- approvals

// ApprovalStatus is the state of an approval request.
type ApprovalStatus string

// Approval statuses.
const (
	ApprovalPending  ApprovalStatus = "pending"
	ApprovalApproved ApprovalStatus = "approved"
	ApprovalRejected ApprovalStatus = "rejected"
	ApprovalExpired  ApprovalStatus = "expired"
)

// Approval is a request for a human decision on one action.
type Approval struct {
	ID         string
	DecisionID string
	Agent      action.AgentID
	Kind       action.Kind
	// Payload is the redacted action as JSON.
	Payload   []byte
	RuleID    string
	Reason    string
	Status    ApprovalStatus
	CreatedAt time.Time
	ExpiresAt time.Time
	DecidedAt time.Time
	DecidedBy string
	Comment   string
}

// ApprovalFilter selects approvals. Zero values mean "any".
type ApprovalFilter struct {
	Status ApprovalStatus
	Org    string
	Team   string
	// Limit caps the result; drivers apply a default of 100 and a maximum of 1000.
	Limit int
}

// Approvals keeps approval requests and wakes waiters when they are decided.
type Approvals interface {
	// CreateApproval stores a new pending approval (an empty Status means
	// pending); ErrConflict if the ID exists.
	CreateApproval(ctx context.Context, a *Approval) error
	// DecideApproval sets a final status; ErrConflict if already decided.
	DecideApproval(ctx context.Context, id string, s ApprovalStatus, by, comment string, at time.Time) (*Approval, error)
	GetApproval(ctx context.Context, id string) (*Approval, error)
	// ListApprovals returns matching approvals oldest first (CreatedAt, then ID).
	ListApprovals(ctx context.Context, f ApprovalFilter) ([]*Approval, error)
	// WaitApproval blocks until the approval is no longer pending (decided by
	// any replica) or ctx ends, and returns its latest state.
	// When ctx ends first it returns an error wrapping ctx.Err().
	WaitApproval(ctx context.Context, id string) (*Approval, error)
}

// ---------------------------------------------------------------- secrets

// SecretMeta describes a stored secret without its value.
type SecretMeta struct {
	Name      string
	UpdatedAt time.Time
	Version   int64
}

// Secrets keeps named secrets encrypted at rest.
type Secrets interface {
	// PutSecret stores value encrypted, replacing any previous value.
	PutSecret(ctx context.Context, name string, value []byte) error
	// GetSecret returns the decrypted value; ErrNotFound for an unknown name.
	GetSecret(ctx context.Context, name string) ([]byte, error)
	ListSecrets(ctx context.Context) ([]SecretMeta, error)
	// DeleteSecret removes a secret; ErrNotFound for an unknown name.
	DeleteSecret(ctx context.Context, name string) error
	// ResealSecrets seals again, with the Sealer's current key, every secret
	// sealed with an older key it can still open, keeping its value and
	// version, and returns how many it rewrote. A secret replaced meanwhile
	// is left alone (the new value is sealed with the current key already).
	// A secret that cannot be opened is named in the error; the others are
	// still resealed.
	ResealSecrets(ctx context.Context) (int, error)
}

// ---------------------------------------------------------------- notifications

// Notifier fans small messages out to every replica (policy changes,
// approval decisions, agent suspensions).
type Notifier interface {
	// Publish sends payload to every current subscriber of topic on any replica.
	Publish(ctx context.Context, topic string, payload []byte) error
	// Subscribe delivers messages published to topic after the call until ctx ends.
	// The subscription is active when Subscribe returns. A subscriber that
	// falls far behind may miss messages: they are hints to re-read.
	Subscribe(ctx context.Context, topic string) (<-chan []byte, error)
}
