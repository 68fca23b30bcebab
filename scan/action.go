package scan

import "fmt"

// Action is what a policy does when a scan finds something: the values of the policy's
// data.credential_action.
type Action string

// The actions a policy may name.
const (
	// Block refuses the action and reports the findings.
	Block Action = "block"
	// RedactOnly forwards the payload with every finding redacted and raises no alert.
	RedactOnly Action = "redact_only"
	// AlertOnly forwards the payload unchanged and reports the findings.
	AlertOnly Action = "alert_only"
	// AlertAndRedact forwards the payload with every finding redacted and reports the findings.
	AlertAndRedact Action = "alert_and_redact"
)

// ParseAction parses a policy's credential_action value: block, redact_only, alert_only or
// alert_and_redact.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case Block, RedactOnly, AlertOnly, AlertAndRedact:
		return a, nil
	}
	return "", fmt.Errorf("parse credential action %q: want one of block, redact_only, alert_only, alert_and_redact", s)
}

// Blocks reports whether the action refuses the payload.
func (a Action) Blocks() bool { return a == Block }

// Redacts reports whether the action forwards a redacted payload.
func (a Action) Redacts() bool { return a == RedactOnly || a == AlertAndRedact }

// Alerts reports whether the action reports its findings; a block is always reported.
func (a Action) Alerts() bool { return a == AlertOnly || a == AlertAndRedact || a == Block }
