package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the gateway's health, versions, store, replicas and connected nodes",
		Long: `status asks the gateway replica at --addr about itself.

REPLICAS lists this replica and every other one that wrote an audit record in
the last hour (each replica keeps its own audit chain, named by its
--replica-id); an idle replica does not show. RUNTIMES counts the runtime
streams (SDK invalidation subscriptions and agent control streams) open on this
replica, ENVOY NODES the Envoy sidecars with an open xDS stream to it; both are
per replica, not cluster-wide.

Exit status: 0 healthy, 1 unhealthy (no policy serving or the store does not
answer), 3 error (e.g. the gateway cannot be reached).`,
		Example: `  aasm status
  aasm status --addr gw-2.internal:50051 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st *v1.GatewayStatus
			err := g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				var err error
				st, err = c.admin.GetStatus(ctx, &v1.GetStatusRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if err := g.print(st, func(t *table) { statusRows(t, g.addr, st) }); err != nil {
				return err
			}
			if !st.GetHealthy() {
				if g.output == "table" {
					fmt.Fprintln(g.errOut, "aasm: the gateway is unhealthy; its /readyz endpoint and its log say why (no policy loaded, or the store does not answer)")
				}
				return exitCode(exitDeny)
			}
			return nil
		},
	}
}

func statusRows(t *table, addr string, st *v1.GatewayStatus) {
	healthy := "yes"
	if !st.GetHealthy() {
		healthy = "NO"
	}
	counters := st.GetCounters()
	if counters == "" {
		counters = "in the store"
	}
	started := ""
	if st.GetStartedAt() != nil {
		started = st.GetStartedAt().AsTime().UTC().Format(time.RFC3339)
	}
	t.row("GATEWAY", addr)
	t.row("HEALTHY", healthy)
	t.row("VERSION", st.GetVersion())
	t.row("REPLICA", st.GetReplicaId())
	t.row("STARTED", started)
	t.row("POLICY VERSION", st.GetPolicyVersion())
	t.row("STORE", st.GetStore())
	t.row("COUNTERS", counters)
	t.row("AUDIT DURABILITY", st.GetAuditDurability())
	t.row("REPLICAS", fmt.Sprintf("%s (this one, and others with audit records in the last hour)", strings.Join(st.GetReplicas(), ", ")))
	t.row("RUNTIMES", fmt.Sprintf("%d open streams on this replica", st.GetConnectedRuntimes()))
	t.row("ENVOY NODES", fmt.Sprintf("%d connected to this replica", st.GetConnectedEnvoyNodes()))
	if ids := st.GetTokenKeyIds(); len(ids) > 0 {
		keys := ids[0] + " (signs agent tokens)"
		if len(ids) > 1 {
			keys += ", " + strings.Join(ids[1:], ", ") + " (previous: verifies until its tokens expire)"
		}
		t.row("TOKEN KEYS", keys)
	}
	if id := st.GetAuditCheckpointKeyId(); id != "" {
		t.row("CHECKPOINT KEY", id+" (signs the audit chain)")
	}
}
