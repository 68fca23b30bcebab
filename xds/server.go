package xds

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/policy"
)

type typesResource = types.Resource

// Flavour is the kind of xDS client a node is, which decides its resources.
type Flavour string

// Node flavours.
const (
	// FlavourEnvoy nodes are Envoy sidecars: an egress listener with
	// ext_authz (and ext_proc), routes and upstream clusters.
	FlavourEnvoy Flavour = "envoy"
	// FlavourGRPC nodes are gRPC xDS clients (proxyless agents): an
	// api_listener per allowed destination with EDS endpoints.
	FlavourGRPC Flavour = "grpc"
)

// FlavourMetadataKey is the node metadata field that overrides the flavour
// guessed from the node's user agent ("envoy" or "grpc").
const FlavourMetadataKey = "aa_flavour"

// EgressMetadataKey is the node metadata field (host:port) that moves an
// Envoy node's egress listener off Options.EgressAddr, for several sidecars
// on one host (envoy/bootstrap.yaml sets it from AA_EGRESS_PORT).
const EgressMetadataKey = "aa_egress_addr"

// grpcSuffix marks the cache key of a gRPC node.
const grpcSuffix = "|grpc"

// Server is the ADS control plane. It keeps one snapshot per node (node id =
// agent id org/team/agent), computed from the policy, and publishes a new
// version only to nodes whose resources changed.
type Server struct {
	opts  Options
	log   logger
	m     *metrics
	src   PolicySource
	cache *backoffCache
	ads   serverv3.Server

	notify chan struct{}

	updateMu sync.Mutex // serialises computing and publishing snapshots
	fixed    *envoyFixed
	dests    map[Destination]*destEntry
	// listeners are egress listeners at addresses nodes asked for.
	listeners map[string]*listenerv3.Listener
	pass      uint64

	mu      sync.Mutex
	nodes   map[string]*nodeState
	streams map[int64]*streamState
}

type logger = interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
	Error(msg string, args ...any)
	Debug(msg string, args ...any)
}

type nodeState struct {
	key      string
	id       string
	agent    action.AgentID
	token    string // the credential the node's last authenticated stream presented
	flavour  Flavour
	version  string
	updated  time.Time
	streams  int
	lastSeen time.Time
	types    map[string]*TypeStatus
	skipped  []string
	// subscribed are the listener names a gRPC node asks for.
	subscribed []string
	// touched is when the node last connected, asked or was listed by
	// the registry; a node idle for NodeTTL without a stream is dropped.
	touched time.Time
	// egressAddr overrides Options.EgressAddr for this Envoy node (node
	// metadata EgressMetadataKey), so several sidecars can share a host.
	egressAddr string
}

type streamState struct {
	key  string
	sent map[string][2]string // type URL -> {nonce, version} of the last response
	// authed, agent and token are what Options.Authenticate proved when
	// the stream opened.
	authed bool
	agent  action.AgentID
	token  string
}

// TypeStatus is what one node did with one resource type.
type TypeStatus struct {
	TypeURL     string
	SentVersion string
	SentAt      time.Time
	AckVersion  string
	AckAt       time.Time
	NackVersion string
	NackAt      time.Time
	NackError   string
}

// NodeStatus is the state of one node.
type NodeStatus struct {
	Node    string
	Agent   action.AgentID
	Flavour Flavour
	// Version is the node's current snapshot version.
	Version   string
	UpdatedAt time.Time
	Connected bool
	LastSeen  time.Time
	Types     []TypeStatus
	// Skipped lists destinations left out of a gRPC node's resources
	// (no endpoints found), with the reason.
	Skipped []string
}

// nodeHash keys the cache by node id, with a suffix for gRPC nodes so that
// an agent's Envoy sidecar and its gRPC client can share an id.
type nodeHash struct{}

func (nodeHash) ID(n *corev3.Node) string {
	if flavourOf(n) == FlavourGRPC {
		return n.GetId() + grpcSuffix
	}
	return n.GetId()
}

func flavourOf(n *corev3.Node) Flavour {
	if v := n.GetMetadata().GetFields()[FlavourMetadataKey].GetStringValue(); v != "" {
		return Flavour(v)
	}
	if strings.HasPrefix(strings.ToLower(n.GetUserAgentName()), "grpc") {
		return FlavourGRPC
	}
	return FlavourEnvoy
}

