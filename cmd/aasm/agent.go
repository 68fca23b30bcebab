package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// callAgents dials the gateway and runs fn with the lifecycle client.
func (g *globals) callAgents(ctx context.Context, fn func(ctx context.Context, c v1.AgentLifecycleServiceClient) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	if g.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	return fn(ctx, v1.NewAgentLifecycleServiceClient(conn))
}

func newAgentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "agent",
		Aliases: []string{"agents"},
		Short:   "List, inspect and control registered agents",
		Long: `agent shows the agents registered with the gateway and changes their status
or enforcement mode. Agents are named org/team/agent.

  suspend   deny every check of the agent until it is resumed; its runtime is
            told at once over the ControlStream
  resume    lift a suspension
  kill      deny for good, revoke its credentials and tell its runtime to stop it
  mode      override the policy's enforcement mode for this agent only:
            enforce, observe (decide and audit, but allow), disabled, or
            policy (remove the override)

Every change is written to the audit log and honoured by every replica.`,
		Example: `  aasm agent list --org acme
  aasm agent inspect acme/eng/coder-1
  aasm agent suspend acme/eng/coder-1 --reason "investigating a leak"
  aasm agent mode acme/eng/coder-1 observe --reason "new policy rollout"`,
	}
	cmd.AddCommand(newAgentListCmd(g), newAgentInspectCmd(g),
		newAgentStatusCmd(g, "suspend", "Deny every check of an agent until it is resumed",
			func(c v1.AgentLifecycleServiceClient) func(context.Context, *v1.AgentControlRequest) (*v1.AgentInfo, error) {
				return func(ctx context.Context, r *v1.AgentControlRequest) (*v1.AgentInfo, error) {
					return c.SuspendAgent(ctx, r)
				}
			}),
		newAgentStatusCmd(g, "resume", "Lift an agent's suspension",
			func(c v1.AgentLifecycleServiceClient) func(context.Context, *v1.AgentControlRequest) (*v1.AgentInfo, error) {
				return func(ctx context.Context, r *v1.AgentControlRequest) (*v1.AgentInfo, error) {
					return c.ResumeAgent(ctx, r)
				}
			}),
		newAgentStatusCmd(g, "kill", "Stop an agent for good and revoke its credentials",
			func(c v1.AgentLifecycleServiceClient) func(context.Context, *v1.AgentControlRequest) (*v1.AgentInfo, error) {
				return func(ctx context.Context, r *v1.AgentControlRequest) (*v1.AgentInfo, error) {
					return c.KillAgent(ctx, r)
				}
			}),
		newAgentModeCmd(g))
	return cmd
}

// agentName is org/team/agent.
func agentName(id *v1.AgentId) string {
	if id == nil {
		return ""
	}
	return id.GetOrgId() + "/" + id.GetTeamId() + "/" + id.GetAgentId()
}

// statusName is the lower-case status without its enum prefix.
func statusName(s v1.AgentStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "AGENT_STATUS_"))
}

// modeName is the override as the operator types it.
func modeName(m v1.EnforcementMode) string {
	if m == v1.EnforcementMode_ENFORCEMENT_MODE_UNSPECIFIED {
		return "policy"
	}
	return strings.ToLower(m.String())
}

func agentRows(t *table, list []*v1.AgentInfo) {
	t.row("AGENT", "STATUS", "MODE", "PARENT", "LAST SEEN", "REASON")
	for _, a := range list {
		parent := agentName(a.GetParent())
		if parent == "" {
			parent = "-"
		}
		t.row(agentName(a.GetAgent()), statusName(a.GetStatus()), modeName(a.GetModeOverride()), parent,
			stamp(a.GetLastSeen()), a.GetStatusReason())
	}
}

func newAgentListCmd(g *globals) *cobra.Command {
	var org, team, st string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List registered agents",
		Example: "  aasm agent list\n  aasm agent list --org acme --team eng --status suspended -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &v1.ListAgentsRequest{OrgId: org, TeamId: team}
			if st != "" {
				v, ok := v1.AgentStatus_value["AGENT_STATUS_"+strings.ToUpper(st)]
				if !ok || v == 0 {
					return fmt.Errorf("--status %q: use active, suspended, killed or stale", st)
				}
				req.Status = v1.AgentStatus(v)
			}
			return g.callAgents(cmd.Context(), func(ctx context.Context, c v1.AgentLifecycleServiceClient) error {
				resp, err := c.ListAgents(ctx, req)
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { agentRows(t, resp.GetAgents()) })
			})
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "only agents of this organisation")
	cmd.Flags().StringVar(&team, "team", "", "only agents of this team")
	cmd.Flags().StringVar(&st, "status", "", "only agents in this status: active, suspended, killed or stale")
	return cmd
}

