package xds

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
)

// writeBenchPolicy writes a global document and, per team (or per agent
// when perAgent), a document allowing 100 destinations: 80 exact hosts on
// 443, 10 wildcards on 443 and 10 plain-HTTP hosts on 80.
func writeBenchPolicy(b testing.TB, dir string, teams, agentsPerTeam int, perAgent bool, salt string) {
	b.Helper()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	write("global.yaml", "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: global}\nspec:\n  scope: {level: global}\n  default: deny\n")
	doc := func(name, scope, unique string) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: %s}\nspec:\n  scope: %s\n  default: deny\n  network:\n    allowlist:\n", name, scope)
		for d := range 100 {
			switch {
			case d < 80:
				fmt.Fprintf(&sb, "      - {host: api-%d.%s%s.example.com, ports: [443]}\n", d, unique, salt)
			case d < 90:
				fmt.Fprintf(&sb, "      - {host: \"*.svc-%d.%s.example.net\", ports: [443]}\n", d, unique)
			default:
				fmt.Fprintf(&sb, "      - {host: plain-%d.%s.example.org, ports: [80]}\n", d, unique)
			}
		}
		return sb.String()
	}
	for t := range teams {
		team := fmt.Sprintf("team-%d", t)
		if !perAgent {
			write(team+".yaml", doc(team, fmt.Sprintf("{level: team, org: acme, team: %s}", team), team))
			continue
		}
		for a := range agentsPerTeam {
			agent := fmt.Sprintf("%s-agent-%d", team, a)
			write(agent+".yaml", doc(agent, fmt.Sprintf("{level: agent, agent: %s}", agent), agent))
		}
	}
}

func benchServer(b *testing.B, src *source, teams, agentsPerTeam int) *Server {
	s := mustNew(b, src, Options{GatewayAddr: "gw:50051", PollInterval: -1})
	s.mu.Lock()
	for t := range teams {
		for a := range agentsPerTeam {
			id := action.AgentID{Org: "acme", Team: fmt.Sprintf("team-%d", t), Agent: fmt.Sprintf("team-%d-agent-%d", t, a)}
			s.nodeLocked(id.String(), id.String(), id, FlavourEnvoy)
		}
	}
	s.mu.Unlock()
	return s
}

// BenchmarkSnapshots computes and publishes the snapshots of 1,000 Envoy
// nodes with 100 destinations each, from scratch: each op is one full pass
// (destinations per agent, resources, Check with ValidateAll and Consistent
// per node, SetSnapshot). "shared" has 10 teams of 100 agents (agents of a
// team share listener, clusters and virtual hosts; route configurations are
// per agent); "distinct" gives every agent its own 100 destinations.
func BenchmarkSnapshots(b *testing.B) {
	for _, tc := range []struct {
		name     string
		perAgent bool
	}{{"shared", false}, {"distinct", true}} {
		b.Run(tc.name+"/agents=1000/destinations=100", func(b *testing.B) {
			dir := b.TempDir()
			writeBenchPolicy(b, dir, 10, 100, tc.perAgent, "")
			src := newSource(b, dir)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				s := benchServer(b, src, 10, 100)
				b.StartTimer()
				n, err := s.update(ctx)
				if err != nil || n != 1000 {
					b.Fatalf("published %d, err %v", n, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/node")
		})
	}
}

// BenchmarkPolicyChangeOneTeam changes the destinations of one team of 100
// agents (out of 1,000) and recomputes: only that team's nodes get a new
// version; the others cost their destination computation and a version
// comparison.
func BenchmarkPolicyChangeOneTeam(b *testing.B) {
	dir := b.TempDir()
	writeBenchPolicy(b, dir, 10, 100, false, "")
	v1 := newSource(b, dir).Snapshot()
	// team-3 gets other hosts.
	var sb strings.Builder
	sb.WriteString("apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: team-3}\nspec:\n  scope: {level: team, org: acme, team: team-3}\n  default: deny\n  network:\n    allowlist:\n")
	for d := range 100 {
		fmt.Fprintf(&sb, "      - {host: changed-%d.example.com, ports: [443]}\n", d)
	}
	if err := os.WriteFile(filepath.Join(dir, "team-3.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	v2 := newSource(b, dir).Snapshot()
	src := &source{}
	src.p.Store(v1)
	s := benchServer(b, src, 10, 100)
	ctx := context.Background()
	if _, err := s.update(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			src.p.Store(v2)
		} else {
			src.p.Store(v1)
		}
		n, err := s.update(ctx)
		if err != nil || n != 100 {
			b.Fatalf("published %d, err %v; want 100 (team-3 only)", n, err)
		}
	}
}
