package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// actionFlags build a CheckActionRequest from flags or a JSON document.
type actionFlags struct {
	agent    string
	token    string
	trace    string
	session  string
	tool     string
	args     string
	source   string
	target   string
	host     string
	port     uint32
	proto    string
	method   string
	path     string
	provider string
	model    string
	tokensIn int64
	tokOut   int64
	fileOp   string
	exec     string
	spawn    string
	json     string
	wait     bool
	approval string
}

func (f *actionFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "acting agent as org/team/agent (required unless --json)")
	fl.StringVar(&f.token, "token", "", "agent credential token")
	fl.StringVar(&f.trace, "trace", "", "trace id")
	fl.StringVar(&f.session, "session", "", "session id")
	fl.StringVar(&f.tool, "tool", "", "tool_call: tool name")
	fl.StringVar(&f.args, "args", "", "tool_call: arguments as JSON")
	fl.StringVar(&f.source, "source", "", "tool_call: tool source (mcp, builtin, ...)")
	fl.StringVar(&f.target, "target-url", "", "tool_call: target URL")
	fl.StringVar(&f.host, "host", "", "network_call: destination host")
	fl.Uint32Var(&f.port, "port", 443, "network_call: destination port")
	fl.StringVar(&f.proto, "protocol", "https", "network_call: protocol")
	fl.StringVar(&f.method, "method", "GET", "network_call: HTTP method")
	fl.StringVar(&f.path, "path", "", "network_call: URL path; file_op: file path")
	fl.StringVar(&f.provider, "provider", "", "llm_call: provider (openai, anthropic, ...)")
	fl.StringVar(&f.model, "model", "", "llm_call: model")
	fl.Int64Var(&f.tokensIn, "prompt-tokens", 0, "llm_call: prompt tokens")
	fl.Int64Var(&f.tokOut, "completion-tokens", 0, "llm_call: completion tokens")
	fl.StringVar(&f.fileOp, "file-op", "", "file_operation: read, write, delete, list")
	fl.StringVar(&f.exec, "exec", "", "process_exec: command (arguments after --)")
	fl.StringVar(&f.spawn, "spawn", "", "agent_spawn: child agent as org/team/agent")
	fl.StringVar(&f.json, "json", "", "the whole CheckActionRequest as JSON, or @file.json")
	fl.BoolVar(&f.wait, "wait", false, "if approval is required, wait for a human decision (up to the policy's approval timeout)")
	fl.StringVar(&f.approval, "approval", "", "present an approval id granted earlier for this same action")
}

// request builds the request. Exactly one action kind must be chosen.
func (f *actionFlags) request(extra []string) (*v1.CheckActionRequest, error) {
	if f.json != "" {
		data := []byte(f.json)
		if name, ok := strings.CutPrefix(f.json, "@"); ok {
			var err error
			if data, err = os.ReadFile(name); err != nil {
				return nil, fmt.Errorf("read --json file: %w", err)
			}
		}
		req := &v1.CheckActionRequest{}
		if err := protojson.Unmarshal(data, req); err != nil {
			return nil, fmt.Errorf("--json is not a CheckActionRequest: %w", err)
		}
		return req, nil
	}
	id, err := parseAgent("--agent", f.agent)
	if err != nil {
		return nil, err
	}
	req := &v1.CheckActionRequest{Agent: id, CredentialToken: f.token, TraceId: f.trace, SessionId: f.session,
		WaitForApproval: f.wait, ApprovalId: f.approval}
	chosen := 0
	if f.tool != "" {
		chosen++
		req.Context = &v1.CheckActionRequest_ToolCall{ToolCall: &v1.ToolCallContext{Name: f.tool, ArgsJson: f.args, Source: f.source, TargetUrl: f.target}}
	}
	if f.host != "" {
		chosen++
		req.Context = &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: f.host, Port: f.port, Protocol: f.proto, Method: f.method, Path: f.path}}
	}
	if f.model != "" {
		chosen++
		req.Context = &v1.CheckActionRequest_LlmCall{LlmCall: &v1.LlmCallContext{Provider: f.provider, Model: f.model, PromptTokens: f.tokensIn, CompletionTokens: f.tokOut}}
	}
	if f.fileOp != "" {
		chosen++
		req.Context = &v1.CheckActionRequest_FileOp{FileOp: &v1.FileOperationContext{Operation: f.fileOp, Path: f.path}}
	}
	if f.exec != "" {
		chosen++
		req.Context = &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: f.exec, Args: extra}}
	}
	if f.spawn != "" {
		chosen++
		child, err := parseAgent("--spawn", f.spawn)
		if err != nil {
			return nil, err
		}
		req.Context = &v1.CheckActionRequest_AgentSpawn{AgentSpawn: &v1.AgentSpawnContext{Child: child}}
	}
	if chosen != 1 {
		return nil, fmt.Errorf("choose exactly one action: --tool, --host, --model, --file-op, --exec or --spawn (or pass --json)")
	}
	return req, nil
}