// New returns a Server that reads policy from src.
func New(src PolicySource, opts Options) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("xds options: %w", err)
	}
	if src == nil {
		return nil, errors.New("xds: a policy source is required")
	}
	s := &Server{
		opts: o, log: o.Logger, m: newMetrics(o.Registry), src: src,
		notify: make(chan struct{}, 1), dests: map[Destination]*destEntry{}, listeners: map[string]*listenerv3.Listener{},
		nodes: map[string]*nodeState{}, streams: map[int64]*streamState{},
	}
	if s.fixed, err = buildFixed(&o); err != nil {
		return nil, fmt.Errorf("xds: build fixed resources: %w", err)
	}
	s.cache = newBackoffCache(
		cache.NewSnapshotCache(true, nodeHash{}, cacheLogger{o.Logger}),
		cache.NewSnapshotCache(false, nodeHash{}, cacheLogger{o.Logger}),
		nodeHash{}, o.BackoffBase, o.BackoffMax, o.after)
	s.cache.onDelay = func(node, typeURL string, d time.Duration) {
		s.m.backoffs.WithLabelValues(short(typeURL)).Inc()
		s.log.Info("xds: holding back a rejected version", "node", node, "type", short(typeURL), "delay", d)
	}
	s.ads = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
		StreamOpenFunc:     s.onStreamOpen,
		StreamClosedFunc:   s.onStreamClosed,
		StreamRequestFunc:  s.onStreamRequest,
		StreamResponseFunc: s.onStreamResponse,
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			return status.Error(codes.Unimplemented, "incremental (delta) xDS is not served; use state-of-the-world ADS")
		},
	})
	return s, nil
}

// Register serves ADS (envoy.service.discovery.v3.AggregatedDiscoveryService)
// on g.
func (s *Server) Register(g *grpc.Server) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, s.ads)
}

// Notify asks Run to recompute snapshots now (after a policy change or an
// agent registration). It never blocks.
func (s *Server) Notify() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Run recomputes snapshots when notified, and when the policy source serves
// a snapshot it has not seen (polled every PollInterval), until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	var last *policy.Snapshot
	update := func() {
		cur := s.src.Snapshot()
		if err := s.Update(ctx); err != nil {
			s.log.Error("xds: update snapshots", "err", err)
			return
		}
		last = cur
	}
	update()
	var tick <-chan time.Time
	if s.opts.PollInterval > 0 {
		t := time.NewTicker(s.opts.PollInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.notify:
			update()
		case <-tick:
			if s.src.Snapshot() != last {
				update()
			}
		}
	}
}

// AddAgent makes sure the agent's Envoy node has a snapshot (called when an
// agent registers).
func (s *Server) AddAgent(ctx context.Context, id action.AgentID) error {
	if _, err := parseAgent(id.String()); err != nil {
		return err
	}
	s.mu.Lock()
	n := s.nodeLocked(id.String(), id.String(), id, FlavourEnvoy)
	s.mu.Unlock()
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	snap := s.src.Snapshot()
	if snap == nil {
		return errors.New("xds: no policy is serving yet")
	}
	_, err := s.publish(ctx, snap, n, nil)
	return err
}

// Update recomputes every known node's snapshot from the serving policy and
// publishes the ones that changed. It returns how many were published.
func (s *Server) Update(ctx context.Context) error {
	_, err := s.update(ctx)
	return err
}

func (s *Server) update(ctx context.Context) (int, error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	snap := s.src.Snapshot()
	if snap == nil {
		return 0, errors.New("no policy is serving yet")
	}
	if s.opts.Agents != nil {
		ids, err := s.opts.Agents(ctx)
		if err != nil {
			s.log.Warn("xds: list registered agents", "err", err)
		}
		s.mu.Lock()
		for _, id := range ids {
			s.nodeLocked(id.String(), id.String(), id, FlavourEnvoy).touched = s.opts.now()
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	nodes := make([]*nodeState, 0, len(s.nodes))
	for key, n := range s.nodes {
		if n.streams == 0 && s.opts.now().Sub(n.touched) > s.opts.NodeTTL {
			delete(s.nodes, key)
			s.cache.clear(key)
			continue
		}
		nodes = append(nodes, n)
	}
	s.mu.Unlock()
	slices.SortFunc(nodes, func(a, b *nodeState) int { return cmp.Compare(a.key, b.key) })
	s.pass++
	memo := newPassMemo()
	published := 0
	var errs []error
	for _, n := range nodes {
		changed, err := s.publish(ctx, snap, n, memo)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.key, err))
			continue
		}
		if changed {
			published++
		}
	}
	for d, e := range s.dests {
		if e.lastPass != s.pass {
			delete(s.dests, d)
		}
	}
	if published > 0 {
		s.log.Info("xds: snapshots published", "policy_version", snap.Version(), "nodes", len(nodes), "changed", published)
	}
	return published, errors.Join(errs...)
}

