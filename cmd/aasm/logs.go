package main

import (
	"context"
	"errors"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func newLogsCmd(g *globals) *cobra.Command {
	var f auditFilterFlags
	follow := true
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Follow decisions live, optionally starting with recent ones",
		Long: `logs prints audit records (decisions, rejected requests, governance actions)
as the gateway records them, one line each, until interrupted.

With --since it first prints the matching records of that window, oldest first,
then follows; --follow=false stops after them. The filters combine: --agent
takes an org, org/team or org/team/agent prefix.

logs follows every replica that shares the store with the gateway at --addr.
A record written while logs switches from the recent records to following may
be missed; aasm audit list shows the complete log.

Exit status: 0 when interrupted or done, 3 error.`,
		Example: `  aasm logs
  aasm logs --agent acme/eng --decision deny
  aasm logs --since 15m --kind tool_call
  aasm logs --since 1h --follow=false -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter, err := f.filter()
			if err != nil {
				return err
			}
			if !follow && f.since <= 0 {
				return errors.New("--follow=false prints only past records: add --since (e.g. --since 1h)")
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			audit := v1.NewAuditServiceClient(conn)
			ctx := cmd.Context()
			// Open the tail before reading the past so the two mostly
			// overlap rather than leave a gap; the overlap is skipped by id.
			var tail grpc.ServerStreamingClient[v1.AuditRecord]
			if follow {
				if tail, err = audit.TailAudit(ctx, &v1.TailAuditRequest{Filter: filter}); err != nil {
					return err
				}
			}
			printed := map[string]bool{}
			if f.since > 0 {
				if err := g.printRecent(ctx, audit, filter, printed); err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			for {
				r, err := tail.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || ctx.Err() != nil {
						return nil
					}
					return err
				}
				if printed[r.GetId()] {
					continue
				}
				if err := g.printTailRecord(r); err != nil {
					return err
				}
			}
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&f.kind, "kind", "", "action type, same as --type")
	cmd.Flags().BoolVarP(&follow, "follow", "f", true, "keep printing new records; false stops after the --since window")
	return cmd
}

// printRecent prints the records matching filter, oldest first, noting
// their ids in printed.
func (g *globals) printRecent(ctx context.Context, audit v1.AuditServiceClient, filter *v1.AuditFilter, printed map[string]bool) error {
	cursor := ""
	for {
		cctx, cancel := ctx, context.CancelFunc(func() {})
		if g.timeout > 0 {
			cctx, cancel = context.WithTimeout(ctx, g.timeout)
		}
		resp, err := audit.ListAuditRecords(cctx, &v1.ListAuditRecordsRequest{Filter: filter, Limit: 1000, Cursor: cursor, Ascending: true})
		cancel()
		if err != nil {
			return err
		}
		for _, r := range resp.GetRecords() {
			printed[r.GetId()] = true
			if err := g.printTailRecord(r); err != nil {
				return err
			}
		}
		if cursor = resp.GetNextCursor(); cursor == "" {
			return nil
		}
	}
}
