package runtime

import (
	"log/slog"
	"strconv"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/scan"
)

// rescan scans every free-form field of req, whatever the SDK claims about
// it. It returns the redactions the caller must apply and a copy of req with
// every finding replaced, fit to be written to disk and reported; req itself
// is not changed. When nothing is found the copy is req.
func rescan(sc *scan.Scanner, req *v1.CheckActionRequest) ([]*v1.Redaction, *v1.CheckActionRequest) {
	var reds []*v1.Redaction
	var clean *v1.CheckActionRequest
	cp := func() *v1.CheckActionRequest {
		if clean == nil {
			clean = proto.Clone(req).(*v1.CheckActionRequest)
		}
		return clean
	}
	add := func(fs []scan.Finding, path string) {
		for _, f := range fs {
			p := f.Path
			if path != "" {
				p = path
			}
			reds = append(reds, &v1.Redaction{Kind: string(f.Kind), Path: p, Start: int32(f.Start), End: int32(f.End), Replacement: f.Redacted})
		}
	}
	str := func(s, path string, set func(*v1.CheckActionRequest, string)) {
		if s == "" {
			return
		}
		if fs := sc.ScanString(s); len(fs) > 0 {
			add(fs, path)
			set(cp(), scan.Redact(s, fs))
		}
	}
	switch c := req.GetContext().(type) {
	case *v1.CheckActionRequest_ToolCall:
		if args := c.ToolCall.GetArgsJson(); args != "" {
			red, fs, err := sc.RedactJSON([]byte(args))
			switch {
			case err != nil: // not JSON (the gateway rejects it): scan as text
				str(args, "$.args_json", func(r *v1.CheckActionRequest, s string) { r.GetToolCall().ArgsJson = s })
			case len(fs) > 0:
				add(fs, "")
				cp().GetToolCall().ArgsJson = string(red)
			}
		}
		str(c.ToolCall.GetTargetUrl(), "$.target_url", func(r *v1.CheckActionRequest, s string) { r.GetToolCall().TargetUrl = s })
	case *v1.CheckActionRequest_LlmCall:
		str(c.LlmCall.GetPrompt(), "$.prompt", func(r *v1.CheckActionRequest, s string) { r.GetLlmCall().Prompt = s })
	case *v1.CheckActionRequest_ToolResult:
		str(c.ToolResult.GetOutput(), "$.output", func(r *v1.CheckActionRequest, s string) { r.GetToolResult().Output = s })
	case *v1.CheckActionRequest_ProcessExec:
		for i, a := range c.ProcessExec.GetArgs() {
			str(a, "$.args["+strconv.Itoa(i)+"]", func(r *v1.CheckActionRequest, s string) { r.GetProcessExec().Args[i] = s })
		}
	case *v1.CheckActionRequest_NetworkCall:
		str(c.NetworkCall.GetPath(), "$.path", func(r *v1.CheckActionRequest, s string) { r.GetNetworkCall().Path = s })
	case *v1.CheckActionRequest_FileOp:
		str(c.FileOp.GetPath(), "$.path", func(r *v1.CheckActionRequest, s string) { r.GetFileOp().Path = s })
	}
	if clean == nil {
		clean = req
	}
	return reds, clean
}

// stripClaims discards what the SDK says about its own payload. Nothing
// downstream reads them; they are logged so a forging SDK is visible.
func stripClaims(log *slog.Logger, agent string, c *v1.SdkClaims) {
	if c == nil || (!c.GetScanned() && c.GetTrust() == "" && len(c.GetLabels()) == 0) {
		return
	}
	log.Info("ignoring the SDK's claims about its own payload; re-scanning",
		"agent", agent, "claimed_scanned", c.GetScanned(), "claimed_trust", c.GetTrust(), "claimed_labels", len(c.GetLabels()))
}

// mergeRedactions adds the runtime's findings to the gateway's answer: an
// ALLOW with findings becomes REDACT, so a secret the gateway did not flag
// (an observe-mode policy, a scanner difference) is still removed.
func mergeRedactions(resp *v1.CheckActionResponse, reds []*v1.Redaction) *v1.CheckActionResponse {
	if len(reds) == 0 {
		return resp
	}
	switch resp.GetDecision() {
	case v1.Decision_ALLOW, v1.Decision_REDACT:
	default:
		return resp
	}
	out := proto.Clone(resp).(*v1.CheckActionResponse)
	type span struct {
		path       string
		start, end int32
	}
	have := map[span]bool{}
	for _, r := range out.Redactions {
		have[span{r.GetPath(), r.GetStart(), r.GetEnd()}] = true
	}
	for _, r := range reds {
		if !have[span{r.GetPath(), r.GetStart(), r.GetEnd()}] {
			out.Redactions = append(out.Redactions, r)
		}
	}
	if out.Decision == v1.Decision_ALLOW {
		out.Decision = v1.Decision_REDACT
		out.Reason += "; the runtime found credentials to redact"
	}
	return out
}
