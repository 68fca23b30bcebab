package xds

import (
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

const (
	listenerType = resourcev3.ListenerType
	routeType    = resourcev3.RouteType
	clusterType  = resourcev3.ClusterType
	endpointType = resourcev3.EndpointType
)

// validator is what generated resources implement (protoc-gen-validate).
type validator interface{ ValidateAll() error }

// Check validates a snapshot before it is published: every resource passes
// its ValidateAll, and every reference resolves exactly: listeners to route
// configurations, routes to clusters, EDS clusters to endpoints, with no
// route configuration or endpoints left unreferenced. For snapshots without
// api_listeners it also runs go-control-plane's Consistent; that check
// cannot read an api_listener's route reference (it reports a false
// mismatch), so the reference walk here covers those snapshots instead.
func Check(s *cache.Snapshot) error {
	var errs []error
	hasAPIListener := false
	for _, typ := range []string{listenerType, routeType, clusterType, endpointType} {
		for name, r := range s.GetResources(typ) {
			v, ok := r.(validator)
			if !ok {
				errs = append(errs, fmt.Errorf("%s %q: not a validatable resource", short(typ), name))
				continue
			}
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %w", short(typ), name, err))
			}
			if l, ok := r.(*listenerv3.Listener); ok && l.GetApiListener() != nil {
				hasAPIListener = true
			}
		}
	}
	if err := checkReferences(s); err != nil {
		errs = append(errs, err)
	}
	if !hasAPIListener {
		if err := s.Consistent(); err != nil {
			errs = append(errs, fmt.Errorf("consistent: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkReferences walks the references between resource types.
func checkReferences(s *cache.Snapshot) error {
	var errs []error
	routes := s.GetResources(routeType)
	clusters := s.GetResources(clusterType)
	endpoints := s.GetResources(endpointType)
	usedRoutes := map[string]bool{}
	for name, r := range s.GetResources(listenerType) {
		l := r.(*listenerv3.Listener)
		for _, h := range listenerHCMs(l) {
			if h.err != nil {
				errs = append(errs, fmt.Errorf("listener %q: %w", name, h.err))
				continue
			}
			switch {
			case h.hcm.GetRds() != nil:
				rn := h.hcm.GetRds().GetRouteConfigName()
				if _, ok := routes[rn]; !ok {
					errs = append(errs, fmt.Errorf("listener %q: route configuration %q is not in the snapshot", name, rn))
				}
				usedRoutes[rn] = true
			case h.hcm.GetRouteConfig() == nil:
				errs = append(errs, fmt.Errorf("listener %q: http connection manager has neither rds nor route_config", name))
			}
		}
	}
	for name, r := range routes {
		if !usedRoutes[name] {
			errs = append(errs, fmt.Errorf("route configuration %q: no listener refers to it", name))
		}
		for _, vh := range r.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				if c := rt.GetRoute().GetCluster(); c != "" {
					if _, ok := clusters[c]; !ok {
						errs = append(errs, fmt.Errorf("route configuration %q, virtual host %q: cluster %q is not in the snapshot", name, vh.GetName(), c))
					}
				}
			}
		}
	}
	usedEndpoints := map[string]bool{}
	for name, r := range clusters {
		c := r.(*clusterv3.Cluster)
		if c.GetType() != clusterv3.Cluster_EDS || c.GetClusterType() != nil {
			continue
		}
		svc := c.GetEdsClusterConfig().GetServiceName()
		if svc == "" {
			svc = name
		}
		if _, ok := endpoints[svc]; !ok {
			errs = append(errs, fmt.Errorf("cluster %q: endpoints %q are not in the snapshot", name, svc))
		}
		usedEndpoints[svc] = true
	}
	for name, r := range endpoints {
		if !usedEndpoints[name] {
			errs = append(errs, fmt.Errorf("endpoints %q: no EDS cluster refers to them", name))
		}
		for i, l := range r.(*endpointv3.ClusterLoadAssignment).GetEndpoints() {
			if l.GetLoadBalancingWeight().GetValue() == 0 {
				errs = append(errs, fmt.Errorf("endpoints %q: locality %d has no weight (gRPC clients drop it)", name, i))
			}
		}
	}
	return errors.Join(errs...)
}

type hcmRef struct {
	hcm *hcmv3.HttpConnectionManager
	err error
}

// listenerHCMs returns the HTTP connection managers of a listener's filter
// chains or api_listener.
func listenerHCMs(l *listenerv3.Listener) []hcmRef {
	var out []hcmRef
	if a := l.GetApiListener().GetApiListener(); a != nil {
		h := &hcmv3.HttpConnectionManager{}
		if err := a.UnmarshalTo(h); err != nil {
			return []hcmRef{{err: fmt.Errorf("api_listener is not an http connection manager: %w", err)}}
		}
		return []hcmRef{{hcm: h}}
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if f.GetName() != filterHCM {
				continue
			}
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				out = append(out, hcmRef{err: fmt.Errorf("filter %s: %w", f.GetName(), err)})
				continue
			}
			out = append(out, hcmRef{hcm: h})
		}
	}
	return out
}

// short is the last element of a type URL, for logs and metric labels.
func short(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' || typeURL[i] == '/' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}

var _ types.Resource = (*listenerv3.Listener)(nil)
