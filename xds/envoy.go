package xds

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"net"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dfpclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dfpcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/dynamic_forward_proxy/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/agent-assembly/agent-assembly/action"
)

// Names of the generated Envoy resources. They are the same on every node,
// so a sidecar's configuration reads the same for every agent.
const (
	// EgressListener is the listener (and route configuration) that agent
	// HTTP egress enters.
	EgressListener = "aa_egress"
	// GatewayCluster is the cluster of the gateway's gRPC listener that the
	// ext_authz and ext_proc filters call. It is sent over CDS, so it must
	// not be a static cluster of the bootstrap (which names the ADS
	// cluster aa_xds).
	GatewayCluster = "aa_gateway"
	// ForwardProxyCluster and ForwardProxyTLSCluster serve "*.suffix"
	// destinations through Envoy's dynamic forward proxy.
	ForwardProxyCluster    = "aa_dfp"
	ForwardProxyTLSCluster = "aa_dfp_tls"
	denyVirtualHost        = "aa_deny"
	dnsCacheName           = "aa_dns_cache"
)

// Filter names as Envoy knows them.
const (
	filterExtAuthz = "envoy.filters.http.ext_authz"
	filterExtProc  = "envoy.filters.http.ext_proc"
	filterDFP      = "envoy.filters.http.dynamic_forward_proxy"
	filterRouter   = "envoy.filters.http.router"
	filterHCM      = "envoy.filters.network.http_connection_manager"
	upstreamHTTP   = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// DenyBody is the JSON body of the catch-all route's 403 (a destination the
// policy does not allow, answered by Envoy itself if ext_authz let it pass).
const DenyBody = `{"decision":"deny","rule":"xds/no-route","reason":"destination is not in the agent's network allowlist"}`

// envoyGroup holds the resources shared by every agent with the same
// destinations: the listener, the clusters and the virtual hosts. The
// objects themselves are shared too (built and validated once), so a node's
// snapshot only adds its route configuration's shell.
type envoyGroup struct {
	listener *listenerv3.Listener
	clusters []types.Resource
	vhosts   []*routev3.VirtualHost
	hash     []byte
}

// envoyFixed are the resources every Envoy node gets whatever its policy,
// or that at most depend on whether wildcards are allowed.
type envoyFixed struct {
	listener *listenerv3.Listener
	gateway  *clusterv3.Cluster
	dfp      *clusterv3.Cluster
	dfpTLS   *clusterv3.Cluster
	deny     *routev3.VirtualHost
	hash     []byte
}

// destEntry is the cluster (nil for a wildcard) and virtual host of one
// destination, validated, with a hash of both.
type destEntry struct {
	cluster  *clusterv3.Cluster
	vhost    *routev3.VirtualHost
	hash     []byte
	lastPass uint64
}

// buildFixed builds and validates the fixed resources.
func buildFixed(o *Options) (*envoyFixed, error) {
	f := &envoyFixed{deny: denyHost()}
	var err error
	if f.listener, err = egressListener(o); err != nil {
		return nil, err
	}
	if f.gateway, err = gatewayCluster(o); err != nil {
		return nil, err
	}
	if f.dfp, err = forwardProxyCluster(ForwardProxyCluster, false, o); err != nil {
		return nil, err
	}
	if f.dfpTLS, err = forwardProxyCluster(ForwardProxyTLSCluster, true, o); err != nil {
		return nil, err
	}
	h := sha256.New()
	for _, r := range []validatedMessage{f.listener, f.gateway, f.dfp, f.dfpTLS, f.deny} {
		if err := r.ValidateAll(); err != nil {
			return nil, fmt.Errorf("invalid fixed resource: %w", err)
		}
		if err := hashInto(h, r); err != nil {
			return nil, err
		}
	}
	f.hash = h.Sum(nil)
	return f, nil
}

// buildDest builds and validates the resources of one destination.
func buildDest(o *Options, d Destination) (*destEntry, error) {
	e := &destEntry{}
	cluster := clusterName(d)
	switch {
	case d.Wildcard() && d.TLS():
		cluster = ForwardProxyTLSCluster
	case d.Wildcard():
		cluster = ForwardProxyCluster
	default:
		c, err := upstreamCluster(o, d)
		if err != nil {
			return nil, err
		}
		if err := c.ValidateAll(); err != nil {
			return nil, fmt.Errorf("cluster for %s: %w", d, err)
		}
		e.cluster = c
	}
	e.vhost = &routev3.VirtualHost{
		Name:    "allow|" + d.String(),
		Domains: domains(d),
		Routes: []*routev3.Route{{
			Name:  "allow",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				Timeout:          durationpb.New(o.UpstreamTimeout),
			}},
		}},
	}
	if err := e.vhost.ValidateAll(); err != nil {
		return nil, fmt.Errorf("virtual host for %s: %w", d, err)
	}
	h := sha256.New()
	if e.cluster != nil {
		if err := hashInto(h, e.cluster); err != nil {
			return nil, err
		}
	}
	if err := hashInto(h, e.vhost); err != nil {
		return nil, err
	}
	e.hash = h.Sum(nil)
	return e, nil
}

