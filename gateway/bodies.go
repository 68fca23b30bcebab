package gateway

import (
	"errors"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/scan"
)

// ErrNoPolicy reports a call that needs the active policy before one is loaded.
var ErrNoPolicy = errors.New("no policy loaded")

// BodyScan is the result of scanning an HTTP body for an agent.
type BodyScan struct {
	// Redacted is the body with every finding replaced by
	// [REDACTED:<kind>]; the input itself when nothing was found.
	Redacted []byte
	// Findings are the credentials and PII found (raw values are never kept).
	Findings []scan.Finding
	// Action is what the agent's policy does with findings
	// (data.credential_action; alert_and_redact when no policy sets it).
	Action scan.Action
}

// Kinds lists the kinds found, each once, in order of appearance.
func (b BodyScan) Kinds() []string { return findingKinds(b.Findings) }

// ScanBody scans a request body on behalf of agent with the scanner its
// policy configures (built-in kinds plus its data.sensitive_patterns). A
// JSON body (asJSON) is redacted value by value, so the result stays valid
// JSON; if it does not parse, or asJSON is false, it is redacted as text.
//
// The ext_proc server calls it for requests that ext_authz answered with
// REDACT, and for bodies ext_authz could not inspect, so the upstream never
// sees a credential the agent sent.
func (c *Core) ScanBody(agent action.AgentID, body []byte, asJSON bool) (BodyScan, error) {
	snap := c.snap.Load()
	if snap == nil {
		return BodyScan{}, ErrNoPolicy
	}
	v := c.viewsFor(snap)
	av := v.get(agent)
	if av.err != nil {
		return BodyScan{}, av.err
	}
	res := BodyScan{Redacted: body, Action: av.credential}
	if asJSON {
		if out, fs, err := av.scanner.RedactJSON(body); err == nil {
			if len(fs) > 0 {
				res.Redacted, res.Findings = out, fs
			}
			return res, nil
		}
	}
	if fs := av.scanner.ScanString(string(body)); len(fs) > 0 {
		res.Redacted, res.Findings = []byte(scan.Redact(string(body), fs)), fs
	}
	return res, nil
}
