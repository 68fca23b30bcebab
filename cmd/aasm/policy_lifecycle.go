package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// lifecycleCmds are the policy version commands: apply, list, history, get,
// diff, rollback and simulate.
func lifecycleCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newPolicyApplyCmd(g), newPolicyListCmd(g, false), newPolicyListCmd(g, true),
		newPolicyGetCmd(g), newPolicyDiffCmd(g), newPolicyRollbackCmd(g), newPolicySimulateCmd(g)}
}

// defaultAuthor names the operator in the version history.
func defaultAuthor() string {
	if a := os.Getenv("AA_AUTHOR"); a != "" {
		return a
	}
	user := os.Getenv("USER")
	if user == "" {
		user = "unknown"
	}
	if h, err := os.Hostname(); err == nil {
		return user + "@" + h
	}
	return user
}

func newPolicyApplyCmd(g *globals) *cobra.Command {
	var message, author string
	cmd := &cobra.Command{
		Use:   "apply PATH...",
		Short: "Store policy files as a new version and activate it on every replica",
		Long: `apply sends the documents in the files and directories given (*.yaml and
*.yml directly inside a directory) to the gateway, which validates them, stores
them as a new version with who, when and why, activates it and tells every
replica. An invalid policy is rejected with every problem as
file:line:column and nothing is stored.

Applying content equal to a stored version activates that version again.`,
		Example: `  aasm policy apply examples/policies -m "allow wikipedia for research"
  aasm policy apply team.yaml agent.yaml --author alice`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			docs, err := readDocuments(paths)
			if err != nil {
				return err
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				info, err := c.policy.ApplyPolicy(ctx, &v1.ApplyPolicyRequest{Documents: docs, Message: message, Author: author})
				if err != nil {
					return err
				}
				return g.print(info, func(t *table) { versionRows(t, info) })
			})
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", "why, recorded in the history")
	cmd.Flags().StringVar(&author, "author", defaultAuthor(), "who, recorded in the history (env AA_AUTHOR)")
	return cmd
}

func newPolicyListCmd(g *globals, history bool) *cobra.Command {
	var limit int32
	use, short, example := "list", "List stored policy versions, newest first", "  aasm policy list\n  aasm policy list --limit 5 -o json"
	if history {
		use, short, example = "history", "Show who stored and activated each version, and why", "  aasm policy history --limit 20"
	}
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.policy.ListPolicyVersions(ctx, &v1.ListPolicyVersionsRequest{Limit: limit})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) {
					if history {
						t.row("VERSION", "ACTIVE", "CREATED", "LAST ACTIVATED", "AUTHOR", "MESSAGE")
					} else {
						t.row("VERSION", "ACTIVE", "CREATED", "AUTHOR")
					}
					for _, v := range resp.GetVersions() {
						active := "no"
						if v.GetActive() {
							active = "yes"
						}
						if history {
							t.row(v.GetVersion(), active, stamp(v.GetCreatedAt()), stamp(v.GetActivatedAt()), v.GetAuthor(), oneLine(v.GetMessage()))
						} else {
							t.row(v.GetVersion(), active, stamp(v.GetCreatedAt()), v.GetAuthor())
						}
					}
				})
			})
		},
	}
	cmd.Flags().Int32Var(&limit, "limit", 0, fmt.Sprintf("how many versions (default %d, at most %d)", gateway.DefaultHistoryLimit, gateway.MaxHistoryLimit))
	return cmd
}