type grpcBuild struct {
	res     map[string][]types.Resource
	skipped []error
	err     error
}

// passMemo shares work between the nodes of one update pass: destinations
// by the set of documents that decide them, Envoy groups and gRPC resources
// by destination list.
type passMemo struct {
	dests  map[string][]Destination
	groups map[string]*envoyGroup
	grpc   map[string]grpcBuild
	keyBuf []byte
}

func newPassMemo() *passMemo {
	return &passMemo{dests: map[string][]Destination{}, groups: map[string]*envoyGroup{}, grpc: map[string]grpcBuild{}}
}

// destinations returns agent's destinations, computed once per distinct set
// of deciding documents.
func (m *passMemo) destinations(snap *policy.Snapshot, agent action.AgentID) []Destination {
	docs := constraining(applicable(snap, agent))
	m.keyBuf = m.keyBuf[:0]
	for _, d := range docs {
		m.keyBuf = append(m.keyBuf, d.Metadata.Name...)
		m.keyBuf = append(m.keyBuf, 0)
	}
	if ds, ok := m.dests[string(m.keyBuf)]; ok {
		return ds
	}
	ds := destinationsOf(docs)
	m.dests[string(m.keyBuf)] = ds
	return ds
}

// publish computes n's snapshot under snap and sets it when its version
// differs from the node's current one. Callers hold updateMu; memo may be
// nil.
func (s *Server) publish(ctx context.Context, snap *policy.Snapshot, n *nodeState, memo *passMemo) (bool, error) {
	if memo == nil {
		memo = newPassMemo()
	}
	dests := memo.destinations(snap, n.agent)
	key := destKey(dests)
	var (
		version string
		res     map[string][]types.Resource
		skipped []string
		shell   *routev3.RouteConfiguration
	)
	switch n.flavour {
	case FlavourGRPC:
		b, ok := memo.grpc[key]
		if !ok {
			r, sk, err := grpcResources(ctx, s.opts.Endpoints, dests)
			b = grpcBuild{r, sk, err}
			memo.grpc[key] = b
		}
		if b.err != nil {
			return false, b.err
		}
		res = b.res
		for _, e := range b.skipped {
			skipped = append(skipped, e.Error())
		}
		s.mu.Lock()
		sub := n.subscribed
		s.mu.Unlock()
		var err error
		if res, err = withRefusals(res, sub); err != nil {
			return false, err
		}
		if s.opts.tamper != nil {
			res = cloneResources(res)
			s.opts.tamper(n.key, res)
		}
		h, err := hashResources(res)
		if err != nil {
			return false, err
		}
		version = hex.EncodeToString(h[:8])
	default:
		g, err := s.group(memo, key, dests)
		if err != nil {
			return false, err
		}
		h := sha256.New()
		h.Write(g.hash)
		h.Write([]byte(n.agent.String()))
		s.mu.Lock()
		egress, token := n.egressAddr, n.token
		s.mu.Unlock()
		h.Write([]byte(token))
		listener := g.listener
		if egress != "" && egress != s.opts.EgressAddr {
			h.Write([]byte(egress))
			if listener, err = s.egressListenerAt(egress); err != nil {
				return false, err
			}
		}
		version = hex.EncodeToString(h.Sum(nil)[:8])
		if version == n.currentVersion(s) {
			return false, nil
		}
		rc, err := g.routeConfig(n.agent, token, !s.opts.DisableExtProc)
		if err != nil {
			return false, err
		}
		shell = rc
		res = map[string][]types.Resource{
			listenerType: {listener},
			routeType:    {rc},
			clusterType:  g.clusters,
		}
	}
	if version == n.currentVersion(s) {
		return false, nil
	}
	cs, err := cache.NewSnapshot(version, res)
	if err != nil {
		return false, fmt.Errorf("build snapshot: %w", err)
	}
	if err := s.check(cs, shell); err != nil {
		return false, fmt.Errorf("snapshot %s for policy %s is invalid, not published: %w", version, snap.Version(), err)
	}
	if err := s.cache.SetSnapshot(ctx, n.key, cs); err != nil {
		return false, fmt.Errorf("set snapshot: %w", err)
	}
	s.mu.Lock()
	n.version, n.updated, n.skipped = version, time.Now(), skipped
	s.mu.Unlock()
	s.m.snapshots.WithLabelValues(string(n.flavour)).Inc()
	return true, nil
}