func parseAgent(flag, s string) (*v1.AgentId, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return nil, fmt.Errorf("%s must be org/team/agent, e.g. acme/eng/coder-1 (got %q)", flag, s)
	}
	return &v1.AgentId{OrgId: parts[0], TeamId: parts[1], AgentId: parts[2]}, nil
}

func newCheckCmd(g *globals) *cobra.Command {
	var f actionFlags
	cmd := &cobra.Command{
		Use:   "check [flags] [-- exec args]",
		Short: "Ask the gateway to decide one action",
		Long: `check builds an action from flags (or --json) and asks the gateway's
PolicyService.CheckAction. The decision is audited like any agent's.

Exit status: 0 allow (or redact), 1 deny, 2 pending approval, 3 error.`,
		Example: `  aasm check --agent acme/eng/coder-1 --tool git_status
  aasm check --agent acme/research/researcher-1 --host en.wikipedia.org --port 443
  aasm check --agent acme/eng/coder-1 --exec git -- status --short
  aasm check --json @request.json -o json`,
		RunE: func(cmd *cobra.Command, extra []string) error {
			req, err := f.request(extra)
			if err != nil {
				return err
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout)
			if f.wait {
				cancel()
				ctx, cancel = context.WithCancel(cmd.Context()) // the gateway bounds the wait by the approval timeout
			}
			defer cancel()
			resp, err := v1.NewPolicyServiceClient(conn).CheckAction(ctx, req)
			if err != nil {
				return err
			}
			if err := g.print(resp, func(t *table) { decisionRows(t, resp) }); err != nil {
				return err
			}
			return decisionExit(resp.GetDecision())
		},
	}
	f.register(cmd)
	return cmd
}

func decisionRows(t *table, r *v1.CheckActionResponse) {
	t.row("DECISION", r.GetDecision().String())
	t.row("RULE", r.GetPolicyRuleId())
	t.row("REASON", r.GetReason())
	t.row("POLICY VERSION", r.GetPolicyVersion())
	t.row("MODE", r.GetEnforcementMode().String())
	if s := r.GetShadowDecision(); s != v1.Decision_DECISION_UNSPECIFIED {
		t.row("SHADOW DECISION", s.String())
	}
	if r.GetApprovalId() != "" {
		t.row("APPROVAL", r.GetApprovalId())
	}
	for _, red := range r.GetRedactions() {
		t.row("REDACTION", fmt.Sprintf("%s at %s[%d:%d]", red.GetKind(), red.GetPath(), red.GetStart(), red.GetEnd()))
	}
	if r.GetDecisionId() != "" {
		t.row("DECISION ID", r.GetDecisionId())
	}
	t.row("LATENCY", r.GetDecisionLatency().AsDuration().String())
}

func decisionExit(d v1.Decision) error {
	switch d {
	case v1.Decision_ALLOW, v1.Decision_REDACT:
		return nil
	case v1.Decision_PENDING:
		return exitCode(exitPending)
	case v1.Decision_DENY:
		return exitCode(exitDeny)
	}
	return exitCode(exitError)
}
