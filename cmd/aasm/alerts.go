package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func newAlertsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "List and watch the alerts feed, and silence alerts",
		Long: `alerts reads the events operators must act on: budget thresholds and
exhaustion, policy violations, blocked credential leaks, suspended agents,
xDS NACKs, eBPF drops and audit chain breaks. Every replica stores each alert
once; a silence keeps matching alerts out of webhooks (they are still stored
and streamed, marked silenced). See docs/alerts.md.`,
		Example: `  aasm alerts list --severity warning
  aasm alerts watch --kind credential_leak
  aasm alerts silence create --kind policy_violation --agent-prefix acme/eng/ --duration 2h --comment "rollout"`,
	}
	cmd.AddCommand(newAlertsListCmd(g), newAlertsWatchCmd(g), newSilenceCmd(g))
	return cmd
}

// alertFlags are the filters list and watch share.
type alertFlags struct {
	kind, severity, agent string
}

func (f *alertFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.kind, "kind", "", "only this kind (budget_threshold, budget_exhausted, policy_violation, credential_leak, agent_suspended, xds_nack, ebpf_drops, audit_chain_break)")
	cmd.Flags().StringVar(&f.severity, "severity", "", "only this severity or worse: info, warning or critical")
	cmd.Flags().StringVar(&f.agent, "agent", "", "only this org, org/team or org/team/agent")
}

// agentParts splits an org[/team[/agent]] filter.
func agentParts(s string) (org, team, agent string, err error) {
	if s == "" {
		return "", "", "", nil
	}
	p := strings.Split(s, "/")
	if len(p) > 3 || slicesContainEmpty(p) {
		return "", "", "", fmt.Errorf("--agent %q: want org, org/team or org/team/agent", s)
	}
	p = append(p, "", "")
	return p[0], p[1], p[2], nil
}

func slicesContainEmpty(p []string) bool {
	for _, s := range p {
		if s == "" {
			return true
		}
	}
	return false
}

// parseSince reads a duration back from now (1h) or an RFC 3339 time.
func parseSince(s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("--since %q: want a duration back from now (90m, 24h) or an RFC 3339 time", s)
	}
	return timestamppb.New(t), nil
}

func alertAgent(a *v1.Alert) string {
	if a.GetAgent() == nil {
		return "-"
	}
	return a.GetAgent().GetOrgId() + "/" + a.GetAgent().GetTeamId() + "/" + a.GetAgent().GetAgentId()
}

func alertSilenced(a *v1.Alert) string {
	if a.GetSilenced() {
		return "yes"
	}
	return "no"
}

func alertRow(t *table, a *v1.Alert) {
	t.row(stamp(a.GetTime()), a.GetSeverity(), a.GetKind(), alertAgent(a), alertSilenced(a), oneLine(a.GetSummary()))
}

func newAlertsListCmd(g *globals) *cobra.Command {
	var f alertFlags
	var since, cursor string
	var limit int32
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List stored alerts, newest first",
		Long: `list prints one page of stored alerts, newest first. When more match, the
last line gives the --cursor of the next page.`,
		Example: `  aasm alerts list
  aasm alerts list --severity critical --since 24h
  aasm alerts list --agent acme/eng -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			org, team, agent, err := agentParts(f.agent)
			if err != nil {
				return err
			}
			ts, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			return g.withConn(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := v1.NewAlertServiceClient(conn).ListAlerts(ctx, &v1.ListAlertsRequest{Kind: f.kind, Severity: f.severity,
					OrgId: org, TeamId: team, AgentId: agent, Since: ts, PageSize: limit, Cursor: cursor})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) {
					t.row("TIME", "SEVERITY", "KIND", "AGENT", "SILENCED", "SUMMARY")
					for _, a := range resp.GetAlerts() {
						alertRow(t, a)
					}
					if resp.GetNextCursor() != "" {
						t.row("more: --cursor " + resp.GetNextCursor())
					}
				})
			})
		},
	}
	f.bind(cmd)
	cmd.Flags().StringVar(&since, "since", "", "only alerts after this: a duration back from now (24h) or an RFC 3339 time")
	cmd.Flags().Int32Var(&limit, "limit", 50, "page size (at most 1000)")
	cmd.Flags().StringVar(&cursor, "cursor", "", "the cursor printed at the end of the previous page")
	return cmd
}

func newAlertsWatchCmd(g *globals) *cobra.Command {
	var f alertFlags
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print alerts as any replica raises them, until interrupted",
		Long: `watch prints each alert when it is stored, one line each (one JSON object per
line with -o json), silenced ones included. It has no deadline; Ctrl-C ends it.`,
		Example: `  aasm alerts watch
  aasm alerts watch --severity critical -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			org, team, agent, err := agentParts(f.agent)
			if err != nil {
				return err
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			stream, err := v1.NewAlertServiceClient(conn).WatchAlerts(cmd.Context(), &v1.WatchAlertsRequest{Kind: f.kind, Severity: f.severity,
				OrgId: org, TeamId: team, AgentId: agent})
			if err != nil {
				return err
			}
			if _, err := stream.Header(); err != nil {
				return err
			}
			for {
				a, err := stream.Recv()
				if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || cmd.Context().Err() != nil {
					return nil
				}
				if err != nil {
					return err
				}
				if err := printAlertLine(g, a); err != nil {
					return err
				}
			}
		},
	}
	f.bind(cmd)
	return cmd
}

