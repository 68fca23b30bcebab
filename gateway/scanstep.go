package gateway

import (
	"slices"
	"strconv"
	"strings"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/scan"
)

// scanAction scans the action's free-form fields (tool arguments, prompt,
// tool output, exec arguments) for credentials and PII. It rewrites a so
// that nothing after this step, the audit record included, sees a raw
// value, and applies the policy's credential_action to out.
func (c *Core) scanAction(av *agentView, a *action.Action, out *Outcome) {
	if av.err != nil {
		out.Decision, out.RuleID = action.Deny, "data"
		out.Reason = "credential scanner unavailable, failing closed: " + av.err.Error()
		return
	}
	sc := av.scanner
	var found []scan.Finding
	field := ""
	note := func(name string, fs []scan.Finding) {
		if len(fs) > 0 {
			found = append(found, fs...)
			if field == "" {
				field = name
			}
		}
	}
	switch a.Kind {
	case action.KindToolCall:
		if a.Tool.ArgsJSON != "" {
			red, fs, err := sc.RedactJSON([]byte(a.Tool.ArgsJSON))
			if err == nil && len(fs) > 0 {
				a.Tool.ArgsJSON = string(red)
			}
			note("tool_call.args_json", fs)
		}
		if fs := sc.ScanString(a.Tool.TargetURL); len(fs) > 0 {
			a.Tool.TargetURL = scan.Redact(a.Tool.TargetURL, fs)
			note("tool_call.target_url", withPath(fs, "$.target_url"))
		}
	case action.KindLLMCall:
		if fs := sc.ScanString(a.LLM.Prompt); len(fs) > 0 {
			note("llm_call.prompt", withPath(fs, "$.prompt"))
		}
		a.LLM.Prompt = "" // never stored
	case action.KindToolResult:
		if fs := sc.ScanString(a.Result.Output); len(fs) > 0 {
			note("tool_result.output", withPath(fs, "$.output"))
		}
	case action.KindProcessExec:
		cloned := false
		for i, arg := range a.Exec.Args {
			if fs := sc.ScanString(arg); len(fs) > 0 {
				if !cloned {
					a.Exec.Args, cloned = slices.Clone(a.Exec.Args), true // do not write through to the caller's slice
				}
				a.Exec.Args[i] = scan.Redact(arg, fs)
				note("process_exec.args", withPath(fs, "$.args["+strconv.Itoa(i)+"]"))
			}
		}
	case action.KindNetworkCall:
		if fs := sc.ScanString(a.Network.Path); len(fs) > 0 {
			a.Network.Path = scan.Redact(a.Network.Path, fs)
			note("network_call.path", withPath(fs, "$.path"))
		}
	}
	if len(found) == 0 {
		return
	}
	if out.Decision == action.Deny {
		return // already denied by policy: the payload is redacted, the decision stands
	}
	kinds := findingKinds(found)
	for _, k := range kinds {
		c.metrics.CredentialFindings.WithLabelValues(k, string(av.credential)).Inc()
	}
	if av.credential.Alerts() {
		c.log.Warn("credentials in action", "decision_id", out.DecisionID, "agent", a.Agent.String(),
			"field", field, "kinds", strings.Join(kinds, ","), "credential_action", string(av.credential))
	}
	switch {
	case av.credential.Blocks():
		out.Decision, out.RuleID = action.Deny, "data.credential_action"
		out.Reason = "credentials found in " + field + " (" + strings.Join(kinds, ", ") + "); the policy blocks actions that carry them"
	case av.credential.Redacts():
		out.Redactions = found
		if out.Decision == action.Allow {
			out.Decision = action.Redact
			out.Reason += "; credentials redacted from " + field + " (" + strings.Join(kinds, ", ") + ")"
		}
	}
}

func withPath(fs []scan.Finding, path string) []scan.Finding {
	for i := range fs {
		if fs[i].Path == "" {
			fs[i].Path = path
		}
	}
	return fs
}

func findingKinds(fs []scan.Finding) []string {
	var out []string
	for _, f := range fs {
		if k := string(f.Kind); !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}