func (n *nodeState) currentVersion(s *Server) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return n.version
}

// group returns the shared Envoy resources for a destination list: built
// once per pass and list, from per-destination entries kept across passes
// (so a policy change rebuilds only new destinations).
func (s *Server) group(memo *passMemo, key string, dests []Destination) (*envoyGroup, error) {
	if g, ok := memo.groups[key]; ok {
		return g, nil
	}
	entries := make([]*destEntry, len(dests))
	for i, d := range dests {
		e, ok := s.dests[d]
		if !ok {
			var err error
			if e, err = buildDest(&s.opts, d); err != nil {
				return nil, err
			}
			s.dests[d] = e
		}
		e.lastPass = s.pass
		entries[i] = e
	}
	g := newEnvoyGroup(s.fixed, dests, entries)
	memo.groups[key] = g
	return g, nil
}

// egressListenerAt returns the egress listener bound to addr, built and
// validated once per address. Callers hold updateMu.
func (s *Server) egressListenerAt(addr string) (*listenerv3.Listener, error) {
	if l, ok := s.listeners[addr]; ok {
		return l, nil
	}
	o := s.opts
	o.EgressAddr = addr
	l, err := egressListener(&o)
	if err != nil {
		return nil, err
	}
	if err := l.ValidateAll(); err != nil {
		return nil, fmt.Errorf("egress listener at %s: %w", addr, err)
	}
	s.listeners[addr] = l
	return l, nil
}

// egressOf reads a node's egress address override ("" when none).
func egressOf(n *corev3.Node) (string, error) {
	v := n.GetMetadata().GetFields()[EgressMetadataKey].GetStringValue()
	if v == "" {
		return "", nil
	}
	if _, _, err := splitHostPort(v); err != nil {
		return "", fmt.Errorf("node metadata %s: %w", EgressMetadataKey, err)
	}
	return v, nil
}

// check validates a node snapshot before it is published. A gRPC snapshot
// gets the full Check. For an Envoy snapshot the listener, clusters and
// virtual hosts are shared objects validated (ValidateAll) when they were
// built; the node's route configuration is validated without them (the
// generated validation of a message is that of its fields, so this equals
// validating the whole), and the references and Consistent are checked in
// full.
func (s *Server) check(cs *cache.Snapshot, shell *routev3.RouteConfiguration) error {
	if shell == nil {
		return Check(cs)
	}
	top := &routev3.RouteConfiguration{Name: shell.Name, TypedPerFilterConfig: shell.TypedPerFilterConfig, ValidateClusters: shell.ValidateClusters}
	var errs []error
	if err := top.ValidateAll(); err != nil {
		errs = append(errs, fmt.Errorf("route configuration %q: %w", shell.Name, err))
	}
	if err := checkReferences(cs); err != nil {
		errs = append(errs, err)
	}
	if err := cs.Consistent(); err != nil {
		errs = append(errs, fmt.Errorf("consistent: %w", err))
	}
	return errors.Join(errs...)
}

func destKey(ds []Destination) string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteString(d.Host)
		b.WriteByte(' ')
		b.WriteString(itoa(d.Port))
		b.WriteByte(',')
	}
	return b.String()
}