// newEnvoyGroup assembles a group from the fixed resources and the entries
// of its destinations (in destination order).
func newEnvoyGroup(f *envoyFixed, dests []Destination, entries []*destEntry) *envoyGroup {
	g := &envoyGroup{listener: f.listener, clusters: []types.Resource{f.gateway}}
	h := sha256.New()
	h.Write(f.hash)
	var dfp, dfpTLS bool
	for i, e := range entries {
		h.Write(e.hash)
		if e.cluster != nil {
			g.clusters = append(g.clusters, e.cluster)
		} else if dests[i].TLS() {
			dfpTLS = true
		} else {
			dfp = true
		}
		g.vhosts = append(g.vhosts, e.vhost)
	}
	if dfp {
		g.clusters = append(g.clusters, f.dfp)
	}
	if dfpTLS {
		g.clusters = append(g.clusters, f.dfpTLS)
	}
	g.vhosts = append(g.vhosts, f.deny)
	h.Write([]byte{byte(len(g.clusters)), byte(len(g.clusters) >> 8)})
	g.hash = h.Sum(nil)
	return g
}

type validatedMessage interface {
	proto.Message
	ValidateAll() error
}

func hashInto(h hash.Hash, m proto.Message) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("hash resource: %w", err)
	}
	h.Write(b)
	return nil
}

// ContextExtToken is the ext_authz context extension that carries the
// node's credential token (see routeConfig); extauthz reads it.
const ContextExtToken = "aa_credential_token"

// routeConfig is the agent's route configuration: the group's virtual hosts
// and the agent's identity as ext_authz context extensions, so the gateway
// knows who asks from the route the request took, not from anything the
// agent sends.
//
// With token (the credential the node's ADS stream presented), the context
// extensions carry it as ContextExtToken: the gateway trusts the identity
// of a check only when a credential corroborates it, and the route is where
// Envoy can add one the agent never sees.
func (g *envoyGroup) routeConfig(agent action.AgentID, token string, extProc bool) (*routev3.RouteConfiguration, error) {
	ext := map[string]string{"aa_org": agent.Org, "aa_team": agent.Team, "aa_agent": agent.Agent}
	if token != "" {
		ext[ContextExtToken] = token
	}
	per, err := anypb.New(&extauthzv3.ExtAuthzPerRoute{Override: &extauthzv3.ExtAuthzPerRoute_CheckSettings{
		CheckSettings: &extauthzv3.CheckSettings{ContextExtensions: ext},
	}})
	if err != nil {
		return nil, fmt.Errorf("marshal ext_authz per-route config: %w", err)
	}
	filters := map[string]*anypb.Any{filterExtAuthz: per}
	if token != "" && extProc {
		// The external processor's stream presents the token too.
		proc, err := anypb.New(&extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Overrides{
			Overrides: &extprocv3.ExtProcOverrides{GrpcInitialMetadata: []*corev3.HeaderValue{{Key: TokenMetadata, Value: token}}},
		}})
		if err != nil {
			return nil, fmt.Errorf("marshal ext_proc per-route config: %w", err)
		}
		filters[filterExtProc] = proc
	}
	return &routev3.RouteConfiguration{
		Name:                 EgressListener,
		VirtualHosts:         g.vhosts,
		TypedPerFilterConfig: filters,
		ValidateClusters:     wrapperspb.Bool(false),
	}, nil
}

