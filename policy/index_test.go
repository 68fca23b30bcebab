package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
)

// TestIndexesAgreeWithFullScan generates random rule sets and checks that
// the indexed evaluation decides exactly like evaluating every rule in order.
func TestIndexesAgreeWithFullScan(t *testing.T) {
	names := []string{"db.prod.internal", "*.prod.internal", "*.internal", "api.*", "*", "x*", "API.Example.com", "*.example.com", "**.com", "db_*", "db_query", "a.b.c.d"}
	resources := []string{"/admin/**", "/admin/users", "/a/*/b", "**/.env", "/a/**", "/a/b/**/c", "/x*", "/admin"}
	kinds := []string{"tool_call", "network_call", "file_operation"}
	decisions := []string{"allow", "deny", "pending", "redact"}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(l []string) string { return l[rng.IntN(len(l))] }

	actionNames := []string{"db.prod.internal", "x.db.prod.internal", "a.internal", "api.example.com", "API.EXAMPLE.COM", "x", "db_query", "db_other", "a.b.c.d", "com"}
	actionPaths := []string{"/admin", "/admin/users", "/admin/users/1", "/a/x/b", "/a/b/c", "/a/b/x/y/c", "/.env", "/w/.env", "/x1", "/", ""}

	for round := 0; round < 30; round++ {
		var b strings.Builder
		b.WriteString("default: " + []string{"allow", "deny"}[round%2] + "\nrules:\n")
		for i := 0; i < 40; i++ {
			var m []string
			if rng.IntN(4) > 0 {
				m = append(m, "action: "+pick(kinds))
			}
			if rng.IntN(3) > 0 {
				m = append(m, fmt.Sprintf("name: %q", pick(names)))
			}
			if rng.IntN(2) > 0 {
				m = append(m, fmt.Sprintf("resource: %q", pick(resources)))
			}
			fmt.Fprintf(&b, "  - {id: r%d, priority: %d, decision: %s, match: {%s}}\n", i, rng.IntN(5)-2, pick(decisions), strings.Join(m, ", "))
		}
		s := mustCompile(t, mustParse(t, "rand", eng, b.String()))
		for _, n := range actionNames {
			for _, p := range actionPaths {
				for _, a := range []*action.Action{
					{Agent: coder, Kind: action.KindNetworkCall, Time: wednesday, Network: action.NetworkCall{Host: n, Port: 443, Path: p}},
					{Agent: coder, Kind: action.KindFileOperation, Time: wednesday, File: action.FileOperation{Operation: n, Path: p}},
					{Agent: coder, Kind: action.KindToolCall, Time: wednesday, Tool: action.ToolCall{Name: n, TargetURL: p}},
				} {
					in := Input{Action: a}
					got, want := s.evaluate(&in, nil, false), s.evaluate(&in, nil, true)
					if got != want {
						t.Fatalf("round %d, %s %q %q: indexed %s by %s, full scan %s by %s\n%s", round, a.Kind, n, p, got.Decision, got.RuleID, want.Decision, want.RuleID, b.String())
					}
				}
			}
		}
	}
}

func TestDeepResourceFallsBackToFullScan(t *testing.T) {
	var rules strings.Builder
	var deep strings.Builder
	for i := 0; i < maxCandidateLists+5; i++ {
		fmt.Fprintf(&deep, "/d%d", i)
		fmt.Fprintf(&rules, "  - {id: r%d, priority: %d, match: {resource: %q}, decision: allow}\n", i, i, deep.String()+"/**")
	}
	s := mustCompile(t, mustParse(t, "deep", eng, "rules:\n"+rules.String()))
	last := maxCandidateLists + 4
	check(t, s, fileOp(coder, "read", deep.String()+"/file"), expect{action.Allow, fmt.Sprintf("deep/r%d", last)})
	check(t, s, fileOp(coder, "read", "/d0/x"), expect{action.Allow, "deep/r0"})
	check(t, s, fileOp(coder, "read", "/elsewhere"), expect{action.Deny, "deep/default"})
}