func hashResources(res map[string][]types.Resource) ([32]byte, error) {
	h := sha256.New()
	mo := proto.MarshalOptions{Deterministic: true}
	typs := make([]string, 0, len(res))
	for t := range res {
		typs = append(typs, t)
	}
	slices.Sort(typs)
	for _, t := range typs {
		h.Write([]byte(t))
		for _, r := range res[t] {
			b, err := mo.Marshal(r)
			if err != nil {
				return [32]byte{}, fmt.Errorf("hash resources: %w", err)
			}
			h.Write(b)
		}
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, nil
}

func cloneResources(res map[string][]types.Resource) map[string][]types.Resource {
	out := make(map[string][]types.Resource, len(res))
	for t, rs := range res {
		for _, r := range rs {
			out[t] = append(out[t], proto.Clone(r))
		}
	}
	return out
}

// parseAgent reads a node id as an agent id.
func parseAgent(id string) (action.AgentID, error) {
	parts := strings.Split(id, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return action.AgentID{}, fmt.Errorf("node id %q is not an agent id: set it to org/team/agent (the sidecar bootstrap reads AA_AGENT_ID)", id)
	}
	return action.AgentID{Org: parts[0], Team: parts[1], Agent: parts[2]}, nil
}

// nodeLocked returns the node for key, creating it. Callers hold s.mu.
func (s *Server) nodeLocked(key, id string, agent action.AgentID, f Flavour) *nodeState {
	n, ok := s.nodes[key]
	if !ok {
		n = &nodeState{key: key, id: id, agent: agent, flavour: f, types: map[string]*TypeStatus{}, touched: s.opts.now()}
		s.nodes[key] = n
	}
	return n
}

func (s *Server) onStreamOpen(ctx context.Context, id int64, typeURL string) error {
	st := &streamState{sent: map[string][2]string{}}
	if s.opts.Authenticate != nil {
		agent, tok, err := s.opts.Authenticate(ctx)
		if err != nil {
			return err // counted and audited by the authenticator
		}
		st.authed, st.agent, st.token = true, agent, tok
	}
	s.mu.Lock()
	s.streams[id] = st
	s.mu.Unlock()
	s.m.streams.Inc()
	return nil
}

func (s *Server) onStreamClosed(id int64, _ *corev3.Node) {
	s.mu.Lock()
	if st, ok := s.streams[id]; ok {
		if n, ok := s.nodes[st.key]; ok && n.streams > 0 {
			n.streams--
		}
		delete(s.streams, id)
	}
	s.mu.Unlock()
	s.m.streams.Dec()
}

// onStreamRequest gives a node its snapshot on first contact and records
// ACKs and NACKs.
func (s *Server) onStreamRequest(id int64, req *discoverygrpc.DiscoveryRequest) error {
	node := req.GetNode()
	key := nodeHash{}.ID(node)
	now := time.Now()
	s.mu.Lock()
	st := s.streams[id]
	if st == nil {
		st = &streamState{sent: map[string][2]string{}}
		s.streams[id] = st
	}
	n, known := s.nodes[key]
	if s.opts.Authenticate != nil {
		if err := st.authorize(node.GetId()); err != nil {
			s.mu.Unlock()
			s.log.Warn("xds: refusing node", "node", node.GetId(), "err", err)
			return err
		}
	}
	egress, egressErr := egressOf(node)
	if egressErr != nil {
		s.mu.Unlock()
		s.log.Warn("xds: refusing node", "node", node.GetId(), "err", egressErr)
		return status.Error(codes.InvalidArgument, egressErr.Error())
	}
	changed := false
	if known && n.flavour == FlavourGRPC && req.GetTypeUrl() == listenerType {
		changed = n.subscribe(req.GetResourceNames())
	}
	if known && req.GetNode() != nil && n.egressAddr != egress {
		n.egressAddr, changed = egress, true
	}
	if known && st.authed && n.token != st.token {
		n.token, changed = st.token, true
	}
	s.mu.Unlock()
	if !known || n.currentVersion(s) == "" || changed {
		agent, err := parseAgent(node.GetId())
		if err != nil {
			s.log.Warn("xds: refusing node", "node", node.GetId(), "user_agent", node.GetUserAgentName(), "err", err)
			return status.Error(codes.InvalidArgument, err.Error())
		}
		s.mu.Lock()
		n = s.nodeLocked(key, node.GetId(), agent, flavourOf(node))
		if n.flavour == FlavourGRPC && req.GetTypeUrl() == listenerType {
			n.subscribe(req.GetResourceNames())
		}
		if req.GetNode() != nil {
			n.egressAddr = egress
		}
		if st.authed {
			n.token = st.token
		}
		s.mu.Unlock()
		s.updateMu.Lock()
		snap := s.src.Snapshot()
		var err2 error
		if snap == nil {
			err2 = errors.New("no policy is serving yet")
		} else {
			_, err2 = s.publish(context.Background(), snap, n, nil)
		}
		s.updateMu.Unlock()
		if err2 != nil {
			s.log.Error("xds: first snapshot for node", "node", key, "err", err2)
			return status.Errorf(codes.Unavailable, "no configuration for node %s: %v", key, err2)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.key == "" {
		st.key = key
		n.streams++
	}
	n.lastSeen, n.touched = now, s.opts.now()
	if req.GetResponseNonce() == "" {
		return nil // a subscription, not an answer
	}
	t := req.GetTypeUrl()
	ts := n.typeStatus(t)
	sent := st.sent[t]
	version := req.GetVersionInfo()
	if sent[0] == req.GetResponseNonce() {
		version = sent[1]
	}
	if d := req.GetErrorDetail(); d != nil {
		ts.NackVersion, ts.NackAt, ts.NackError = version, now, d.GetMessage()
		s.m.nacks.WithLabelValues(short(t)).Inc()
		if s.opts.OnNack != nil {
			s.opts.OnNack(key, t, version, d.GetMessage())
		}
		s.log.Warn("xds: node rejected configuration", "node", key, "type", short(t), "version", version,
			"serving", req.GetVersionInfo(), "error", d.GetMessage())
		return nil
	}
	ts.AckVersion, ts.AckAt = req.GetVersionInfo(), now
	s.m.acks.WithLabelValues(short(t)).Inc()
	return nil
}

func (s *Server) onStreamResponse(_ context.Context, id int64, req *discoverygrpc.DiscoveryRequest, resp *discoverygrpc.DiscoveryResponse) {
	t := resp.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return
	}
	st.sent[t] = [2]string{resp.GetNonce(), resp.GetVersionInfo()}
	if n, ok := s.nodes[st.key]; ok {
		ts := n.typeStatus(t)
		ts.SentVersion, ts.SentAt = resp.GetVersionInfo(), time.Now()
	}
	s.m.responses.WithLabelValues(short(t)).Inc()
}

// subscribe records the listener names a gRPC node asks for and reports
// whether they changed. Callers hold s.mu.
func (n *nodeState) subscribe(names []string) bool {
	names = slices.Sorted(slices.Values(names))
	if slices.Equal(names, n.subscribed) {
		return false
	}
	n.subscribed = names
	return true
}

func (n *nodeState) typeStatus(t string) *TypeStatus {
	ts, ok := n.types[t]
	if !ok {
		ts = &TypeStatus{TypeURL: t}
		n.types[t] = ts
	}
	return ts
}

// Status reports every node, sorted by node key.
func (s *Server) Status() []NodeStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]NodeStatus, 0, len(s.nodes))
	for _, n := range s.nodes {
		ns := NodeStatus{Node: n.id, Agent: n.agent, Flavour: n.flavour, Version: n.version, UpdatedAt: n.updated,
			Connected: n.streams > 0, LastSeen: n.lastSeen, Skipped: slices.Clone(n.skipped)}
		for _, ts := range n.types {
			ns.Types = append(ns.Types, *ts)
		}
		slices.SortFunc(ns.Types, func(a, b TypeStatus) int { return cmp.Compare(a.TypeURL, b.TypeURL) })
		out = append(out, ns)
	}
	slices.SortFunc(out, func(a, b NodeStatus) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Flavour, b.Flavour))
	})
	return out
}

