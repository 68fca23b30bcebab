package main

import (
	"context"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func newXDSCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Inspect the xDS control plane that programs Envoy sidecars and gRPC agents",
		Long: `xds shows what the gateway's xDS control plane serves. Each node is an agent's
Envoy sidecar (flavour envoy) or proxyless gRPC client (flavour grpc), with
node id org/team/agent.`,
		Example: `  aasm xds status
  aasm xds status --node acme/research/researcher-1
  aasm xds status -o json`,
	}
	cmd.AddCommand(newXDSStatusCmd(g))
	return cmd
}

func newXDSStatusCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each node's configuration version and its last ACK and NACK",
		Long: `status lists every node the control plane knows (connected, or registered
agents it has prepared a snapshot for): the version it should run and, per
resource type, the version it last accepted (ACK) and the last one it
rejected (NACK) with the node's error. Exit status 1 means at least one
connected node rejects the version it should run: its previous version keeps
serving and the gateway retries with a growing delay; read the error, fix the
policy (or report a bug), and the next version goes out at once.`,
		Example: `  aasm xds status
  aasm xds status --node acme/research/researcher-1 -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx := cmd.Context()
			if g.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, g.timeout)
				defer cancel()
			}
			st, err := v1.NewXdsServiceClient(conn).GetXdsStatus(ctx, &v1.GetXdsStatusRequest{NodeId: node})
			if err != nil {
				return err
			}
			if err := g.print(st, func(t *table) { xdsRows(t, st) }); err != nil {
				return err
			}
			if xdsRejecting(st) {
				return exitCode(exitDeny)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only this node id (org/team/agent)")
	return cmd
}

// xdsRows renders one row per node and resource type.
func xdsRows(t *table, st *v1.XdsStatus) {
	t.row("NODE", "FLAVOUR", "CONNECTED", "VERSION", "TYPE", "ACKED", "ACK AT", "NACKED", "NACK AT", "NACK ERROR")
	for _, n := range st.GetNodes() {
		conn := "no"
		if n.GetConnected() {
			conn = "yes"
		}
		if len(n.GetTypes()) == 0 {
			t.row(n.GetNodeId(), n.GetFlavour(), conn, n.GetVersion(), "-", "-", "-", "-", "-", "-")
			continue
		}
		for _, ts := range n.GetTypes() {
			t.row(n.GetNodeId(), n.GetFlavour(), conn, n.GetVersion(), ts.GetType(),
				xdsDash(ts.GetAckVersion()), stamp(ts.GetAckAt()), xdsDash(ts.GetNackVersion()), stamp(ts.GetNackAt()), xdsDash(oneLine(ts.GetNackError())))
		}
	}
}

// xdsRejecting reports whether a connected node's last answer for some type
// is a NACK of its current version.
func xdsRejecting(st *v1.XdsStatus) bool {
	for _, n := range st.GetNodes() {
		if !n.GetConnected() {
			continue
		}
		for _, ts := range n.GetTypes() {
			if ts.GetNackVersion() == n.GetVersion() && ts.GetAckVersion() != n.GetVersion() &&
				(ts.GetAckAt() == nil || ts.GetNackAt().AsTime().After(ts.GetAckAt().AsTime())) {
				return true
			}
		}
	}
	return false
}

func xdsDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
