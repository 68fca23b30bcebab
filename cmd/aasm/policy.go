package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
	"github.com/agent-assembly/agent-assembly/policy"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate, apply, version, diff, roll back and simulate policies; explain decisions",
		Example: `  aasm policy validate examples/policies
  aasm policy explain --agent acme/eng/coder-1 --tool shell_exec --args '{"command":"rm -rf /"}'
  aasm policy apply examples/policies -m "why"
  aasm policy simulate ./candidate --hours 24`,
	}
	cmd.AddCommand(newPolicyValidateCmd(g), newPolicyExplainCmd(g))
	cmd.AddCommand(lifecycleCmds(g)...)
	return cmd
}

func newPolicyValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate PATH...",
		Short: "Check policy files or directories without a gateway",
		Long: `validate parses, validates and compiles the documents exactly as the
gateway does, and prints every problem as file:line:column: field: message.
Several paths are compiled together as one policy set.

Exit status: 0 valid, 1 invalid, 3 error.`,
		Example: "  aasm policy validate examples/policies\n  aasm policy validate team.yaml agent.yaml",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			var docs []*policy.Document
			var problems, warnings []string
			for _, p := range paths {
				d, err := policy.LoadPath(p)
				if err != nil {
					problems = append(problems, problemLines(err)...)
					continue
				}
				if len(d) == 0 {
					problems = append(problems, p+": no policy documents (*.yaml, *.yml) found")
				}
				docs = append(docs, d...)
			}
			if len(problems) == 0 {
				snap, err := policy.Compile(docs, policy.Version(docs))
				if err == nil {
					err = gateway.ValidateScanPatterns(snap)
				}
				if err != nil {
					problems = append(problems, problemLines(err)...)
				} else {
					for _, w := range snap.Warnings() {
						warnings = append(warnings, w.Error())
						fmt.Fprintln(g.errOut, "warning: "+w.Error())
					}
				}
			}
			if g.output == "json" || g.output == "yaml" {
				v := map[string]any{"valid": len(problems) == 0, "documents": len(docs), "problems": strs(problems), "warnings": strs(warnings)}
				if len(problems) == 0 {
					v["version"] = policy.Version(docs)
				}
				if err := g.printValue(v); err != nil {
					return err
				}
			}
			if len(problems) > 0 {
				for _, p := range problems {
					fmt.Fprintln(g.errOut, p)
				}
				fmt.Fprintf(g.errOut, "%d problem(s); the gateway would reject this policy and keep serving the previous one\n", len(problems))
				return exitCode(exitDeny)
			}
			if g.output == "json" || g.output == "yaml" {
				return nil
			}
			fmt.Fprintf(g.out, "valid: %d document(s), version %s\n", len(docs), policy.Version(docs))
			return nil
		},
	}
}

func problemLines(err error) []string {
	var list policy.Errors
	if errors.As(err, &list) {
		out := make([]string, len(list))
		for i, e := range list {
			out[i] = e.Error()
		}
		return out
	}
	return strings.Split(err.Error(), "\n")
}

func newPolicyExplainCmd(g *globals) *cobra.Command {
	var f actionFlags
	cmd := &cobra.Command{
		Use:   "explain [flags] [-- exec args]",
		Short: "Show every rule the gateway considers for an action",
		Long: `explain asks the gateway to evaluate an action against the live policy
and prints the trace: each document and rule in the order considered, whether
it matched, and why. Nothing is audited and no budget is spent.

Exit status follows the decision: 0 allow, 1 deny, 2 pending, 3 error.`,
		Example: `  aasm policy explain --agent acme/eng/coder-1 --tool git_status
  aasm policy explain --agent acme/research/researcher-1 --host evil.example.com`,
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
			defer cancel()
			resp, err := v1.NewPolicyServiceClient(conn).ExplainAction(ctx, req)
			if err != nil {
				return err
			}
			err = g.print(resp, func(t *table) {
				t.row("DOCUMENT", "RULE", "MATCHED", "DECISION", "DETAIL")
				for _, s := range resp.GetTrace() {
					dec := ""
					if s.GetDecision() != v1.Decision_DECISION_UNSPECIFIED {
						dec = s.GetDecision().String()
					}
					t.row(s.GetDocument(), s.GetRuleId(), fmt.Sprint(s.GetMatched()), dec, s.GetDetail())
				}
				t.row("")
				decisionRows(t, resp.GetResult())
			})
			if err != nil {
				return err
			}
			return decisionExit(resp.GetResult().GetDecision())
		},
	}
	f.register(cmd)
	return cmd
}

// strs converts a string slice for printValue (nil becomes an empty list).
func strs(ss []string) []any {
	out := make([]any, 0, len(ss))
	for _, s := range ss {
		out = append(out, s)
	}
	return out
}
