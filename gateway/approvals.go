package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage"
)

// DefaultApprovalTimeout is how long an approval request stays open when the
// policy's approval section sets no timeout.
const DefaultApprovalTimeout = 300 * time.Second

// TopicApprovalEvents carries the id of an approval that was created,
// decided or expired; WatchApprovals follows it.
const TopicApprovalEvents = "approval-events"

// ApprovalStore is what approvals need from storage.
type ApprovalStore interface {
	storage.Approvals
	storage.Notifier
}

// CheckOptions are per-request choices of the caller.
type CheckOptions struct {
	// WaitForApproval holds a PENDING answer until a human decides or the
	// approval times out.
	WaitForApproval bool
	// ApprovalID presents an approval granted earlier for the same action.
	ApprovalID string
	// Layer names the interception layer that asked, for metrics: LayerSDK
	// (the default), LayerEnvoy, LayerRuntime or LayerKernel.
	Layer string
	// Note is appended to the decision's reason, in the answer and the audit
	// record: a remark about how the action was seen, such as "body not
	// inspected: over 65536 bytes".
	Note string
	// Deadline, when set, is when the caller must have its answer: every
	// wait of the decision on a store (the registry, rate limits and
	// budgets, approvals, the wait for the audit record to be durable)
	// ends by it, and one that is cut short fails closed as an unavailable
	// store does. The audit record itself is still written (see
	// Core.HonoursDeadline for the Auditor this needs). The ext_authz server
	// sets it, and can then decide on the Check's own goroutine. It does not
	// hold a WaitForApproval wait, which ends when the approval does.
	Deadline time.Time
}

// Interception layers, as reported in metrics.
const (
	LayerSDK     = "sdk"
	LayerEnvoy   = "envoy"
	LayerRuntime = "runtime"
	LayerKernel  = "kernel"
)

// resolvePending turns a PENDING outcome into an approval request, or
// resolves it with an approval the caller presents. payload is the redacted
// action as audited.
func (c *Core) resolvePending(ctx context.Context, a *action.Action, payload []byte, av *agentView, opts CheckOptions, out *Outcome) {
	if c.approvals == nil {
		out.Decision, out.RuleID = action.Deny, "approval"
		out.Reason = "the policy requires approval but this gateway has no approval store; failing closed"
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), waitFor(c.limitTO, opts.Deadline))
	defer cancel()
	if opts.ApprovalID != "" {
		c.presentApproval(lctx, a, payload, opts.ApprovalID, out)
		return
	}
	timeout := av.settings.Approval.Timeout
	if timeout <= 0 {
		timeout = DefaultApprovalTimeout
	}
	now := c.now()
	ap := &storage.Approval{
		ID: newID(), DecisionID: out.DecisionID, Agent: a.Agent, Kind: a.Kind, Payload: payload,
		RuleID: out.RuleID, Reason: out.Reason, Status: storage.ApprovalPending,
		CreatedAt: now, ExpiresAt: now.Add(timeout),
	}
	if err := c.approvals.CreateApproval(lctx, ap); err != nil {
		c.metrics.storeError(storeOpApprovals, err)
		c.denyBackend(ctx, out, "approval", err)
		return
	}
	c.publishApproval(lctx, ap.ID)
	out.ApprovalID = ap.ID
	c.log.InfoContext(ctx, "approval requested", "approval_id", ap.ID, "agent", a.Agent.String(), "rule", out.RuleID,
		"escalation_role", av.settings.Approval.EscalationRole, "expires", ap.ExpiresAt)
	if !opts.WaitForApproval {
		out.Reason += "; approval " + ap.ID + " requested"
		return
	}
	wctx, wcancel := context.WithDeadline(ctx, ap.ExpiresAt)
	defer wcancel()
	got, err := c.approvals.WaitApproval(wctx, ap.ID)
	switch {
	case err == nil:
		c.applyApproval(got, out)
	case errors.Is(err, context.DeadlineExceeded) && wctx.Err() != nil && ctx.Err() == nil:
		c.expireApproval(ap)
		out.Decision, out.RuleID = action.Deny, "approval"
		out.Reason = "approval timed out: nobody decided approval " + ap.ID + " within " + timeout.String()
	case ctx.Err() != nil:
		// The caller gave up; the request stays open and can be presented later.
		out.Reason += "; approval " + ap.ID + " still pending (caller stopped waiting)"
	default:
		c.metrics.storeError(storeOpApprovals, err)
		c.denyBackend(ctx, out, "approval", err)
	}
}

