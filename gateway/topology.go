package gateway

import (
	"cmp"
	"context"
	"net/url"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Topology bounds: the edges come from one bounded scan of the audit log.
const (
	// DefaultTopologyHours is the audit window scanned when none is asked.
	DefaultTopologyHours = 24
	// MaxTopologyHours caps the window (31 days).
	MaxTopologyHours = 31 * 24
	// MaxTopologyRecords caps the records scanned, newest first; older
	// records in the window are then not counted.
	MaxTopologyRecords = 200_000
	// MaxTopologyEdges caps the edges returned (the most used are kept).
	MaxTopologyEdges = 5000
)

// Edge kinds of a TopologyEdge.
const (
	EdgeHost  = "host"
	EdgeTool  = "tool"
	EdgeModel = "model"
	EdgeAgent = "agent"
)

// TopologySource is what TopologyService reads: the agent registry and the
// audit log.
type TopologySource interface {
	ListAgents(ctx context.Context, f storage.AgentFilter) ([]*storage.Agent, error)
	AuditQuerier
}

// TopologyService implements agentassembly.v1.TopologyService: the agent
// delegation tree, team membership and the edges observed in the audit log.
type TopologyService struct {
	v1.UnimplementedTopologyServiceServer
	src TopologySource
	now func() time.Time
}

var _ v1.TopologyServiceServer = (*TopologyService)(nil)

// NewTopologyService returns a TopologyService over src.
func NewTopologyService(src TopologySource) *TopologyService {
	return &TopologyService{src: src, now: time.Now}
}

// GetTopology implements TopologyService.GetTopology.
func (s *TopologyService) GetTopology(ctx context.Context, req *v1.GetTopologyRequest) (*v1.Topology, error) {
	hours := int(req.GetHours())
	switch {
	case hours < 0 || hours > MaxTopologyHours:
		return nil, requestStatus(badField("hours", "must be between 1 and %d", MaxTopologyHours))
	case hours == 0:
		hours = DefaultTopologyHours
	}
	if req.GetTeamId() != "" && req.GetOrgId() == "" {
		return nil, requestStatus(badField("team_id", "needs org_id"))
	}
	agents, err := s.src.ListAgents(ctx, storage.AgentFilter{Org: req.GetOrgId(), Team: req.GetTeamId()})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "list agents: %v", err)
	}
	until := s.now()
	edges, truncated, err := observeEdges(ctx, s.src, storage.AuditQuery{Org: req.GetOrgId(), Team: req.GetTeamId(),
		Event: storage.EventDecision, Since: until.Add(-time.Duration(hours) * time.Hour), Until: until, Limit: 1000})
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "read audit log: %v", err)
	}
	topo := buildTopology(agents, edges)
	topo.Truncated = topo.Truncated || truncated
	return topo, nil
}

type edgeKey struct {
	from action.AgentID
	kind string
	to   string
}

type edgeStat struct {
	count, denied int64
	last          time.Time
}

// observeEdges aggregates one bounded scan of the audit log; truncated is
// set when MaxTopologyRecords stopped it.
func observeEdges(ctx context.Context, src AuditQuerier, q storage.AuditQuery) (edges map[edgeKey]*edgeStat, truncated bool, err error) {
	out := map[edgeKey]*edgeStat{}
	scanned := 0
	for {
		page, err := src.QueryAudit(ctx, q)
		if err != nil {
			return nil, false, err
		}
		for _, rec := range page.Records {
			if scanned >= MaxTopologyRecords {
				return out, true, nil
			}
			scanned++
			kind, to := edgeOf(rec)
			if kind == "" {
				continue
			}
			k := edgeKey{rec.Agent, kind, to}
			st := out[k]
			if st == nil {
				st = &edgeStat{}
				out[k] = st
			}
			st.count++
			if rec.Decision == action.Deny {
				st.denied++
			}
			if rec.Time.After(st.last) {
				st.last = rec.Time
			}
		}
		if page.NextCursor == "" || len(page.Records) == 0 {
			return out, false, nil
		}
		q.Cursor = page.NextCursor
	}
}

