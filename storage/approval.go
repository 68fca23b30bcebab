package storage

import (
	"context"
	"fmt"
	"time"
)

// Approval list page sizes.
const (
	DefaultApprovalLimit = 100
	MaxApprovalLimit     = 1000
)

// PageSize is Limit, or DefaultApprovalLimit when Limit <= 0, capped at
// MaxApprovalLimit.
func (f ApprovalFilter) PageSize() int {
	switch {
	case f.Limit <= 0:
		return DefaultApprovalLimit
	case f.Limit > MaxApprovalLimit:
		return MaxApprovalLimit
	}
	return f.Limit
}

// Matches reports whether a passes the filter (Limit aside).
func (f ApprovalFilter) Matches(a *Approval) bool {
	return (f.Status == "" || a.Status == f.Status) &&
		(f.Org == "" || a.Agent.Org == f.Org) &&
		(f.Team == "" || a.Agent.Team == f.Team)
}

// ValidateNewApproval checks an approval passed to CreateApproval: it needs
// an ID and must be pending (an empty Status means pending).
func ValidateNewApproval(a *Approval) error {
	if a == nil || a.ID == "" {
		return fmt.Errorf("create approval: empty id: %w", ErrInvalid)
	}
	if a.Status != "" && a.Status != ApprovalPending {
		return fmt.Errorf("create approval %s: status %q, a new approval is pending: %w", a.ID, a.Status, ErrInvalid)
	}
	return nil
}

// ValidateDecision checks the arguments of DecideApproval: a final status.
func ValidateDecision(id string, s ApprovalStatus) error {
	switch s {
	case ApprovalApproved, ApprovalRejected, ApprovalExpired:
		return nil
	}
	return fmt.Errorf("decide approval %s: %q is not a final status (approved, rejected, expired): %w", id, s, ErrInvalid)
}

// WaitForDecision implements WaitApproval for any driver: it subscribes to
// TopicApprovals on n before reading, so no decision is missed, then
// re-reads the approval whenever its id is published on TopicApprovals or
// poll elapses (poll > 0 is required; it covers notifications lost or not
// delivered across processes). DecideApproval implementations publish the
// id after committing.
func WaitForDecision(ctx context.Context, a Approvals, n Notifier, id string, poll time.Duration) (*Approval, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wake, err := n.Subscribe(sctx, TopicApprovals)
	if err != nil {
		wake = nil // fall back to polling
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		cur, err := a.GetApproval(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("wait for approval: %w", err)
		}
		if cur.Status != ApprovalPending {
			return cur, nil
		}
	wait:
		for {
			select {
			case msg, ok := <-wake:
				if !ok {
					wake = nil
					continue
				}
				if string(msg) == id {
					break wait
				}
			case <-t.C:
				break wait
			case <-ctx.Done():
				return nil, fmt.Errorf("wait for approval %s: %w", id, ctx.Err())
			}
		}
	}
}