// TokenMetadata is the gRPC metadata key of an agent's credential token
// (gateway.CredentialTokenHeader).
const TokenMetadata = "x-aa-credential-token"

// domains are the Host/:authority values a destination's virtual host
// matches: host:port always, and the bare host on the port a client means by
// omitting it (443 for TLS origination, else 80 or the only port).
func domains(d Destination) []string {
	hp := net.JoinHostPort(d.Host, strconv.FormatUint(uint64(d.Port), 10))
	if d.Port == 443 || d.Port == 80 {
		return []string{d.hostForDomain(), hp}
	}
	return []string{hp}
}

func (d Destination) hostForDomain() string {
	if strings.Contains(d.Host, ":") {
		return "[" + d.Host + "]"
	}
	return d.Host
}

func denyHost() *routev3.VirtualHost {
	return &routev3.VirtualHost{
		Name:    denyVirtualHost,
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:  "deny",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
				Status: 403,
				Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: DenyBody}},
			}},
		}},
		ResponseHeadersToAdd: []*corev3.HeaderValueOption{{
			Header:       &corev3.HeaderValue{Key: "content-type", Value: "application/json"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}, {
			Header:       &corev3.HeaderValue{Key: "x-aa-decision", Value: "deny"},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}
}

// clusterName names the cluster of an exact destination.
func clusterName(d Destination) string { return "out|" + d.String() }

// gatewayRetryOn lists when Envoy retries a call to the gateway on another
// host of aa_gateway: the connection failed or was reset (the replica died,
// with the call in flight or before it), the stream was refused, or the
// replica answered UNAVAILABLE, CANCELLED or RESOURCE_EXHAUSTED (draining,
// overloaded). A retried Check may be decided (and audited) twice when the
// first replica decided it but died before answering; the audit log then
// shows both.
const gatewayRetryOn = "connect-failure,reset,refused-stream,unavailable,cancelled,resource-exhausted"

// gatewayGRPC is the ext_authz and ext_proc filters' gRPC service: the
// aa_gateway cluster, a per-call timeout (retries included) and up to two
// retries 10-50 ms apart.
func gatewayGRPC(timeout time.Duration) *corev3.GrpcService {
	return &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: GatewayCluster}},
		Timeout:         durationpb.New(timeout),
		RetryPolicy: &corev3.RetryPolicy{
			RetryOn:    gatewayRetryOn,
			NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &corev3.BackoffStrategy{
				BaseInterval: durationpb.New(10 * time.Millisecond),
				MaxInterval:  durationpb.New(50 * time.Millisecond),
			},
		},
	}
}

// gatewayOutlierDetection ejects a gateway replica from aa_gateway for a
// while after two connection failures or three 5xx (gRPC UNAVAILABLE is a
// 503) in a row, so new calls stop going to a replica that died: at most
// half of the replicas at a time, checked every second, ejected for 5 s at
// first.
func gatewayOutlierDetection() *clusterv3.OutlierDetection {
	return &clusterv3.OutlierDetection{
		Consecutive_5Xx:                    wrapperspb.UInt32(3),
		ConsecutiveGatewayFailure:          wrapperspb.UInt32(2),
		EnforcingConsecutive_5Xx:           wrapperspb.UInt32(100),
		Interval:                           durationpb.New(time.Second),
		BaseEjectionTime:                   durationpb.New(5 * time.Second),
		MaxEjectionPercent:                 wrapperspb.UInt32(50),
		EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(100),
	}
}