// edgeOf says what a record connects its agent to.
func edgeOf(rec *storage.AuditRecord) (kind, to string) {
	if rec.Agent.IsZero() {
		return "", ""
	}
	a, err := decodePayload(rec.Kind, rec.Payload)
	if err != nil {
		return "", ""
	}
	switch rec.Kind {
	case action.KindNetworkCall:
		return EdgeHost, a.Network.Host
	case action.KindToolCall:
		if a.Tool.Name != "" {
			return EdgeTool, a.Tool.Name
		}
		if u, err := url.Parse(a.Tool.TargetURL); err == nil && u.Hostname() != "" {
			return EdgeHost, u.Hostname()
		}
	case action.KindLLMCall:
		if a.LLM.Provider != "" {
			return EdgeModel, a.LLM.Provider + "/" + a.LLM.Model
		}
		return EdgeModel, a.LLM.Model
	case action.KindAgentSpawn:
		if c := childOf(rec.Payload, rec.Agent); !c.IsZero() {
			return EdgeAgent, c.String()
		}
	}
	return "", ""
}

// buildTopology joins the registry with the observed edges. Agents seen in
// the audit log but not registered appear with status "unregistered"; a
// parent missing from the registry is taken from an observed spawn.
func buildTopology(agents []*storage.Agent, edges map[edgeKey]*edgeStat) *v1.Topology {
	type node struct {
		id     action.AgentID
		parent action.AgentID
		depth  int
		status string
		known  bool
	}
	nodes := map[action.AgentID]*node{}
	for _, a := range agents {
		nodes[a.ID] = &node{id: a.ID, parent: a.Parent, depth: a.Depth, status: string(a.Status), known: true}
	}
	add := func(id action.AgentID) *node {
		n := nodes[id]
		if n == nil {
			n = &node{id: id, status: "unregistered"}
			nodes[id] = n
		}
		return n
	}
	keys := make([]edgeKey, 0, len(edges))
	for k := range edges {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b edgeKey) int {
		return cmp.Or(cmp.Compare(a.from.String(), b.from.String()), cmp.Compare(a.kind, b.kind), cmp.Compare(a.to, b.to))
	})
	out := &v1.Topology{}
	if len(keys) > MaxTopologyEdges {
		out.Truncated = true
		byUse := slices.Clone(keys)
		slices.SortStableFunc(byUse, func(a, b edgeKey) int { return cmp.Compare(edges[b].count, edges[a].count) })
		keep := map[edgeKey]bool{}
		for _, k := range byUse[:MaxTopologyEdges] {
			keep[k] = true
		}
		keys = slices.DeleteFunc(keys, func(k edgeKey) bool { return !keep[k] })
	}
	for _, k := range keys {
		add(k.from)
		if k.kind == EdgeAgent {
			child := add(parseAgentID(k.to, k.from))
			if child.parent.IsZero() {
				child.parent = k.from
			}
		}
	}
	// Depth of agents whose registry entry does not give one: one more than
	// the parent's, following the chain (bounded against cycles).
	for _, n := range nodes {
		if n.known || n.parent.IsZero() {
			continue
		}
		d, p := 0, n.parent
		for i := 0; i < 64 && !p.IsZero(); i++ {
			d++
			pn := nodes[p]
			if pn == nil {
				break
			}
			if pn.known {
				d += pn.depth
				break
			}
			p = pn.parent
		}
		n.depth = d
	}

	ids := make([]action.AgentID, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b action.AgentID) int { return cmp.Compare(a.String(), b.String()) })
	teams := map[[2]string]*v1.Team{}
	var teamOrder [][2]string
	for _, id := range ids {
		n := nodes[id]
		tn := &v1.TopologyNode{Agent: agentToProto(id), Depth: int32(n.depth), Status: n.status}
		if !n.parent.IsZero() {
			tn.Parent = agentToProto(n.parent)
		}
		out.Nodes = append(out.Nodes, tn)
		tk := [2]string{id.Org, id.Team}
		t := teams[tk]
		if t == nil {
			t = &v1.Team{OrgId: id.Org, TeamId: id.Team}
			teams[tk] = t
			teamOrder = append(teamOrder, tk)
		}
		t.AgentIds = append(t.AgentIds, id.Agent)
	}
	slices.SortFunc(teamOrder, func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	for _, tk := range teamOrder {
		out.Teams = append(out.Teams, teams[tk])
	}
	for _, k := range keys {
		st := edges[k]
		out.Edges = append(out.Edges, &v1.TopologyEdge{From: agentToProto(k.from), Kind: k.kind, To: k.to,
			Count: st.count, Denied: st.denied, LastSeen: timestamppb.New(st.last)})
	}
	return out
}
