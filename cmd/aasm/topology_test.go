package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

func TestTopologyCLI(t *testing.T) {
	addr := servertest.Start(t, "../../examples/policies", servertest.AgentAuthOff)
	a := func(args ...string) []string { return append([]string{"--addr", addr}, args...) }
	if out := mustBin(t, 0, a("topology")...); !strings.Contains(out, "(none)") {
		t.Fatalf("empty topology:\n%s", out)
	}
	// Traffic: research reads the web and calls a model; a coder delegates
	// to a helper, which uses a tool.
	r := "acme/research/researcher-1"
	mustBin(t, exitAllow, a("check", "--agent", r, "--host", "en.wikipedia.org")...)
	mustBin(t, exitAllow, a("check", "--agent", r, "--host", "en.wikipedia.org", "--path", "/wiki/Go")...)
	mustBin(t, exitDeny, a("check", "--agent", r, "--host", "evil.example.com")...)
	mustBin(t, exitAllow, a("check", "--agent", r, "--tool", "web_search", "--args", `{"q":"go"}`)...)
	runBin(t, a("check", "--agent", r, "--provider", "openai", "--model", "gpt-4o", "--prompt-tokens", "10")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/eng/coder-1", "--tool", "git_status")...)
	runBin(t, a("check", "--agent", "acme/eng/coder-1", "--spawn", "acme/eng/helper-1")...)
	mustBin(t, exitAllow, a("check", "--agent", "acme/eng/helper-1", "--tool", "git_status")...)

	golden(t, "topology.golden", normalize(mustBin(t, 0, a("topology")...), nil))
	golden(t, "topology.dot.golden", normalize(mustBin(t, 0, a("-o", "dot", "topology")...), nil))
	out := mustBin(t, 0, a("-o", "json", "topology", "--org", "acme", "--team", "eng")...)
	golden(t, "topology-eng.json.golden", normalize(canonJSON(t, out), nil))
	var topo struct {
		Nodes []struct {
			Agent  map[string]string `json:"agent"`
			Parent map[string]string `json:"parent"`
			Depth  int               `json:"depth"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &topo); err != nil || len(topo.Nodes) != 2 {
		t.Fatalf("eng topology: %v\n%s", err, out)
	}
	if h := topo.Nodes[1]; h.Agent["agent_id"] != "helper-1" || h.Parent["agent_id"] != "coder-1" || h.Depth != 1 {
		t.Fatalf("helper-1 is not coder-1's child at depth 1: %+v", h)
	}

	code, _, errOut := runBin(t, a("topology", "--team", "eng")...)
	if code != exitError || !strings.Contains(errOut, "team_id: needs org_id") {
		t.Fatalf("team without org: exit %d %s", code, errOut)
	}
	code, _, errOut = runBin(t, a("-o", "svg", "topology")...)
	if code != exitError || !strings.Contains(errOut, "use table, json, yaml or dot") {
		t.Fatalf("bad output: exit %d %s", code, errOut)
	}
}
