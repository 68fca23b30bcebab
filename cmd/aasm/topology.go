package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
)

func newTopologyCmd(g *globals) *cobra.Command {
	var org, team string
	var hours int32
	cmd := &cobra.Command{
		Use:   "topology",
		Short: "Show the agent delegation tree, teams and what agents talk to",
		Long: `topology prints the agents as a delegation tree (parent -> child, with
depth and status), team membership, and the edges observed in the audit log
over the last --hours: agent -> host, tool, model or spawned agent, with
counts, denials and when last seen.

-o dot prints a Graphviz graph: aasm topology -o dot | dot -Tsvg > topology.svg`,
		Example: "  aasm topology\n  aasm topology --org acme --team eng --hours 72\n  aasm topology -o dot | dot -Tpng > topology.png",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "dot" && g.output != "table" && g.output != "" && g.output != "json" && g.output != "yaml" {
				return fmt.Errorf("unknown --output %q: use table, json, yaml or dot", g.output)
			}
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
			topo, err := v1.NewTopologyServiceClient(conn).GetTopology(ctx, &v1.GetTopologyRequest{OrgId: org, TeamId: team, Hours: hours})
			if err != nil {
				return err
			}
			if g.output == "dot" {
				_, err := fmt.Fprint(g.out, topologyDot(topo))
				return err
			}
			if g.output == "json" || g.output == "yaml" {
				return g.print(topo, nil)
			}
			_, err = fmt.Fprint(g.out, topologyTree(topo))
			if err != nil {
				return err
			}
			if topo.GetTruncated() {
				fmt.Fprintln(g.out, "\n(truncated: the window held more audit records or edges than one query returns; narrow --hours or filter by --org/--team)")
			}
			if len(topo.GetEdges()) == 0 {
				return nil
			}
			fmt.Fprintln(g.out)
			t := &table{}
			t.row("FROM", "KIND", "TO", "COUNT", "DENIED", "LAST SEEN")
			for _, e := range topo.GetEdges() {
				t.row(agentString(e.GetFrom()), e.GetKind(), e.GetTo(), fmt.Sprint(e.GetCount()), fmt.Sprint(e.GetDenied()), stamp(e.GetLastSeen()))
			}
			return t.write(g)
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "only this organisation")
	cmd.Flags().StringVar(&team, "team", "", "only this team (needs --org)")
	cmd.Flags().Int32Var(&hours, "hours", 0, fmt.Sprintf("hours of audit history for observed edges (default %d)", gateway.DefaultTopologyHours))
	return cmd
}

// topologyTree renders the delegation tree and the teams.
func topologyTree(topo *v1.Topology) string {
	var b strings.Builder
	nodes := map[string]*v1.TopologyNode{}
	children := map[string][]string{}
	for _, n := range topo.GetNodes() {
		nodes[agentString(n.GetAgent())] = n
	}
	var roots []string
	for _, n := range topo.GetNodes() {
		id := agentString(n.GetAgent())
		p := ""
		if n.GetParent() != nil {
			p = agentString(n.GetParent())
		}
		if _, ok := nodes[p]; ok && p != id {
			children[p] = append(children[p], id)
		} else {
			roots = append(roots, id)
		}
	}
	sort.Strings(roots)
	b.WriteString("AGENTS\n")
	if len(roots) == 0 {
		b.WriteString("  (none)\n")
	}
	seen := map[string]bool{}
	var walk func(id, prefix, branch string)
	walk = func(id, prefix, branch string) {
		n := nodes[id]
		label := fmt.Sprintf("%s (%s", id, n.GetStatus())
		if n.GetDepth() > 0 {
			label += fmt.Sprintf(", depth %d", n.GetDepth())
		}
		if n.GetParent() != nil && nodes[agentString(n.GetParent())] == nil {
			label += ", parent " + agentString(n.GetParent())
		}
		b.WriteString(prefix + branch + label + ")\n")
		if seen[id] {
			return
		}
		seen[id] = true
		kids := children[id]
		sort.Strings(kids)
		next := prefix
		switch branch {
		case "├── ":
			next += "│   "
		case "└── ":
			next += "    "
		}
		for i, k := range kids {
			br := "├── "
			if i == len(kids)-1 {
				br = "└── "
			}
			walk(k, next, br)
		}
	}
	for _, r := range roots {
		walk(r, "  ", "")
	}
	b.WriteString("\nTEAMS\n")
	for _, t := range topo.GetTeams() {
		fmt.Fprintf(&b, "  %s/%s: %s\n", t.GetOrgId(), t.GetTeamId(), strings.Join(t.GetAgentIds(), ", "))
	}
	return b.String()
}

// topologyDot renders a Graphviz digraph: agents as boxes clustered by team,
// delegation as bold edges, observed destinations as ellipses.
func topologyDot(topo *v1.Topology) string {
	var b strings.Builder
	b.WriteString("digraph topology {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n")
	for i, t := range topo.GetTeams() {
		fmt.Fprintf(&b, "  subgraph cluster_%d {\n    label=%s;\n", i, dotQuote(t.GetOrgId()+"/"+t.GetTeamId()))
		for _, a := range t.GetAgentIds() {
			id := t.GetOrgId() + "/" + t.GetTeamId() + "/" + a
			status := ""
			for _, n := range topo.GetNodes() {
				if agentString(n.GetAgent()) == id {
					status = n.GetStatus()
				}
			}
			fmt.Fprintf(&b, "    %s [shape=box, label=%s];\n", dotQuote(id), dotQuote(a+"\n"+status))
		}
		b.WriteString("  }\n")
	}
	for _, n := range topo.GetNodes() {
		if n.GetParent() != nil {
			fmt.Fprintf(&b, "  %s -> %s [style=bold, label=\"delegates\"];\n", dotQuote(agentString(n.GetParent())), dotQuote(agentString(n.GetAgent())))
		}
	}
	targets := map[string]bool{}
	for _, e := range topo.GetEdges() {
		if e.GetKind() == gateway.EdgeAgent {
			continue // drawn as delegation when the registry or a spawn says so
		}
		to := e.GetKind() + ":" + e.GetTo()
		if !targets[to] {
			targets[to] = true
			fmt.Fprintf(&b, "  %s [shape=ellipse, label=%s];\n", dotQuote(to), dotQuote(e.GetKind()+"\n"+e.GetTo()))
		}
		label := fmt.Sprint(e.GetCount())
		style := ""
		if e.GetDenied() > 0 {
			label += fmt.Sprintf(" (%d denied)", e.GetDenied())
			if e.GetDenied() == e.GetCount() {
				style = ", color=red, style=dashed"
			}
		}
		fmt.Fprintf(&b, "  %s -> %s [label=%s%s];\n", dotQuote(agentString(e.GetFrom())), dotQuote(to), dotQuote(label), style)
	}
	b.WriteString("}\n")
	return b.String()
}

// dotQuote quotes a DOT identifier.
func dotQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}
