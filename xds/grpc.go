package xds

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Locality is a weighted group of endpoint addresses of a destination.
type Locality struct {
	Region, Zone string
	// Weight is the locality's share of traffic; it must be positive
	// (gRPC ignores localities of weight 0).
	Weight uint32
	Addrs  []netip.Addr
}

// EndpointSource returns the localities serving a destination.
type EndpointSource func(ctx context.Context, d Destination) ([]Locality, error)

// Resolver looks host names up; *net.Resolver implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DNSEndpoints returns an EndpointSource that resolves a destination's host
// with r (an IP literal is used as is) into one locality of weight 1.
func DNSEndpoints(r Resolver) EndpointSource {
	return func(ctx context.Context, d Destination) ([]Locality, error) {
		if a, err := netip.ParseAddr(d.Host); err == nil {
			return []Locality{{Region: "aa", Zone: "static", Weight: 1, Addrs: []netip.Addr{a}}}, nil
		}
		addrs, err := r.LookupNetIP(ctx, "ip", d.Host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", d.Host, err)
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		return []Locality{{Region: "aa", Zone: "dns", Weight: 1, Addrs: slices.Compact(addrs)}}, nil
	}
}

// GRPCName is the xDS name of a destination for gRPC clients: the listener a
// target xds:///host:port asks for, and the route configuration, cluster and
// endpoints it leads to.
func GRPCName(d Destination) string { return d.String() }

// grpcResources builds the gRPC-flavoured resources of exact destinations:
// per destination an api_listener (HTTP connection manager with the router
// only, the filters gRPC supports), a route configuration, an EDS cluster
// and its endpoints as IP literals in weighted localities. Wildcard
// destinations have no single service to resolve and are skipped; a
// destination whose endpoints cannot be found is left out (a gRPC client
// then reports the listener as not found) and its error returned in skipped.
func grpcResources(ctx context.Context, eps EndpointSource, dests []Destination) (res map[string][]types.Resource, skipped []error, err error) {
	res = map[string][]types.Resource{}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, nil, fmt.Errorf("marshal router config: %w", err)
	}
	for _, d := range dests {
		if d.Wildcard() {
			continue
		}
		locs, lerr := eps(ctx, d)
		if lerr == nil && len(locs) == 0 {
			lerr = fmt.Errorf("no endpoints for %s", d)
		}
		if lerr != nil {
			skipped = append(skipped, lerr)
			continue
		}
		name := GRPCName(d)
		hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
			StatPrefix: name,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				RouteConfigName: name, ConfigSource: adsSource(),
			}},
			HttpFilters: []*hcmv3.HttpFilter{{Name: filterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		})
		if err != nil {
			return nil, nil, fmt.Errorf("marshal api listener: %w", err)
		}
		res[listenerType] = append(res[listenerType], &listenerv3.Listener{
			Name:        name,
			ApiListener: &listenerv3.ApiListener{ApiListener: hcm},
		})
		res[routeType] = append(res[routeType], &routev3.RouteConfiguration{
			Name: name,
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    name,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
					}},
				}},
			}},
		})
		res[clusterType] = append(res[clusterType], &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
			LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		})
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
		for i, l := range locs {
			if l.Weight == 0 {
				return nil, nil, fmt.Errorf("endpoints of %s: locality %d (%s/%s) has weight 0", d, i, l.Region, l.Zone)
			}
			le := &endpointv3.LocalityLbEndpoints{
				Locality:            &corev3.Locality{Region: l.Region, Zone: l.Zone},
				LoadBalancingWeight: wrapperspb.UInt32(l.Weight),
			}
			for _, a := range l.Addrs {
				le.LbEndpoints = append(le.LbEndpoints, &endpointv3.LbEndpoint{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(a.Unmap().String(), d.Port),
					}},
					LoadBalancingWeight: wrapperspb.UInt32(1),
				})
			}
			cla.Endpoints = append(cla.Endpoints, le)
		}
		res[endpointType] = append(res[endpointType], cla)
	}
	return res, skipped, nil
}

// withRefusals adds, for every listener name a gRPC node subscribes to that
// the policy does not allow, a listener whose route configuration has no
// route: the client's RPCs fail at once with "no matching route" instead of
// waiting for the resource to time out, and a destination the policy stops
// allowing is cut off even by clients that keep deleted resources (gRFC A88
// clients without fail_on_data_errors). res is not modified.
func withRefusals(res map[string][]types.Resource, subscribed []string) (map[string][]types.Resource, error) {
	have := map[string]bool{}
	for _, r := range res[listenerType] {
		have[r.(*listenerv3.Listener).GetName()] = true
	}
	var missing []string
	for _, n := range subscribed {
		if !have[n] && n != "" && n != "*" {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return res, nil
	}
	out := make(map[string][]types.Resource, len(res))
	for t, rs := range res {
		out[t] = slices.Clone(rs)
	}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, fmt.Errorf("marshal router config: %w", err)
	}
	for _, name := range missing {
		rc := "refused|" + name
		hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
			StatPrefix:     rc,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rc, ConfigSource: adsSource()}},
			HttpFilters:    []*hcmv3.HttpFilter{{Name: filterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
		})
		if err != nil {
			return nil, fmt.Errorf("marshal api listener: %w", err)
		}
		out[listenerType] = append(out[listenerType], &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}})
		out[routeType] = append(out[routeType], &routev3.RouteConfiguration{
			Name:         rc,
			VirtualHosts: []*routev3.VirtualHost{{Name: "refused", Domains: []string{"*"}}},
		})
	}
	return out, nil
}
