package sdkclient

import (
	"errors"
	"fmt"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// Sentinel errors that *Error matches with errors.Is.
var (
	// ErrDenied means policy denied the action.
	ErrDenied = errors.New("action denied")
	// ErrPending means the action waits for a human approval.
	ErrPending = errors.New("action pending approval")
	// ErrUnavailable means no decision could be obtained (runtime or gateway
	// unreachable, deadline passed); the action must not proceed.
	ErrUnavailable = errors.New("governance unavailable")
	// ErrInvalid means the request was malformed.
	ErrInvalid = errors.New("invalid request")
)

// Error is a check that did not allow the action. Kind is one of ErrDenied,
// ErrPending, ErrUnavailable or ErrInvalid, and errors.Is(err, Kind) holds.
type Error struct {
	Kind error
	// Decision is the answer, when one was given (a fail-closed answer included).
	Decision *Decision
	// Reason says why, in the gateway's or runtime's words.
	Reason string
	// Err is the underlying transport error, if any.
	Err error

	req *v1.CheckActionRequest // the check, for WaitForApproval
}

// Error implements error.
func (e *Error) Error() string {
	s := e.Kind.Error()
	if e.Decision != nil && e.Decision.RuleID != "" {
		s += " by " + e.Decision.RuleID
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.Err != nil && e.Reason == "" {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is e's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Unwrap returns the transport error.
func (e *Error) Unwrap() error { return e.Err }

// ApprovalID is the approval to wait for when e is ErrPending.
func (e *Error) ApprovalID() string {
	if e.Decision == nil {
		return ""
	}
	return e.Decision.ApprovalID
}

// Decision is an answer to a check.
type Decision struct {
	// Decision is ALLOW, DENY, PENDING or REDACT.
	Decision   v1.Decision
	Reason     string
	RuleID     string
	Version    string
	DecisionID string
	ApprovalID string
	// Redactions are the spans to replace before acting (REDACT).
	Redactions []*v1.Redaction
	// Cached is true when the runtime answered from its decision cache.
	Cached bool
	// Mode is the enforcement mode of the deciding policy.
	Mode v1.EnforcementMode
}

func decisionOf(r *v1.CheckActionResponse, cached bool) *Decision {
	return &Decision{
		Decision: r.GetDecision(), Reason: r.GetReason(), RuleID: r.GetPolicyRuleId(), Version: r.GetPolicyVersion(),
		DecisionID: r.GetDecisionId(), ApprovalID: r.GetApprovalId(), Redactions: r.GetRedactions(), Cached: cached,
		Mode: r.GetEnforcementMode(),
	}
}

// verdict turns an answer into (decision, error): ALLOW and REDACT are not errors.
func verdict(d *Decision) (*Decision, error) {
	switch d.Decision {
	case v1.Decision_ALLOW, v1.Decision_REDACT:
		return d, nil
	case v1.Decision_PENDING:
		return d, &Error{Kind: ErrPending, Decision: d, Reason: d.Reason}
	}
	return d, &Error{Kind: ErrDenied, Decision: d, Reason: d.Reason}
}

func unavailableErr(err error) error {
	return &Error{Kind: ErrUnavailable, Reason: fmt.Sprintf("no decision: %v", err), Err: err}
}
