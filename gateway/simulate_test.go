package gateway

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/storage"
)

// auditPages is an in-memory audit log that pages like a driver.
type auditPages struct {
	recs   []*storage.AuditRecord
	agents []*storage.Agent
}

func (a *auditPages) QueryAudit(_ context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	start := 0
	if q.Cursor != "" {
		start = int(q.Cursor[0] - 'a')
	}
	end := min(start+2, len(a.recs)) // tiny pages exercise the cursor
	page := storage.AuditPage{Records: a.recs[start:end]}
	if end < len(a.recs) {
		page.NextCursor = string(rune('a' + end))
	}
	return page, nil
}

func (a *auditPages) ListAgents(context.Context, storage.AgentFilter) ([]*storage.Agent, error) {
	return a.agents, nil
}

func record(agent string, kind action.Kind, payload string, d action.Decision, rule string) *storage.AuditRecord {
	id := parseAgentID(agent, action.AgentID{})
	return &storage.AuditRecord{ID: agent + rule, Time: time.Unix(1700000000, 0), Event: storage.EventDecision, Agent: id,
		Kind: kind, Payload: []byte(payload), Decision: d, RuleID: rule}
}

func snapshotOf(t *testing.T, body string) *policy.Snapshot {
	t.Helper()
	d, err := policy.Parse("c.yaml", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	s, err := policy.Compile([]*policy.Document{d}, policy.Version([]*policy.Document{d}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSimulatePostPolicyStagesRepeat(t *testing.T) {
	log := &auditPages{recs: []*storage.AuditRecord{
		// Denied by a budget: an allowing candidate still meets the budget.
		record("acme/eng/a", action.KindToolCall, `{"kind":"tool_call","name":"git"}`, action.Deny, "base/budget"),
		// Denied by the policy: an allowing candidate changes it.
		record("acme/eng/a", action.KindToolCall, `{"kind":"tool_call","name":"rm"}`, action.Deny, "old/no-rm"),
		// Approved by a human: only a candidate that still requires approval repeats it.
		record("acme/eng/a", action.KindToolCall, `{"kind":"tool_call","name":"deploy"}`, action.Allow, "approval"),
		// Allowed and still allowed.
		record("acme/eng/a", action.KindNetworkCall, `{"kind":"network_call","host":"example.com","port":443}`, action.Allow, "base/allow"),
		// Records without a kind are not replayed.
		{Event: storage.EventDecision, Payload: []byte(`{}`)},
	}}
	snap := snapshotOf(t, allowAll)
	sim := Simulate(context.Background(), log, snap, time.Time{}, time.Now(), 10)
	resp := sim.Response
	if sim.Err != nil || resp.GetReplayed() != 4 || resp.GetChanged() != 1 || len(resp.GetChanges()) != 1 {
		t.Fatalf("simulation: %+v %v", resp, sim.Err)
	}
	ch := resp.GetChanges()[0]
	if ch.GetSummary() != "tool rm" || ch.GetRecorded() != v1.Decision_DENY || ch.GetSimulated() != v1.Decision_ALLOW || ch.GetSimulatedRuleId() != "base/default" {
		t.Fatalf("change: %+v", ch)
	}
	if resp.GetRecordedCounts()["DENY"] != 2 || resp.GetSimulatedCounts()["DENY"] != 1 || resp.GetSimulatedCounts()["ALLOW"] != 3 {
		t.Fatalf("counts: %v -> %v", resp.GetRecordedCounts(), resp.GetSimulatedCounts())
	}
	// A limit of 0 changes listed still counts them.
	if r := Simulate(context.Background(), log, snap, time.Time{}, time.Now(), 0).Response; r.GetChanged() != 1 || len(r.GetChanges()) != 0 {
		t.Fatalf("limit 0: %+v", r)
	}
}

func TestTopologyJoinsRegistryAndAudit(t *testing.T) {
	src := &auditPages{
		agents: []*storage.Agent{
			{ID: action.AgentID{Org: "acme", Team: "eng", Agent: "lead"}, Status: storage.AgentActive},
			{ID: action.AgentID{Org: "acme", Team: "eng", Agent: "worker"}, Parent: action.AgentID{Org: "acme", Team: "eng", Agent: "lead"}, Depth: 1, Status: storage.AgentSuspended},
		},
		recs: []*storage.AuditRecord{
			record("acme/eng/worker", action.KindAgentSpawn, `{"kind":"agent_spawn","child":"acme/eng/sub"}`, action.Allow, "r"),
			record("acme/eng/worker", action.KindNetworkCall, `{"kind":"network_call","host":"api.github.com"}`, action.Deny, "r"),
			record("acme/eng/worker", action.KindNetworkCall, `{"kind":"network_call","host":"api.github.com"}`, action.Allow, "r"),
			record("acme/eng/worker", action.KindToolCall, `{"kind":"tool_call","target_url":"https://mcp.example.com/x"}`, action.Allow, "r"),
		},
	}
	topo, err := NewTopologyService(src).GetTopology(context.Background(), &v1.GetTopologyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*v1.TopologyNode{}
	for _, n := range topo.GetNodes() {
		nodes[n.GetAgent().GetAgentId()] = n
	}
	if len(nodes) != 3 || nodes["worker"].GetStatus() != "suspended" || nodes["worker"].GetDepth() != 1 {
		t.Fatalf("nodes: %v", topo.GetNodes())
	}
	// The spawned agent is not registered: its parent comes from the spawn,
	// its depth from the registered parent's.
	if sub := nodes["sub"]; sub.GetStatus() != "unregistered" || sub.GetParent().GetAgentId() != "worker" || sub.GetDepth() != 2 {
		t.Fatalf("sub: %v", sub)
	}
	var gh *v1.TopologyEdge
	for _, e := range topo.GetEdges() {
		if e.GetTo() == "api.github.com" {
			gh = e
		}
	}
	if gh == nil || gh.GetCount() != 2 || gh.GetDenied() != 1 || gh.GetKind() != EdgeHost {
		t.Fatalf("edges: %v", topo.GetEdges())
	}
	if len(topo.GetEdges()) != 3 || len(topo.GetTeams()) != 1 || len(topo.GetTeams()[0].GetAgentIds()) != 3 {
		t.Fatalf("edges %d, teams %v", len(topo.GetEdges()), topo.GetTeams())
	}
	if _, err := NewTopologyService(src).GetTopology(context.Background(), &v1.GetTopologyRequest{Hours: 100000}); err == nil {
		t.Fatal("an unbounded window was accepted")
	}
}

// syntheticLog is n recorded decisions of mixed kinds.
func syntheticLog(n int) *auditPages {
	payloads := []struct {
		kind    action.Kind
		payload string
	}{
		{action.KindNetworkCall, `{"kind":"network_call","host":"en.wikipedia.org","port":443,"protocol":"https","method":"GET","path":"/wiki/Go"}`},
		{action.KindToolCall, `{"kind":"tool_call","name":"git_status","args":{"short":true}}`},
		{action.KindLLMCall, `{"kind":"llm_call","provider":"openai","model":"gpt-4o","prompt_tokens":120}`},
		{action.KindNetworkCall, `{"kind":"network_call","host":"evil.example.com","port":443}`},
	}
	agents := []string{"acme/research/researcher-1", "acme/eng/coder-1", "acme/support/bot-1"}
	log := &auditPages{}
	for i := range n {
		p := payloads[i%len(payloads)]
		log.recs = append(log.recs, record(agents[i%len(agents)], p.kind, p.payload, action.Allow, "x/y"))
	}
	return log
}

// pagedLog pages a synthetic log 1000 records at a time, like a driver.
type pagedLog struct{ recs []*storage.AuditRecord }

func (p *pagedLog) QueryAudit(_ context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	start := 0
	if q.Cursor != "" {
		fmt.Sscan(q.Cursor, &start)
	}
	end := min(start+1000, len(p.recs))
	page := storage.AuditPage{Records: p.recs[start:end]}
	if end < len(p.recs) {
		page.NextCursor = fmt.Sprint(end)
	}
	return page, nil
}

func (p *pagedLog) ListAgents(context.Context, storage.AgentFilter) ([]*storage.Agent, error) {
	return nil, nil
}

// BenchmarkSimulate replays 10 000 recorded decisions against the example
// policies; ns/op divided by 10 000 is the cost of one replayed record.
func BenchmarkSimulate(b *testing.B) {
	log := &pagedLog{recs: syntheticLog(10000).recs}
	snap := exampleSnapshot(b)
	b.ReportAllocs()
	for b.Loop() {
		if sim := Simulate(context.Background(), log, snap, time.Time{}, time.Now(), 100); sim.Response.GetReplayed() != 10000 {
			b.Fatal(sim.Response.GetReplayed())
		}
	}
}

// BenchmarkTopology aggregates 10 000 recorded decisions into edges.
func BenchmarkTopology(b *testing.B) {
	svc := NewTopologyService(&pagedLog{recs: syntheticLog(10000).recs})
	b.ReportAllocs()
	for b.Loop() {
		if topo, err := svc.GetTopology(context.Background(), &v1.GetTopologyRequest{}); err != nil || len(topo.GetEdges()) == 0 {
			b.Fatal(err)
		}
	}
}

func TestTopologyKeepsTheMostUsedEdges(t *testing.T) {
	edges := map[edgeKey]*edgeStat{}
	from := action.AgentID{Org: "acme", Team: "eng", Agent: "a"}
	for i := range MaxTopologyEdges + 1 {
		edges[edgeKey{from, EdgeHost, fmt.Sprintf("h%05d", i)}] = &edgeStat{count: int64(i + 1)}
	}
	topo := buildTopology(nil, edges)
	if !topo.GetTruncated() || len(topo.GetEdges()) != MaxTopologyEdges {
		t.Fatalf("truncated %v, %d edges", topo.GetTruncated(), len(topo.GetEdges()))
	}
	for _, e := range topo.GetEdges() {
		if e.GetTo() == "h00000" {
			t.Fatal("the least used edge was kept over the limit")
		}
	}
}