func typed(name string, m proto.Message) (*hcmv3.HttpFilter, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s config: %w", name, err)
	}
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// egressListener is the HTTP listener agents send egress to (HTTP_PROXY, or
// the kernel layer's redirect): ext_authz, then ext_proc (optional), then
// the dynamic forward proxy filter and the router, with routes over RDS.
func egressListener(o *Options) (*listenerv3.Listener, error) {
	authz, err := typed(filterExtAuthz, &extauthzv3.ExtAuthz{
		Services:               &extauthzv3.ExtAuthz_GrpcService{GrpcService: gatewayGRPC(o.AuthzTimeout)},
		TransportApiVersion:    corev3.ApiVersion_V3,
		FailureModeAllow:       false,
		WithRequestBody:        &extauthzv3.BufferSettings{MaxRequestBytes: o.MaxRequestBodyBytes, AllowPartialMessage: true},
		StatusOnError:          &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
		IncludePeerCertificate: true,
	})
	if err != nil {
		return nil, err
	}
	filters := []*hcmv3.HttpFilter{authz}
	if !o.DisableExtProc {
		proc, err := typed(filterExtProc, &extprocv3.ExternalProcessor{
			GrpcService:      gatewayGRPC(o.AuthzTimeout),
			FailureModeAllow: false,
			ProcessingMode: &extprocv3.ProcessingMode{
				RequestHeaderMode:  extprocv3.ProcessingMode_SEND, // ext_proc reads ext_authz's decision from them
				RequestBodyMode:    extprocv3.ProcessingMode_BUFFERED,
				ResponseHeaderMode: extprocv3.ProcessingMode_SEND,
				ResponseBodyMode:   extprocv3.ProcessingMode_BUFFERED,
			},
			MessageTimeout: durationpb.New(o.AuthzTimeout),
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, proc)
	}
	dfp, err := typed(filterDFP, &dfpfilterv3.FilterConfig{
		ImplementationSpecifier: &dfpfilterv3.FilterConfig_DnsCacheConfig{DnsCacheConfig: dnsCache()},
	})
	if err != nil {
		return nil, err
	}
	router, err := typed(filterRouter, &routerv3.Router{})
	if err != nil {
		return nil, err
	}
	filters = append(filters, dfp, router)
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: EgressListener,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		// Requests in absolute form (GET http://host/path) are what
		// clients send to an HTTP_PROXY.
		HttpProtocolOptions: &corev3.Http1ProtocolOptions{AllowAbsoluteUrl: wrapperspb.Bool(true)},
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: EgressListener,
			ConfigSource:    adsSource(),
		}},
		HttpFilters: filters,
	})
	if err != nil {
		return nil, fmt.Errorf("marshal http connection manager: %w", err)
	}
	host, port, err := splitHostPort(o.EgressAddr)
	if err != nil {
		return nil, fmt.Errorf("egress address: %w", err)
	}
	return &listenerv3.Listener{
		Name:    EgressListener,
		Address: socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{Name: filterHCM, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}},
		}},
	}, nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func dnsCache() *dfpcommonv3.DnsCacheConfig {
	return &dfpcommonv3.DnsCacheConfig{Name: dnsCacheName, DnsLookupFamily: clusterv3.Cluster_V4_PREFERRED}
}

func httpOptions(m proto.Message) (map[string]*anypb.Any, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("marshal upstream HTTP options: %w", err)
	}
	return map[string]*anypb.Any{upstreamHTTP: a}, nil
}

