package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func newApprovalsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "approvals",
		Aliases: []string{"approval"},
		Short:   "List, approve, reject and watch actions waiting for a human",
		Example: `  aasm approvals list
  aasm approvals approve 01a2... --comment "reviewed the diff"
  aasm approvals reject 01a2... --comment "not on prod"
  aasm approvals watch --org acme`,
	}
	cmd.AddCommand(newApprovalsListCmd(g), newApprovalsDecideCmd(g, true), newApprovalsDecideCmd(g, false), newApprovalsWatchCmd(g))
	return cmd
}

func approvalRows(t *table, list []*v1.Approval) {
	t.row("ID", "AGENT", "TYPE", "STATUS", "RULE", "EXPIRES", "DECIDED BY")
	for _, a := range list {
		exp := ""
		if a.GetExpiresAt() != nil {
			exp = time.Until(a.GetExpiresAt().AsTime()).Round(time.Second).String()
		}
		t.row(a.GetId(), agentString(a.GetAgent()), strings.ToLower(a.GetActionType().String()),
			strings.TrimPrefix(a.GetStatus().String(), "APPROVAL_STATUS_"), a.GetRuleId(), exp, a.GetDecidedBy())
	}
}

func newApprovalsListCmd(g *globals) *cobra.Command {
	var org, team, st string
	var limit int32
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List approval requests (pending by default)",
		Example: "  aasm approvals list --org acme\n  aasm approvals list --status approved -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &v1.ListPendingRequest{OrgId: org, TeamId: team, Limit: limit}
			if st != "" {
				v, ok := v1.ApprovalStatus_value["APPROVAL_STATUS_"+strings.ToUpper(st)]
				if !ok || v == 0 {
					return fmt.Errorf("--status %q is not pending, approved, rejected or expired", st)
				}
				req.Status = v1.ApprovalStatus(v)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.approvals.ListPending(ctx, req)
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { approvalRows(t, resp.GetApprovals()) })
			})
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "only this org")
	cmd.Flags().StringVar(&team, "team", "", "only this team")
	cmd.Flags().StringVar(&st, "status", "", "pending (default), approved, rejected or expired")
	cmd.Flags().Int32Var(&limit, "limit", 100, "at most this many")
	return cmd
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "operator"
}

func newApprovalsDecideCmd(g *globals, approve bool) *cobra.Command {
	var comment, by string
	verb := "reject"
	if approve {
		verb = "approve"
	}
	cmd := &cobra.Command{
		Use:     verb + " ID",
		Short:   strings.ToUpper(verb[:1]) + verb[1:] + " a pending action",
		Long:    verb + " records your decision (who and why) in the audit log and answers every agent waiting on it, on any replica.",
		Example: fmt.Sprintf("  aasm approvals %s 01a213f6-2ecd-77b4-919d-84aa39f2d187 --comment \"checked with the owner\"", verb),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.approvals.Decide(ctx, &v1.DecideRequest{Id: args[0], Approve: approve, DecidedBy: by, Comment: comment})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { approvalRows(t, []*v1.Approval{resp}) })
			})
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why (recorded in the audit log)")
	cmd.Flags().StringVar(&by, "by", currentUser(), "who decides")
	return cmd
}

func newApprovalsWatchCmd(g *globals) *cobra.Command {
	var org, team string
	cmd := &cobra.Command{
		Use:     "watch",
		Short:   "Print approval requests as they are created and decided",
		Example: "  aasm approvals watch --org acme",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			stream, err := v1.NewApprovalServiceClient(conn).WatchApprovals(cmd.Context(), &v1.WatchApprovalsRequest{OrgId: org, TeamId: team})
			if err != nil {
				return err
			}
			for {
				a, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if g.output != "table" {
					if err := g.printStreamed(a); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintf(g.out, "%s  %-9s %s  %s  %s  %s\n", time.Now().Format(time.TimeOnly),
					strings.TrimPrefix(a.GetStatus().String(), "APPROVAL_STATUS_"), a.GetId(), agentString(a.GetAgent()), a.GetRuleId(), a.GetDecidedBy())
			}
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "only this org")
	cmd.Flags().StringVar(&team, "team", "", "only this team")
	return cmd
}

func newBudgetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "budget",
		Short: "Read LLM spend against budgets",
		Example: `  aasm budget show agent/acme/research/researcher-1
  aasm budget show team/acme/research`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "show SCOPE",
		Short:   "Show spend, limit and remaining per window for agent/<org>/<team>/<agent>, team/<org>/<team> or org/<org>",
		Example: "  aasm budget show team/acme/research",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.policy.GetBudget(ctx, &v1.GetBudgetRequest{Scope: args[0]})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) {
					t.row("SCOPE", "WINDOW", "START", "LIMIT USD", "SPENT USD", "REMAINING USD", "ON EXCEED")
					for _, b := range resp.GetBudgets() {
						t.row(b.GetScope(), b.GetWindow(), b.GetWindowStart(), fmt.Sprintf("%.2f", b.GetLimitUsd()),
							fmt.Sprintf("%.4f", b.GetSpentUsd()), fmt.Sprintf("%.4f", b.GetRemainingUsd()), b.GetActionOnExceed())
					}
				})
			})
		},
	})
	return cmd
}