// Resources returns the resources of a node's current snapshot by type URL
// (nil when the node has none); key is the node id, with "|grpc" appended
// for a gRPC node.
func (s *Server) Resources(key string) map[string]map[string]types.Resource {
	snap, err := s.cache.GetSnapshot(key)
	if err != nil {
		return nil
	}
	out := map[string]map[string]types.Resource{}
	for _, t := range []string{listenerType, routeType, clusterType, endpointType} {
		if r := snap.GetResources(t); len(r) > 0 {
			out[t] = r
		}
	}
	return out
}

// cacheLogger adapts slog to go-control-plane's logger (debug level for its
// chatter, warnings and errors as such).
type cacheLogger struct{ l logger }

func (c cacheLogger) Debugf(format string, args ...any) { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Infof(format string, args ...any)  { c.l.Debug(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Warnf(format string, args ...any)  { c.l.Warn(fmt.Sprintf(format, args...)) }
func (c cacheLogger) Errorf(format string, args ...any) { c.l.Error(fmt.Sprintf(format, args...)) }

// authorize checks that a stream proved the agent its node id names.
func (st *streamState) authorize(nodeID string) error {
	if !st.authed {
		return status.Error(codes.Unauthenticated, "agent not authenticated: present the agent's credential token as x-aa-credential-token metadata or an agent client certificate")
	}
	agent, err := parseAgent(nodeID)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if agent != st.agent {
		return status.Error(codes.PermissionDenied, "the node id names another agent than the stream's credential")
	}
	return nil
}
