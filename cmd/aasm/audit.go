package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// auditFilterFlags select audit records.
type auditFilterFlags struct {
	agent, session, trace, kind, decision, event string
	since                                        time.Duration
}

func (f *auditFilterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.agent, "agent", "", "org, org/team or org/team/agent")
	fl.StringVar(&f.session, "session", "", "session id")
	fl.StringVar(&f.trace, "trace", "", "trace id")
	fl.StringVar(&f.kind, "type", "", "action type: llm_call, tool_call, file_operation, network_call, process_exec, agent_spawn, tool_result")
	fl.StringVar(&f.decision, "decision", "", "allow, deny, pending or redact")
	fl.StringVar(&f.event, "event", "", "decision, rejected or governance")
	fl.DurationVar(&f.since, "since", 0, "only records newer than this (e.g. 1h)")
}

func (f *auditFilterFlags) filter() (*v1.AuditFilter, error) {
	out := &v1.AuditFilter{SessionId: f.session, TraceId: f.trace, Event: f.event}
	if f.agent != "" {
		parts := strings.Split(f.agent, "/")
		if len(parts) > 3 || slicesContainsEmpty(parts) {
			return nil, fmt.Errorf("--agent must be org, org/team or org/team/agent (got %q)", f.agent)
		}
		out.OrgId = parts[0]
		if len(parts) > 1 {
			out.TeamId = parts[1]
		}
		if len(parts) > 2 {
			out.AgentId = parts[2]
		}
	}
	if f.kind != "" {
		v, ok := v1.ActionType_value[strings.ToUpper(f.kind)]
		if !ok || v == 0 {
			return nil, fmt.Errorf("--type %q is not an action type (llm_call, tool_call, file_operation, network_call, process_exec, agent_spawn, tool_result)", f.kind)
		}
		out.ActionType = v1.ActionType(v)
	}
	if f.decision != "" {
		v, ok := v1.Decision_value[strings.ToUpper(f.decision)]
		if !ok || v == 0 {
			return nil, fmt.Errorf("--decision %q is not allow, deny, pending or redact", f.decision)
		}
		out.Decision = v1.Decision(v)
	}
	if f.since > 0 {
		out.Since = timestamppb.New(time.Now().Add(-f.since))
	}
	return out, nil
}

func slicesContainsEmpty(s []string) bool {
	for _, p := range s {
		if p == "" {
			return true
		}
	}
	return false
}

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read, follow, export and verify the audit log",
		Example: `  aasm audit list --agent acme/eng --decision deny
  aasm audit tail --agent acme/eng/coder-1
  aasm audit verify
  aasm audit export --since 24h > audit.jsonl`,
	}
	cmd.AddCommand(newAuditListCmd(g), newAuditTailCmd(g), newAuditVerifyCmd(g), newAuditExportCmd(g))
	return cmd
}

func auditRows(t *table, recs []*v1.AuditRecord) {
	t.row("TIME", "AGENT", "TYPE", "DECISION", "RULE", "REASON", "ID")
	for _, r := range recs {
		t.row(r.GetTime().AsTime().Local().Format(time.RFC3339), agentString(r.GetAgent()),
			strings.ToLower(r.GetActionType().String()), r.GetDecision().String(), r.GetRuleId(), clip(r.GetReason(), 60), r.GetId())
	}
}

func agentString(a *v1.AgentId) string {
	return a.GetOrgId() + "/" + a.GetTeamId() + "/" + a.GetAgentId()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}