func newPolicyGetCmd(g *globals) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "get [VERSION]",
		Short: "Show a stored version and its documents (the active one by default)",
		Example: `  aasm policy get
  aasm policy get 3f2a9c1b7d4e --to /tmp/policy-3f2a`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			version := "active"
			if len(args) == 1 {
				version = args[0]
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				info, err := c.policy.GetPolicy(ctx, &v1.GetPolicyRequest{Version: version})
				if err != nil {
					return err
				}
				if to != "" {
					return writeDocuments(g, to, info)
				}
				if err := g.print(info, func(t *table) { versionRows(t, info) }); err != nil {
					return err
				}
				if g.output == "table" || g.output == "" {
					for _, d := range info.GetDocuments() {
						fmt.Fprintf(g.out, "\n# ---- %s\n%s", d.GetName(), d.GetYaml())
						if !strings.HasSuffix(d.GetYaml(), "\n") {
							fmt.Fprintln(g.out)
						}
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "write the documents as files into this directory instead of printing them")
	return cmd
}

func newPolicyRollbackCmd(g *globals) *cobra.Command {
	var message, author string
	cmd := &cobra.Command{
		Use:   "rollback VERSION",
		Short: "Activate an earlier stored version on every replica",
		Long: `rollback makes a stored version the active one again. The version's
documents are compiled first; a version this gateway cannot compile is refused
and nothing changes.`,
		Example: "  aasm policy history\n  aasm policy rollback 3f2a9c1b7d4e -m \"wikipedia block broke research\"",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				info, err := c.policy.RollbackPolicy(ctx, &v1.RollbackPolicyRequest{Version: args[0], Message: message, Author: author})
				if err != nil {
					return err
				}
				return g.print(info, func(t *table) { versionRows(t, info) })
			})
		},
	}
	cmd.Flags().StringVarP(&message, "message", "m", "", "why, recorded in the audit log")
	cmd.Flags().StringVar(&author, "author", defaultAuthor(), "who, recorded in the audit log (env AA_AUTHOR)")
	return cmd
}

func newPolicySimulateCmd(g *globals) *cobra.Command {
	var hours, limit int32
	cmd := &cobra.Command{
		Use:   "simulate PATH...",
		Short: "Replay recorded actions against candidate policy files and show what would change",
		Long: `simulate sends candidate documents to the gateway, which replays the
decisions recorded in its audit log over the last --hours against them. It
prints the decisions counted before and after, then each action whose decision
would change. Nothing is stored and no budget is spent.

The replay sees what the audit log keeps: the normalised action with tool
arguments already redacted, without agent labels, prompts or bodies.
Decisions made after policy evaluation (budgets, rate limits, credential
scanning, approvals, suspended agents) are assumed to repeat when the
candidate lets the action reach them.`,
		Example: "  aasm policy simulate ./candidate --hours 48\n  aasm policy simulate team.yaml -o json",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, paths []string) error {
			docs, err := readDocuments(paths)
			if err != nil {
				return err
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.policy.SimulatePolicy(ctx, &v1.SimulatePolicyRequest{Documents: docs, Hours: hours, Limit: limit})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { simulationRows(t, resp) })
			})
		},
	}
	cmd.Flags().Int32Var(&hours, "hours", 0, fmt.Sprintf("hours of audit history to replay (default %d)", gateway.DefaultSimulateHours))
	cmd.Flags().Int32Var(&limit, "limit", 0, fmt.Sprintf("changed actions to list (default %d)", gateway.DefaultSimulateChanges))
	return cmd
}