// checkAgentArg validates an org/team/agent argument before dialling.
func checkAgentArg(s string) error {
	if _, err := gateway.ParseAgentPath("agent", s); err != nil {
		return fmt.Errorf("%w (e.g. acme/eng/coder-1)", err)
	}
	return nil
}

func newAgentInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect ORG/TEAM/AGENT",
		Aliases: []string{"get", "show"},
		Short:   "Show one agent: status, mode override, delegation, labels, liveness",
		Example: "  aasm agent inspect acme/eng/coder-1\n  aasm agent inspect acme/eng/coder-1 -o yaml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgentArg(args[0]); err != nil {
				return err
			}
			return g.callAgents(cmd.Context(), func(ctx context.Context, c v1.AgentLifecycleServiceClient) error {
				a, err := c.GetAgent(ctx, &v1.GetAgentRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.print(a, func(t *table) { inspectRows(t, a) })
			})
		},
	}
}

func inspectRows(t *table, a *v1.AgentInfo) {
	parent := agentName(a.GetParent())
	if parent == "" {
		parent = "- (root agent)"
	}
	t.row("Agent:", agentName(a.GetAgent()))
	t.row("Status:", statusName(a.GetStatus()))
	t.row("Reason:", a.GetStatusReason())
	mode := modeName(a.GetModeOverride())
	if mode == "policy" {
		mode = "policy (no override)"
	} else {
		mode += " (operator override)"
	}
	t.row("Enforcement mode:", mode)
	t.row("Parent:", parent)
	t.row("Depth:", fmt.Sprint(a.GetDepth()))
	t.row("Registered:", stamp(a.GetRegisteredAt()))
	t.row("Last seen:", stamp(a.GetLastSeen()))
	labels := a.GetLabels()
	for i, k := range slices.Sorted(maps.Keys(labels)) {
		head := ""
		if i == 0 {
			head = "Labels:"
		}
		t.row(head, k+"="+labels[k])
	}
}

func newAgentStatusCmd(g *globals, verb, short string, rpc func(v1.AgentLifecycleServiceClient) func(context.Context, *v1.AgentControlRequest) (*v1.AgentInfo, error)) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:     verb + " ORG/TEAM/AGENT",
		Short:   short,
		Example: fmt.Sprintf("  aasm agent %s acme/eng/coder-1 --reason \"ticket SEC-42\"", verb),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgentArg(args[0]); err != nil {
				return err
			}
			return g.callAgents(cmd.Context(), func(ctx context.Context, c v1.AgentLifecycleServiceClient) error {
				a, err := rpc(c)(ctx, &v1.AgentControlRequest{Id: args[0], Reason: reason})
				if err != nil {
					return err
				}
				return g.print(a, func(t *table) { agentRows(t, []*v1.AgentInfo{a}) })
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log and the agent's runtime")
	return cmd
}

func newAgentModeCmd(g *globals) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "mode ORG/TEAM/AGENT enforce|observe|disabled|policy",
		Short: "Override the policy's enforcement mode for one agent",
		Long: `mode sets the enforcement mode of one agent, whatever its policy documents say:

  enforce   decisions apply; documents in observe mode are enforced too
  observe   every action is decided and audited with the would-be decision,
            then allowed (for rolling out a policy on a live agent)
  disabled  every action is allowed and audited as such
  policy    remove the override: the documents' own modes apply again

A suspended or killed agent stays denied in every mode.`,
		Example: "  aasm agent mode acme/eng/coder-1 observe --reason \"rollout of v42\"\n  aasm agent mode acme/eng/coder-1 policy",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAgentArg(args[0]); err != nil {
				return err
			}
			var m v1.EnforcementMode
			switch args[1] {
			case "enforce":
				m = v1.EnforcementMode_ENFORCE
			case "observe":
				m = v1.EnforcementMode_OBSERVE
			case "disabled":
				m = v1.EnforcementMode_DISABLED
			case "policy":
				m = v1.EnforcementMode_ENFORCEMENT_MODE_UNSPECIFIED
			default:
				return fmt.Errorf("mode %q: use enforce, observe, disabled, or policy to remove the override", args[1])
			}
			return g.callAgents(cmd.Context(), func(ctx context.Context, c v1.AgentLifecycleServiceClient) error {
				a, err := c.SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: args[0], Mode: m, Reason: reason})
				if err != nil {
					return err
				}
				return g.print(a, func(t *table) { agentRows(t, []*v1.AgentInfo{a}) })
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}
