package xds

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// source is a PolicySource whose snapshot tests swap.
type source struct {
	p atomic.Pointer[policy.Snapshot]
}

func (s *source) Snapshot() *policy.Snapshot { return s.p.Load() }

func newSource(t testing.TB, dir string) *source {
	s := &source{}
	s.p.Store(loadPolicy(t, dir))
	return s
}

// fakeResolver answers every name from a table.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func testOptions() Options {
	return Options{
		GatewayAddr: "aa-gateway.aa-system.svc:50051",
		Endpoints: DNSEndpoints(fakeResolver{
			"api.openai.com":   {netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")},
			"export.arxiv.org": {netip.MustParseAddr("198.51.100.4")},
		}),
		PollInterval: -1,
	}
}

func mustNew(t testing.TB, src PolicySource, o Options) *Server {
	t.Helper()
	s, err := New(src, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// golden compares got with testdata/name, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./xds -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the generated resources (run go test ./xds -run %s -update and review the diff)\n--- got:\n%s", path, t.Name(), got)
	}
}

// renderResources renders resources as indented JSON, sorted by type and
// name (protojson output is re-indented through encoding/json, whose output
// is stable).
func renderResources(t *testing.T, res map[string]map[string]types.Resource) []byte {
	t.Helper()
	var typs []string
	for typ := range res {
		typs = append(typs, typ)
	}
	slices.Sort(typs)
	type entry struct {
		Type     string          `json:"type"`
		Name     string          `json:"name"`
		Resource json.RawMessage `json:"resource"`
	}
	var out []entry
	for _, typ := range typs {
		var names []string
		for n := range res[typ] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			b, err := protojson.Marshal(res[typ][n])
			if err != nil {
				t.Fatal(err)
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			b, _ = json.Marshal(v)
			out = append(out, entry{short(typ), n, b})
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestGoldenResources(t *testing.T) {
	src := newSource(t, "testdata/policies")
	s := mustNew(t, src, testOptions())
	ctx := context.Background()
	agent := action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	if err := s.AddAgent(ctx, agent); err != nil {
		t.Fatal(err)
	}
	golden(t, "envoy-researcher-1.json", renderResources(t, s.Resources(agent.String())))

	// A gRPC node (as its first request would create it).
	s.mu.Lock()
	n := s.nodeLocked(agent.String()+"|grpc", agent.String(), agent, FlavourGRPC)
	s.mu.Unlock()
	s.updateMu.Lock()
	_, err := s.publish(ctx, src.Snapshot(), n, nil)
	s.updateMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "grpc-researcher-1.json", renderResources(t, s.Resources(agent.String()+"|grpc")))
	st := s.Status()
	var skipped []string
	for _, ns := range st {
		if ns.Flavour == FlavourGRPC {
			skipped = ns.Skipped
		}
	}
	// internal.example has no address in the fake resolver; 192.0.2.10 is
	// a literal; *.wikipedia.org is a wildcard (not served to gRPC).
	if len(skipped) != 1 || !strings.Contains(skipped[0], "internal.example") {
		t.Errorf("skipped = %q, want the unresolvable internal.example", skipped)
	}
}

// TestSnapshotsPassChecks checks every snapshot the server publishes for the
// example policies, both flavours, with Check (ValidateAll on each resource,
// references, and Consistent where it applies).
func TestSnapshotsPassChecks(t *testing.T) {
	for _, dir := range []string{"testdata/policies", "../examples/policies"} {
		src := newSource(t, dir)
		s := mustNew(t, src, testOptions())
		for _, a := range []string{"acme/research/researcher-1", "acme/research/researcher-2", "acme/eng/coder-1", "acme/support/helper-1", "other/x/y"} {
			id, _ := parseAgent(a)
			if err := s.AddAgent(context.Background(), id); err != nil {
				t.Fatalf("%s %s: %v", dir, a, err)
			}
			snap, err := s.cache.GetSnapshot(a)
			if err != nil {
				t.Fatal(err)
			}
			if err := Check(snap.(*cache.Snapshot)); err != nil {
				t.Errorf("%s %s: %v", dir, a, err)
			}
		}
	}
}

// TestCheckRejects shows that Check catches what a client would reject or
// choke on, so such a snapshot is never published.
func TestCheckRejects(t *testing.T) {
	src := newSource(t, "testdata/policies")
	s := mustNew(t, src, testOptions())
	agent := action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	if err := s.AddAgent(context.Background(), agent); err != nil {
		t.Fatal(err)
	}
	good := s.Resources(agent.String())
	mk := func(mut func(map[string][]types.Resource)) *cache.Snapshot {
		res := map[string][]types.Resource{}
		for typ, m := range good {
			for _, r := range m {
				res[typ] = append(res[typ], proto.Clone(r))
			}
		}
		mut(res)
		snap, err := cache.NewSnapshot("x", res)
		if err != nil {
			t.Fatal(err)
		}
		return snap
	}
	cases := map[string]func(map[string][]types.Resource){
		"missing route":   func(r map[string][]types.Resource) { delete(r, routeType) },
		"missing cluster": func(r map[string][]types.Resource) { r[clusterType] = r[clusterType][:1] },
		"invalid listener": func(r map[string][]types.Resource) {
			proto.Reset(r[listenerType][0])
		},
	}
	for name, mut := range cases {
		if err := Check(mk(mut)); err == nil {
			t.Errorf("%s: Check passed", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if err := Check(mk(func(map[string][]types.Resource) {})); err != nil {
		t.Errorf("unchanged snapshot: %v", err)
	}
}

// TestConsistentFalseErrorOnAPIListener records the library fact that
// Check works around: Consistent rejects a correct gRPC snapshot.
func TestConsistentFalseErrorOnAPIListener(t *testing.T) {
	src := newSource(t, "testdata/policies")
	s := mustNew(t, src, testOptions())
	ctx := context.Background()
	agent := action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	s.mu.Lock()
	n := s.nodeLocked(agent.String()+"|grpc", agent.String(), agent, FlavourGRPC)
	s.mu.Unlock()
	s.updateMu.Lock()
	_, err := s.publish(ctx, src.Snapshot(), n, nil)
	s.updateMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := s.cache.GetSnapshot(n.key)
	cs := snap.(*cache.Snapshot)
	if err := Check(cs); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := cs.Consistent(); err == nil {
		t.Log("Consistent now accepts api_listener snapshots; Check could call it for them too")
	} else {
		t.Logf("Consistent's false error (why Check walks references itself): %v", err)
	}
}

// TestPolicyChangeRepublishesOnlyChangedNodes changes one team's policy and
// counts which node snapshots got a new version.
func TestPolicyChangeRepublishesOnlyChangedNodes(t *testing.T) {
	dir := t.TempDir()
	writeTeams(t, dir, 3, 10, "")
	src := newSource(t, dir)
	s := mustNew(t, src, testOptions())
	ctx := context.Background()
	for team := range 3 {
		for a := range 5 {
			if err := s.AddAgent(ctx, action.AgentID{Org: "acme", Team: fmt.Sprintf("team-%d", team), Agent: fmt.Sprintf("agent-%d", a)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := versions(s)
	if len(before) != 15 {
		t.Fatalf("%d nodes, want 15", len(before))
	}
	// Unchanged policy: nothing is published.
	if n, err := s.update(ctx); err != nil || n != 0 {
		t.Fatalf("update without change published %d (err %v), want 0", n, err)
	}
	writeTeams(t, dir, 3, 10, "team-1")
	src.p.Store(loadPolicy(t, dir))
	n, err := s.update(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after := versions(s)
	var changed []string
	for node, v := range after {
		if before[node] != v {
			changed = append(changed, node)
		}
	}
	slices.Sort(changed)
	want := []string{"acme/team-1/agent-0", "acme/team-1/agent-1", "acme/team-1/agent-2", "acme/team-1/agent-3", "acme/team-1/agent-4"}
	if !slices.Equal(changed, want) || n != len(want) {
		t.Errorf("changed nodes %v (published %d), want %v", changed, n, want)
	}

	// A registration adds one node and changes no other.
	before = versions(s)
	if err := s.AddAgent(ctx, action.AgentID{Org: "acme", Team: "team-2", Agent: "new"}); err != nil {
		t.Fatal(err)
	}
	after = versions(s)
	if len(after) != len(before)+1 || after["acme/team-2/new"] == "" {
		t.Fatalf("after registration: %v", after)
	}
	for node, v := range before {
		if after[node] != v {
			t.Errorf("registration changed %s", node)
		}
	}
	// The new agent shares its team's resources: same destinations as its
	// teammates (the version differs only by the agent id in the route).
	r1, r2 := s.Resources("acme/team-2/new"), s.Resources("acme/team-2/agent-0")
	if len(r1[clusterType]) != len(r2[clusterType]) || len(r1[clusterType]) == 0 {
		t.Errorf("new agent has %d clusters, teammate %d", len(r1[clusterType]), len(r2[clusterType]))
	}
}

// TestRegisteredAgentsGetSnapshots: agents the registry lists have a
// snapshot before they connect; a lister error does not stop the others.
func TestRegisteredAgentsGetSnapshots(t *testing.T) {
	src := newSource(t, "testdata/policies")
	o := testOptions()
	fail := false
	o.Agents = func(context.Context) ([]action.AgentID, error) {
		if fail {
			return nil, fmt.Errorf("registry down")
		}
		return []action.AgentID{{Org: "acme", Team: "research", Agent: "r-1"}, {Org: "acme", Team: "eng", Agent: "c-1"}}, nil
	}
	s := mustNew(t, src, o)
	if err := s.Update(context.Background()); err != nil {
		t.Fatal(err)
	}
	v := versions(s)
	if len(v) != 2 || v["acme/research/r-1"] == "" || v["acme/eng/c-1"] == "" {
		t.Fatalf("versions %v", v)
	}
	for _, n := range s.Status() {
		if n.Connected {
			t.Errorf("%s shows connected", n.Node)
		}
	}
	fail = true
	if err := s.Update(context.Background()); err != nil {
		t.Errorf("a registry error failed the update: %v", err)
	}
}

func versions(s *Server) map[string]string {
	out := map[string]string{}
	for _, n := range s.Status() {
		out[n.Node] = n.Version
	}
	return out
}

// writeTeams writes a global document and one document per team allowing
// dests destinations; the team named extra gets one more destination.
func writeTeams(t testing.TB, dir string, teams, dests int, extra string) {
	t.Helper()
	files := map[string]string{"global.yaml": `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: global}
spec:
  scope: {level: global}
  default: deny
  rules:
    - {id: delegate, priority: -100, match: {action: [network_call]}, decision: allow}
`}
	for i := range teams {
		team := fmt.Sprintf("team-%d", i)
		var b strings.Builder
		fmt.Fprintf(&b, "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: %s}\nspec:\n  scope: {level: team, org: acme, team: %s}\n  default: deny\n  network:\n    allowlist:\n", team, team)
		for d := range dests {
			switch d % 3 {
			case 0:
				fmt.Fprintf(&b, "      - {host: api-%d.%s.example.com, ports: [443]}\n", d, team)
			case 1:
				fmt.Fprintf(&b, "      - {host: \"*.svc-%d.example.net\", ports: [443]}\n", d)
			default:
				fmt.Fprintf(&b, "      - {host: plain-%d.example.org, ports: [80, 8080]}\n", d)
			}
		}
		if team == extra {
			b.WriteString("      - {host: added.example.com, ports: [443]}\n")
		}
		files[team+".yaml"] = b.String()
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	cases := map[string]Options{
		"gateway address is required": {},
		`"nope" is not host:port`:     {GatewayAddr: "nope"},
		"egress address":              {GatewayAddr: "gw:1", EgressAddr: "x:0"},
		"backoff":                     {GatewayAddr: "gw:1", BackoffBase: 10, BackoffMax: 5},
	}
	for want, o := range cases {
		_, err := New(&source{}, o)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("options %+v: error %v, want one containing %q", o, err, want)
		}
	}
}

func startADS(t testing.TB, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// TestExtProcOption: ext_proc sits between ext_authz and the router by
// default, and DisableExtProc leaves it out.
func TestExtProcOption(t *testing.T) {
	for _, disable := range []bool{false, true} {
		o := testOptions()
		o.DisableExtProc = disable
		o, err := o.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		f, err := buildFixed(&o)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, h := range listenerHCMs(f.listener) {
			for _, fl := range h.hcm.GetHttpFilters() {
				names = append(names, fl.GetName())
				var ep extprocv3.ExternalProcessor
				if fl.GetName() == filterExtProc {
					if err := fl.GetTypedConfig().UnmarshalTo(&ep); err != nil {
						t.Fatal(err)
					}
					// The gateway's ext_proc reads ext_authz's decision from the
					// request headers; without them it refuses every request.
					if m := ep.GetProcessingMode().GetRequestHeaderMode(); m != extprocv3.ProcessingMode_SEND {
						t.Errorf("ext_proc request_header_mode %v, want SEND", m)
					}
				}
			}
		}
		want := []string{filterExtAuthz, filterExtProc, filterDFP, filterRouter}
		if disable {
			want = []string{filterExtAuthz, filterDFP, filterRouter}
		}
		if !slices.Equal(names, want) {
			t.Errorf("DisableExtProc=%v: filters %v, want %v", disable, names, want)
		}
	}
}

// TestEgressAddrFromNodeMetadata: an Envoy node can move its egress
// listener (several sidecars on one host); a bad address is refused.
func TestEgressAddrFromNodeMetadata(t *testing.T) {
	src := newSource(t, "testdata/policies")
	s := mustNew(t, src, testOptions())
	addr := startADS(t, s)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	lds := func(meta string) (*listenerv3.Listener, error) {
		st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(t.Context())
		if err != nil {
			return nil, err
		}
		md, _ := structpb.NewStruct(map[string]any{EgressMetadataKey: meta})
		if err := st.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: listenerType,
			Node: &corev3.Node{Id: "acme/research/researcher-1", UserAgentName: "envoy", Metadata: md}}); err != nil {
			return nil, err
		}
		resp, err := st.Recv()
		if err != nil {
			return nil, err
		}
		l := &listenerv3.Listener{}
		if err := resp.GetResources()[0].UnmarshalTo(l); err != nil {
			return nil, err
		}
		return l, nil
	}
	l, err := lds("127.0.0.1:15042")
	if err != nil {
		t.Fatal(err)
	}
	if p := l.GetAddress().GetSocketAddress().GetPortValue(); p != 15042 {
		t.Errorf("egress listener on port %d, want 15042", p)
	}
	if _, err := lds("nope"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), EgressMetadataKey) {
		t.Errorf("bad egress address: %v, want InvalidArgument naming %s", err, EgressMetadataKey)
	}
}

// TestIdleNodesExpire: a node without a stream that the registry does not
// list is dropped after NodeTTL; a listed one stays.
func TestIdleNodesExpire(t *testing.T) {
	src := newSource(t, "testdata/policies")
	o := testOptions()
	clock := time.Unix(1_000_000, 0)
	o.now = func() time.Time { return clock }
	o.Agents = func(context.Context) ([]action.AgentID, error) {
		return []action.AgentID{{Org: "acme", Team: "research", Agent: "listed"}}, nil
	}
	s := mustNew(t, src, o)
	ctx := context.Background()
	if err := s.AddAgent(ctx, action.AgentID{Org: "acme", Team: "research", Agent: "gone"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx); err != nil {
		t.Fatal(err)
	}
	if v := versions(s); len(v) != 2 {
		t.Fatalf("versions %v", v)
	}
	clock = clock.Add(DefaultNodeTTL + time.Second)
	if err := s.Update(ctx); err != nil {
		t.Fatal(err)
	}
	v := versions(s)
	if _, ok := v["acme/research/gone"]; ok || v["acme/research/listed"] == "" {
		t.Errorf("after the TTL: %v, want only the listed agent", v)
	}
	if s.Resources("acme/research/gone") != nil {
		t.Error("the expired node's snapshot is still served")
	}
}