func newAuditListCmd(g *globals) *cobra.Command {
	var f auditFilterFlags
	var limit int32
	var cursor string
	var asc bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List audit records, newest first",
		Long:  "list prints one page of audit records matching the filters; pass the printed --cursor to get the next page.",
		Example: `  aasm audit list --agent acme/eng/coder-1 --limit 20
  aasm audit list --decision deny --since 1h -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Filter: filter, Limit: limit, Cursor: cursor, Ascending: asc})
				if err != nil {
					return err
				}
				err = g.print(resp, func(t *table) { auditRows(t, resp.GetRecords()) })
				if err == nil && resp.GetNextCursor() != "" && g.output == "table" {
					fmt.Fprintf(g.errOut, "more records: --cursor %s\n", resp.GetNextCursor())
				}
				return err
			})
		},
	}
	f.register(cmd)
	cmd.Flags().Int32Var(&limit, "limit", 50, "records per page (at most 1000)")
	cmd.Flags().StringVar(&cursor, "cursor", "", "continue from a previous page")
	cmd.Flags().BoolVar(&asc, "oldest-first", false, "list oldest first")
	return cmd
}

func newAuditTailCmd(g *globals) *cobra.Command {
	var f auditFilterFlags
	cmd := &cobra.Command{
		Use:     "tail",
		Short:   "Follow decisions as they are recorded",
		Example: "  aasm audit tail --decision deny\n  aasm audit tail -o json | jq .reason",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			stream, err := v1.NewAuditServiceClient(conn).TailAudit(cmd.Context(), &v1.TailAuditRequest{Filter: filter})
			if err != nil {
				return err
			}
			for {
				r, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
						return nil
					}
					return err
				}
				if err := g.printTailRecord(r); err != nil {
					return err
				}
			}
		},
	}
	f.register(cmd)
	return cmd
}

// printTailRecord writes one followed record: a line in table output,
// else the record as JSON or YAML.
func (g *globals) printTailRecord(r *v1.AuditRecord) error {
	if g.output == "table" {
		_, err := fmt.Fprintf(g.out, "%s  %-28s %-14s %-7s %s  %s\n", r.GetTime().AsTime().Local().Format(time.TimeOnly),
			agentString(r.GetAgent()), strings.ToLower(r.GetActionType().String()), r.GetDecision(), r.GetRuleId(), r.GetReason())
		return err
	}
	return g.printStreamed(r)
}

func newAuditVerifyCmd(g *globals) *cobra.Command {
	var chain, file, publicKey, anchorFile string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute every hash of the audit log and report the first broken link",
		Long: `verify asks the gateway to recompute the hash chain of every writer (or the one
named by --chain) from the stored records, and to check the signed checkpoints in it
(--audit-checkpoint-interval): each vouches, with the gateway's checkpoint key, for every
record before it, so a chain rewritten as a whole (every hash recomputed) is caught too.
SIGNED THROUGH is the last checkpoint; later records are linked but not yet signed.
-o json also gives the checkpoint key's id and public key, to keep outside the database.

With --file, verify checks an export (aasm audit export, or - for standard input) on this
machine instead, without a gateway: give it the public key kept from -o json with
--public-key, so that checkpoints signed by any other key fail. Export whole chains (no
--agent, --decision or other record filters; --since is fine): a chain is verified from its
first exported record, and a record left out is a sequence gap.

--anchors FILE takes the output of an earlier verify -o json, kept where the database's
administrators cannot write, and checks that every chain still holds the head it had
then: a chain cut short, rewritten as a whole or deleted fails even if it was re-signed.

Exit status: 0 intact, 1 a record was changed, removed or inserted, 3 error.`,
		Example: "  aasm audit verify\n  aasm audit verify --chain gateway-0\n" +
			"  aasm audit verify -o json | jq -r .checkpoint_public_key > checkpoint.pub\n" +
			"  aasm audit export --since 720h > audit.jsonl\n  aasm audit verify --file audit.jsonl --public-key @checkpoint.pub\n" +
			"  aasm audit verify -o json > /archive/heads-$(date +%F).json\n  aasm audit verify --anchors /archive/heads-2026-11-01.json",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var anchors map[string][]storage.ChainHead
			var wire []*v1.ChainAnchor
			if anchorFile != "" {
				var notes []string
				var err error
				if anchors, wire, notes, err = readAnchors(anchorFile); err != nil {
					return err
				}
				for _, n := range notes {
					fmt.Fprintln(g.errOut, n)
				}
			}
			if file == "" {
				if publicKey != "" {
					return fmt.Errorf("--public-key applies to --file; the gateway judges its own log with its key")
				}
				return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
					resp, err := c.audit.VerifyAudit(ctx, &v1.VerifyAuditRequest{Chain: chain, Anchors: wire})
					if err != nil {
						return err
					}
					return g.printVerify(resp)
				})
			}
			var pub []byte
			if publicKey != "" {
				var err error
				if pub, err = parsePublicKey(publicKey); err != nil {
					return err
				}
			}
			in := io.Reader(cmd.InOrStdin())
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("open export: %w", err)
				}
				defer f.Close()
				in = f
			}
			resp, notes, err := verifyExport(in, pub, anchors)
			if err != nil {
				return err
			}
			if chain != "" {
				resp.Chains = slices.DeleteFunc(resp.Chains, func(c *v1.ChainReport) bool { return c.GetChain() != chain })
				if len(resp.Chains) == 0 {
					return fmt.Errorf("the export holds no records of chain %q", chain)
				}
				resp.Ok = !slices.ContainsFunc(resp.Chains, func(c *v1.ChainReport) bool { return !c.GetOk() })
			}
			for _, n := range notes {
				fmt.Fprintln(g.errOut, n)
			}
			return g.printVerify(resp)
		},
	}
	cmd.Flags().StringVar(&chain, "chain", "", "verify only this chain (default: all)")
	cmd.Flags().StringVar(&file, "file", "", "verify an export (JSON Lines from aasm audit export; - for standard input) here instead of asking the gateway")
	cmd.Flags().StringVar(&anchorFile, "anchors", "", "an earlier aasm audit verify -o json: every chain must still hold the head it had then")
	cmd.Flags().StringVar(&publicKey, "public-key", "", "with --file: the gateway's checkpoint public key (base64, checkpoint_public_key of verify -o json), or @FILE holding it")
	return cmd
}

// printVerify prints a verification result and turns a broken chain into
// exit status 1.
func (g *globals) printVerify(resp *v1.VerifyAuditResponse) error {
	err := g.print(resp, func(t *table) {
		t.row("CHAIN", "RECORDS", "INTACT", "SIGNED THROUGH", "FIRST BAD SEQ", "PROBLEM")
		for _, c := range resp.GetChains() {
			bad, signed := "", "-"
			if !c.GetOk() {
				bad = fmt.Sprint(c.GetFirstBadSeq())
			}
			if c.GetCheckpoints() > 0 {
				signed = fmt.Sprint(c.GetLastCheckpointSeq())
			}
			t.row(c.GetChain(), fmt.Sprint(c.GetRecords()), fmt.Sprint(c.GetOk()), signed, bad, c.GetProblem())
		}
	})
	if err != nil {
		return err
	}
	if !resp.GetOk() {
		return exitCode(exitDeny)
	}
	return nil
}

func newAuditExportCmd(g *globals) *cobra.Command {
	var f auditFilterFlags
	cmd := &cobra.Command{
		Use:     "export",
		Short:   "Write matching records as JSON Lines, oldest first",
		Example: "  aasm audit export --since 24h > audit.jsonl\n  aasm audit export --agent acme/eng | gzip > eng.jsonl.gz",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			g.timeout = 0 // an export takes as long as the log is big; Ctrl-C stops it
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				cursor := ""
				n := 0
				for {
					resp, err := c.audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Filter: filter, Limit: 1000, Cursor: cursor, Ascending: true})
					if err != nil {
						return err
					}
					for _, r := range resp.GetRecords() {
						b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(r)
						if err != nil {
							return err
						}
						fmt.Fprintln(g.out, string(b))
						n++
					}
					if cursor = resp.GetNextCursor(); cursor == "" {
						fmt.Fprintf(g.errOut, "exported %d record(s)\n", n)
						return nil
					}
				}
			})
		},
	}
	f.register(cmd)
	return cmd
}