// gatewayCluster reaches the gateway's gRPC listener over HTTP/2: a host per
// address the gateway's name resolves to, round robin, with outlier
// detection.
func gatewayCluster(o *Options) (*clusterv3.Cluster, error) {
	host, port, err := splitHostPort(o.GatewayAddr)
	if err != nil {
		return nil, fmt.Errorf("gateway address: %w", err)
	}
	opts, err := httpOptions(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		}},
	})
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                          GatewayCluster,
		ConnectTimeout:                durationpb.New(o.ConnectTimeout),
		LbPolicy:                      clusterv3.Cluster_ROUND_ROBIN,
		TypedExtensionProtocolOptions: opts,
		LoadAssignment:                singleEndpoint(GatewayCluster, host, port),
		OutlierDetection:              gatewayOutlierDetection(),
	}
	setDiscovery(c, host)
	if c.GetType() == clusterv3.Cluster_LOGICAL_DNS {
		// Every address the name resolves to is a replica (a headless
		// Service, several A records): STRICT_DNS makes each one a host,
		// which retries and outlier detection can move away from.
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}
	return c, nil
}

// setDiscovery makes c STATIC for an IP literal and LOGICAL_DNS otherwise.
func setDiscovery(c *clusterv3.Cluster, host string) {
	t := clusterv3.Cluster_LOGICAL_DNS
	if _, err := netipParse(host); err == nil {
		t = clusterv3.Cluster_STATIC
	} else {
		c.DnsLookupFamily = clusterv3.Cluster_V4_PREFERRED
	}
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: t}
}

func singleEndpoint(cluster, host string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}},
			}},
		}},
	}
}

// upstreamCluster is an exact destination: DNS-resolved (or static for an
// IP literal), with TLS origination and SNI for port 443.
func upstreamCluster(o *Options, d Destination) (*clusterv3.Cluster, error) {
	name := clusterName(d)
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(o.ConnectTimeout),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment: singleEndpoint(name, d.Host, d.Port),
	}
	setDiscovery(c, d.Host)
	if d.TLS() {
		ts, err := tlsSocket(o, d.Host)
		if err != nil {
			return nil, err
		}
		c.TransportSocket = ts
	}
	return c, nil
}

// tlsSocket originates TLS with the system CAs; sni, when set, is sent and
// the upstream certificate must name it.
func tlsSocket(o *Options, sni string) (*corev3.TransportSocket, error) {
	common := &tlsv3.CommonTlsContext{
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.CAFile}},
		}},
	}
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: common}
	if sni != "" {
		ctx.Sni = sni
		common.GetValidationContext().MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_DNS,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: sni}},
		}}
	}
	a, err := anypb.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("marshal upstream TLS context: %w", err)
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

// forwardProxyCluster resolves the request's host on demand; with TLS it
// sends the host as SNI and checks the certificate against it.
func forwardProxyCluster(name string, tls bool, o *Options) (*clusterv3.Cluster, error) {
	cfg, err := anypb.New(&dfpclusterv3.ClusterConfig{
		ClusterImplementationSpecifier: &dfpclusterv3.ClusterConfig_DnsCacheConfig{DnsCacheConfig: dnsCache()},
	})
	if err != nil {
		return nil, fmt.Errorf("marshal forward proxy cluster config: %w", err)
	}
	c := &clusterv3.Cluster{
		Name:           name,
		ConnectTimeout: durationpb.New(o.ConnectTimeout),
		LbPolicy:       clusterv3.Cluster_CLUSTER_PROVIDED,
		ClusterDiscoveryType: &clusterv3.Cluster_ClusterType{ClusterType: &clusterv3.Cluster_CustomClusterType{
			Name: "envoy.clusters.dynamic_forward_proxy", TypedConfig: cfg,
		}},
	}
	if tls {
		opts, err := httpOptions(&upstreamhttpv3.HttpProtocolOptions{
			UpstreamHttpProtocolOptions: &corev3.UpstreamHttpProtocolOptions{AutoSni: true, AutoSanValidation: true},
			UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &corev3.Http1ProtocolOptions{}},
			}},
		})
		if err != nil {
			return nil, err
		}
		c.TypedExtensionProtocolOptions = opts
		if c.TransportSocket, err = tlsSocket(o, ""); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%q has a bad port", addr)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%q has no host", addr)
	}
	return host, uint32(port), nil
}