// printAlertLine writes one alert as soon as it arrives.
func printAlertLine(g *globals, a *v1.Alert) error {
	switch g.output {
	case "json":
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
		if err != nil {
			return fmt.Errorf("encode alert: %w", err)
		}
		_, err = fmt.Fprintln(g.out, string(b))
		return err
	case "yaml":
		return g.printStreamed(a)
	case "table", "":
		silenced := ""
		if a.GetSilenced() {
			silenced = " (silenced)"
		}
		_, err := fmt.Fprintf(g.out, "%s  %-8s  %-17s  %s  %s%s\n", stamp(a.GetTime()), a.GetSeverity(), a.GetKind(), alertAgent(a), oneLine(a.GetSummary()), silenced)
		return err
	}
	return fmt.Errorf("unknown --output %q for watch: use table, json or yaml", g.output)
}

func newSilenceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "silence",
		Short: "Keep matching alerts out of webhooks for a while",
		Example: `  aasm alerts silence create --kind xds_nack --duration 30m --comment "envoy upgrade"
  aasm alerts silence list
  aasm alerts silence delete 0b6c6f1e-...`,
	}
	cmd.AddCommand(newSilenceCreateCmd(g), newSilenceListCmd(g), newSilenceDeleteCmd(g))
	return cmd
}

func silenceRows(t *table, ss []*v1.Silence) {
	t.row("ID", "KIND", "SEVERITY", "AGENT PREFIX", "ENDS", "ACTIVE", "BY", "COMMENT")
	for _, s := range ss {
		active := "no"
		if s.GetActive() {
			active = "yes"
		}
		t.row(s.GetId(), xdsDash(s.GetKind()), xdsDash(s.GetSeverity()), xdsDash(s.GetAgentPrefix()), stamp(s.GetEndsAt()), active,
			xdsDash(s.GetCreatedBy()), oneLine(s.GetComment()))
	}
}