// presentApproval checks an approval the caller presents for this action.
func (c *Core) presentApproval(ctx context.Context, a *action.Action, payload []byte, id string, out *Outcome) {
	ap, err := c.approvals.GetApproval(ctx, id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		out.Decision, out.RuleID, out.Reason = action.Deny, "approval", "approval "+id+" does not exist"
		return
	case err != nil:
		c.metrics.storeError(storeOpApprovals, err)
		c.denyBackend(ctx, out, "approval", err)
		return
	}
	if ap.Agent != a.Agent || ap.Kind != a.Kind || !bytes.Equal(ap.Payload, payload) {
		out.Decision, out.RuleID, out.Reason = action.Deny, "approval", "approval "+id+" was granted for a different action"
		return
	}
	out.ApprovalID = id
	if ap.Status == storage.ApprovalPending && c.now().After(ap.ExpiresAt) {
		c.expireApproval(ap)
		ap.Status = storage.ApprovalExpired
	}
	c.applyApproval(ap, out)
}

// applyApproval maps an approval's state onto the outcome.
func (c *Core) applyApproval(ap *storage.Approval, out *Outcome) {
	out.ApprovalID = ap.ID
	switch ap.Status {
	case storage.ApprovalApproved:
		out.Decision, out.RuleID = action.Allow, "approval"
		out.Reason = fmt.Sprintf("approval %s granted by %s", ap.ID, ap.DecidedBy)
		if ap.Comment != "" {
			out.Reason += ": " + ap.Comment
		}
	case storage.ApprovalRejected:
		out.Decision, out.RuleID = action.Deny, "approval"
		out.Reason = fmt.Sprintf("approval %s rejected by %s", ap.ID, ap.DecidedBy)
		if ap.Comment != "" {
			out.Reason += ": " + ap.Comment
		}
	case storage.ApprovalExpired:
		out.Decision, out.RuleID = action.Deny, "approval"
		out.Reason = "approval timed out: approval " + ap.ID + " expired undecided"
	default:
		out.Decision = action.Pending
		out.Reason += "; approval " + ap.ID + " still pending"
	}
}

// expireApproval marks an undecided approval expired and audits it.
func (c *Core) expireApproval(ap *storage.Approval) {
	ctx, cancel := context.WithTimeout(context.Background(), c.limitTO)
	defer cancel()
	got, err := c.approvals.DecideApproval(ctx, ap.ID, storage.ApprovalExpired, "gateway", "timed out", c.now())
	if err != nil {
		c.metrics.storeError(storeOpApprovals, err)
		if !errors.Is(err, storage.ErrConflict) {
			c.log.Error("expire approval", "approval_id", ap.ID, "err", err)
		}
		return
	}
	c.auditApproval(ctx, got)
}

// DecideApproval records a human decision on a pending approval, audits it
// and wakes every waiter on any replica.
func (c *Core) DecideApproval(ctx context.Context, id string, approve bool, by, comment string) (*storage.Approval, error) {
	if c.approvals == nil {
		return nil, errors.New("this gateway has no approval store")
	}
	ap, err := c.approvals.GetApproval(ctx, id)
	if err != nil {
		c.metrics.storeError(storeOpApprovals, err)
		return nil, err
	}
	if ap.Status == storage.ApprovalPending && c.now().After(ap.ExpiresAt) {
		c.expireApproval(ap)
		return nil, fmt.Errorf("approval %s expired at %s before it was decided: %w", id, ap.ExpiresAt.Format(time.RFC3339), storage.ErrConflict)
	}
	st := storage.ApprovalRejected
	if approve {
		st = storage.ApprovalApproved
	}
	got, err := c.approvals.DecideApproval(ctx, id, st, by, comment, c.now())
	if err != nil {
		c.metrics.storeError(storeOpApprovals, err)
		return nil, err
	}
	c.auditApproval(ctx, got)
	c.publishApproval(ctx, id)
	return got, nil
}

// auditApproval writes a governance record for an approval's final state.
func (c *Core) auditApproval(ctx context.Context, ap *storage.Approval) {
	d := action.Deny
	if ap.Status == storage.ApprovalApproved {
		d = action.Allow
	}
	reason := fmt.Sprintf("approval %s %s by %s", ap.ID, ap.Status, ap.DecidedBy)
	if ap.Comment != "" {
		reason += ": " + ap.Comment
	}
	if p := auth.Principal(ctx); p != "" && p != ap.DecidedBy {
		reason += " [key " + p + "]"
	}
	rec := &storage.AuditRecord{
		Chain: c.chain, ID: newID(), Time: c.now(), Event: storage.EventGovernance, Agent: ap.Agent,
		Kind: ap.Kind, Payload: ap.Payload, Decision: d, RuleID: "approval", Mode: action.ModeEnforce, Reason: reason,
	}
	if err := c.append(ctx, rec); err != nil {
		c.metrics.AuditErrors.Inc()
		c.log.ErrorContext(ctx, "audit approval decision", "approval_id", ap.ID, "err", err)
	}
}

func (c *Core) publishApproval(ctx context.Context, id string) {
	if err := c.approvals.Publish(ctx, TopicApprovalEvents, []byte(id)); err != nil {
		c.metrics.storeError(storeOpApprovals, err)
		c.log.WarnContext(ctx, "publish approval event", "approval_id", id, "err", err)
	}
}
