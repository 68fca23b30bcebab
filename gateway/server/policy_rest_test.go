package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// restCall sends a JSON request and decodes the answer.
func restCall(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminDo(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: not JSON (%d): %s", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

func TestRESTPolicyLifecycleAndTopology(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	code, active := restCall(t, "GET", g.base+"/v1/policies/active", "")
	if code != 200 || active["active"] != true || !strings.HasPrefix(active["author"].(string), "file:") {
		t.Fatalf("GET /v1/policies/active: %d %v", code, active)
	}
	v0 := active["version"].(string)

	doc, _ := json.Marshal(map[string]any{"message": "block wikipedia", "author": "rest-operator", "documents": []map[string]string{{"name": "block.yaml", "yaml": blockWikipedia}}})
	code, applied := restCall(t, "POST", g.base+"/v1/policies:apply", string(doc))
	if code != 200 || applied["author"] != "rest-operator" || applied["message"] != "block wikipedia" || applied["version"] == v0 {
		t.Fatalf("POST /v1/policies:apply: %d %v", code, applied)
	}
	if got := g.srv.Core().Snapshot().Version(); got != applied["version"] {
		t.Fatalf("serving %s after apply, want %s", got, applied["version"])
	}

	// An invalid policy: 400 naming file:line:column; nothing stored.
	bad, _ := json.Marshal(map[string]any{"documents": []map[string]string{{"name": "bad.yaml", "yaml": strings.Replace(blockWikipedia, "decision: deny", "decision: maybe", 1)}}})
	code, rej := restCall(t, "POST", g.base+"/v1/policies:apply", string(bad))
	if code != 400 || !strings.Contains(rej["message"].(string), "bad.yaml:12:17: spec.rules[0].decision") || !strings.Contains(rej["message"].(string), "nothing stored") {
		t.Fatalf("invalid apply: %d %v", code, rej)
	}
	code, list := restCall(t, "GET", g.base+"/v1/policies", "")
	if code != 200 || len(list["versions"].([]any)) != 2 {
		t.Fatalf("GET /v1/policies: %d %v", code, list)
	}

	// Simulate the blocking policy over traffic recorded under the first one.
	if _, m := postJSON(t, g.base+"/v1/actions:check", `{"agent":{"org_id":"acme","team_id":"research","agent_id":"researcher-1"},"network_call":{"host":"en.wikipedia.org","port":443}}`); m["decision"] != "DENY" {
		t.Fatalf("check under the blocking policy: %v", m)
	}
	var examples []map[string]string
	for _, d := range active["documents"].([]any) {
		m := d.(map[string]any)
		examples = append(examples, map[string]string{"name": m["name"].(string), "yaml": m["yaml"].(string)})
	}
	candidate, _ := json.Marshal(map[string]any{"documents": examples, "hours": 1})
	code, sim := restCall(t, "POST", g.base+"/v1/policies:simulate", string(candidate))
	if code != 200 || sim["replayed"] != "1" || sim["changed"] != "1" || sim["changes"].([]any)[0].(map[string]any)["simulated"] != "ALLOW" {
		t.Fatalf("POST /v1/policies:simulate: %d %v", code, sim)
	}

	code, rb := restCall(t, "POST", g.base+"/v1/policies:rollback", `{"version":"`+v0+`","message":"undo"}`)
	if code != 200 || rb["version"] != v0 || g.srv.Core().Snapshot().Version() != v0 {
		t.Fatalf("POST /v1/policies:rollback: %d %v", code, rb)
	}
	code, nf := restCall(t, "POST", g.base+"/v1/policies:rollback", `{"version":"0123456789ab"}`)
	if code != 404 {
		t.Fatalf("rollback to an unknown version: %d %v", code, nf)
	}
	// Apply and rollback are in the audit log as governance records.
	if n := countEvents(t, g.srv.Store(), storage.EventGovernance); n < 2 {
		t.Fatalf("%d governance records, want the apply and the rollback", n)
	}

	// A registered delegate of the researcher joins the tree from the registry.
	ctx := context.Background()
	parent := action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	for _, a := range []*storage.Agent{
		{ID: parent, Status: storage.AgentActive},
		{ID: action.AgentID{Org: "acme", Team: "research", Agent: "reader-1"}, Parent: parent, Depth: 1, Status: storage.AgentActive},
	} {
		if err := g.srv.Store().PutAgent(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	code, topo := restCall(t, "GET", g.base+"/v1/topology?hours=1&org_id=acme", "")
	if code != 200 || len(topo["nodes"].([]any)) != 2 || len(topo["edges"].([]any)) != 1 {
		t.Fatalf("GET /v1/topology: %d %v", code, topo)
	}
	reader := topo["nodes"].([]any)[0].(map[string]any)
	if reader["status"] != "active" || reader["depth"] != float64(1) || reader["parent"].(map[string]any)["agent_id"] != "researcher-1" {
		t.Fatalf("registered delegate: %v", reader)
	}
	edge := topo["edges"].([]any)[0].(map[string]any)
	if edge["kind"] != "host" || edge["to"] != "en.wikipedia.org" || edge["denied"] != "1" {
		t.Fatalf("observed edge: %v", edge)
	}
	if code, _ := restCall(t, "GET", g.base+"/v1/topology?hours=-1", ""); code != 400 {
		t.Fatalf("GET /v1/topology?hours=-1: %d", code)
	}
}