func newSilenceCreateCmd(g *globals) *cobra.Command {
	var kind, severity, prefix, until, comment string
	var dur time.Duration
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a silence (at least one matcher, and --duration or --until)",
		Example: `  aasm alerts silence create --kind policy_violation --agent-prefix acme/eng/ --duration 2h --comment "policy rollout"
  aasm alerts silence create --severity info --until 2026-12-01T00:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &v1.CreateSilenceRequest{Kind: kind, Severity: severity, AgentPrefix: prefix, Comment: comment}
			switch {
			case until != "" && dur != 0:
				return errors.New("give --duration or --until, not both")
			case until != "":
				t, err := time.Parse(time.RFC3339, until)
				if err != nil {
					return fmt.Errorf("--until %q: want an RFC 3339 time like 2026-12-01T00:00:00Z", until)
				}
				req.EndsAt = timestamppb.New(t)
			case dur != 0:
				req.Duration = durationpb.New(dur)
			default:
				return errors.New("a silence must end: give --duration (2h) or --until (RFC 3339)")
			}
			return g.withConn(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				s, err := v1.NewAlertServiceClient(conn).CreateSilence(ctx, req)
				if err != nil {
					return err
				}
				return g.print(s, func(t *table) { silenceRows(t, []*v1.Silence{s}) })
			})
		},
	}
	cmd.Flags().StringVar(&kind, "kind", "", "silence this alert kind")
	cmd.Flags().StringVar(&severity, "severity", "", "silence this severity (exactly)")
	cmd.Flags().StringVar(&prefix, "agent-prefix", "", "silence agents whose org/team/agent id starts with this")
	cmd.Flags().DurationVar(&dur, "duration", 0, "how long the silence lasts (at most 90 days)")
	cmd.Flags().StringVar(&until, "until", "", "when the silence ends (RFC 3339)")
	cmd.Flags().StringVar(&comment, "comment", "", "why (shown in silence list and the audit log)")
	return cmd
}

func newSilenceListCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List active silences (--all: expired ones too)",
		Example: "  aasm alerts silence list --all",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withConn(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := v1.NewAlertServiceClient(conn).ListSilences(ctx, &v1.ListSilencesRequest{IncludeExpired: all})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { silenceRows(t, resp.GetSilences()) })
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include expired silences")
	return cmd
}

func newSilenceDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID",
		Short:   "End a silence now (it stays listed with --all)",
		Example: "  aasm alerts silence delete 0b6c6f1e-5a3d-4b7e-9a51-2f0d5c1e8b7a",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withConn(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				s, err := v1.NewAlertServiceClient(conn).DeleteSilence(ctx, &v1.DeleteSilenceRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.print(s, func(t *table) { silenceRows(t, []*v1.Silence{s}) })
			})
		},
	}
}

// withCosts adds "budget costs" to the budget command.
func withCosts(budget *cobra.Command, g *globals) *cobra.Command {
	budget.AddCommand(newBudgetCostsCmd(g))
	return budget
}

func newBudgetCostsCmd(g *globals) *cobra.Command {
	var by, from, to, agentF, model string
	cmd := &cobra.Command{
		Use:   "costs",
		Short: "Show settled LLM spend grouped by org, team, agent, model and/or day",
		Long: `costs sums the cost ledger: every LLM call whose usage was settled
(RecordUsage, or Envoy's ext_proc), by UTC day. Days are inclusive; the
default range is the 30 days ending today.`,
		Example: `  aasm budget costs --by team,day
  aasm budget costs --by agent,model --from 2026-11-01 --to 2026-11-30 --agent acme/eng`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			org, team, agent, err := agentParts(agentF)
			if err != nil {
				return err
			}
			var groups []string
			if by != "" {
				groups = strings.Split(by, ",")
			}
			return g.withConn(cmd.Context(), func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := v1.NewCostServiceClient(conn).GetCosts(ctx, &v1.GetCostsRequest{GroupBy: groups, FromDay: from, ToDay: to,
					OrgId: org, TeamId: team, AgentId: agent, Model: model})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { costRows(t, groups, resp) })
			})
		},
	}
	cmd.Flags().StringVar(&by, "by", "", "comma-separated groupings: org, team, agent, model, day (empty: only the total)")
	cmd.Flags().StringVar(&from, "from", "", "first day, YYYY-MM-DD (default: 29 days before --to)")
	cmd.Flags().StringVar(&to, "to", "", "last day, YYYY-MM-DD (default: today, UTC)")
	cmd.Flags().StringVar(&agentF, "agent", "", "only this org, org/team or org/team/agent")
	cmd.Flags().StringVar(&model, "model", "", "only this model")
	return cmd
}

// costRows renders a column per grouping (team shows org/team, agent shows
// org/team/agent), the sums, and a TOTAL line.
func costRows(t *table, groups []string, resp *v1.GetCostsResponse) {
	var head []string
	for _, g := range groups {
		head = append(head, strings.ToUpper(strings.TrimSpace(g)))
	}
	t.row(append(head, "COST USD", "PROMPT TOKENS", "COMPLETION TOKENS", "REQUESTS")...)
	sums := func(c *v1.CostGroup) []string {
		return []string{fmt.Sprintf("%.6f", c.GetCostUsd()), fmt.Sprint(c.GetPromptTokens()), fmt.Sprint(c.GetCompletionTokens()), fmt.Sprint(c.GetRequests())}
	}
	for _, c := range resp.GetGroups() {
		var cells []string
		for _, g := range groups {
			switch strings.TrimSpace(g) {
			case "org":
				cells = append(cells, c.GetOrgId())
			case "team":
				cells = append(cells, c.GetOrgId()+"/"+c.GetTeamId())
			case "agent":
				cells = append(cells, c.GetOrgId()+"/"+c.GetTeamId()+"/"+c.GetAgentId())
			case "model":
				cells = append(cells, c.GetModel())
			case "day":
				cells = append(cells, c.GetDay())
			}
		}
		t.row(append(cells, sums(c)...)...)
	}
	total := []string{"TOTAL " + resp.GetFromDay() + ".." + resp.GetToDay()}
	if len(groups) == 0 {
		t.rows[0] = append([]string{"RANGE"}, t.rows[0]...)
	}
	for len(total) < len(groups) {
		total = append(total, "-")
	}
	t.row(append(total, sums(resp.GetTotal())...)...)
}