func simulationRows(t *table, resp *v1.SimulatePolicyResponse) {
	t.row("DECISION", "RECORDED", "SIMULATED")
	names := map[string]bool{}
	for k := range resp.GetRecordedCounts() {
		names[k] = true
	}
	for k := range resp.GetSimulatedCounts() {
		names[k] = true
	}
	var order []string
	for _, d := range []v1.Decision{v1.Decision_ALLOW, v1.Decision_DENY, v1.Decision_PENDING, v1.Decision_REDACT} {
		if names[d.String()] {
			order = append(order, d.String())
			delete(names, d.String())
		}
	}
	rest := make([]string, 0, len(names))
	for k := range names {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	for _, k := range append(order, rest...) {
		t.row(k, fmt.Sprint(resp.GetRecordedCounts()[k]), fmt.Sprint(resp.GetSimulatedCounts()[k]))
	}
	t.row("total", fmt.Sprint(resp.GetReplayed()), fmt.Sprint(resp.GetReplayed()))
	t.row("")
	t.row("replayed from the audit log: normalised actions with tool arguments as recorded (redacted); no agent labels, prompts or bodies")
	if resp.GetTruncated() {
		t.row("the window held more decisions than one simulation replays: the oldest were skipped (narrow --hours)")
	}
	t.row("")
	listed := len(resp.GetChanges())
	if resp.GetChanged() == 0 {
		t.row("no decision would change")
		return
	}
	t.row(fmt.Sprintf("%d decision(s) would change (%d listed):", resp.GetChanged(), listed))
	t.row("DECISION ID", "AGENT", "ACTION", "RECORDED", "SIMULATED", "RULE")
	for _, ch := range resp.GetChanges() {
		a := ch.GetAgent()
		t.row(ch.GetDecisionId(), a.GetOrgId()+"/"+a.GetTeamId()+"/"+a.GetAgentId(), ch.GetSummary(),
			ch.GetRecorded().String(), ch.GetSimulated().String(), ch.GetSimulatedRuleId())
	}
}

func versionRows(t *table, info *v1.PolicyVersionInfo) {
	t.row("VERSION", info.GetVersion())
	t.row("ACTIVE", fmt.Sprint(info.GetActive()))
	t.row("AUTHOR", info.GetAuthor())
	t.row("MESSAGE", oneLine(info.GetMessage()))
	t.row("CREATED", stamp(info.GetCreatedAt()))
	t.row("ACTIVATED", stamp(info.GetActivatedAt()))
	names := make([]string, 0, len(info.GetDocuments()))
	for _, d := range info.GetDocuments() {
		names = append(names, d.GetName())
	}
	t.row("DOCUMENTS", strings.Join(names, ", "))
}

func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(strings.TrimSpace(s), "\n", " ")
	if s == "" {
		return "-"
	}
	return s
}

// readDocuments reads policy files, and the *.yaml / *.yml files directly
// inside directories, named by file name (which must be unique).
func readDocuments(paths []string) ([]*v1.PolicyDocumentSource, error) {
	var docs []*v1.PolicyDocumentSource
	seen := map[string]string{}
	for _, p := range paths {
		files, err := policyFiles(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			name := filepath.Base(f)
			if prev, ok := seen[name]; ok {
				return nil, fmt.Errorf("read policy: %s and %s have the same file name; documents are stored by file name, rename one", prev, f)
			}
			seen[name] = f
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read policy: %w", err)
			}
			docs = append(docs, &v1.PolicyDocumentSource{Name: name, Yaml: string(b)})
		}
	}
	return docs, nil
}

func policyFiles(p string) ([]string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	if !fi.IsDir() {
		return []string{p}, nil
	}
	var files []string
	entries, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if (ext == ".yaml" || ext == ".yml") && (e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0) {
			files = append(files, filepath.Join(p, e.Name()))
		}
	}
	sort.Strings(files)
	if len(files) == 0 {
		return nil, fmt.Errorf("read policy: %s: no policy documents (*.yaml, *.yml) found", p)
	}
	return files, nil
}

// writeDocuments writes a version's documents into dir.
func writeDocuments(g *globals, dir string, info *v1.PolicyVersionInfo) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	for _, d := range info.GetDocuments() {
		name := filepath.Base(d.GetName())
		if name != d.GetName() || name == "." || name == ".." {
			return fmt.Errorf("write policy: document name %q is not a plain file name", d.GetName())
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(d.GetYaml()), 0o644); err != nil {
			return fmt.Errorf("write policy: %w", err)
		}
	}
	fmt.Fprintf(g.out, "wrote %d document(s) of version %s to %s\n", len(info.GetDocuments()), info.GetVersion(), dir)
	return nil
}
