package deploy

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// The typed configs the bootstrap names, so protojson can resolve them.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// checkEnvoyBootstrap decodes an Envoy bootstrap strictly into the v3
// Bootstrap proto (unknown fields and unknown typed configs are errors), runs
// its generated validation, and checks what this project relies on: the
// ext_authz and ext_proc filters fail closed and call a defined cluster that
// points at the gateway's gRPC port, and every route's cluster exists.
func checkEnvoyBootstrap(b []byte) errs {
	var e errs
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		e.add("parse YAML: %v", err)
		return e
	}
	var bs bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &bs); err != nil {
		e.add("decode Envoy Bootstrap: %v", err)
		return e
	}
	if err := bs.ValidateAll(); err != nil {
		e.add("validate Envoy Bootstrap: %v", err)
	}
	clusters := map[string]bool{}
	gatewayPort := ""
	for _, c := range bs.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = true
		if c.GetName() == "aa_gateway" {
			for _, ep := range c.GetLoadAssignment().GetEndpoints() {
				for _, lb := range ep.GetLbEndpoints() {
					gatewayPort = fmt.Sprint(lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
				}
			}
		}
	}
	if gatewayPort != "50051" {
		e.add("cluster aa_gateway must point at the gateway's gRPC port 50051, found %q", gatewayPort)
	}
	authz, proc := 0, 0
	for _, l := range bs.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
					continue
				}
				for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.GetRoutes() {
						if c := r.GetRoute().GetCluster(); c != "" && !clusters[c] {
							e.add("listener %s: route to undefined cluster %q", l.GetName(), c)
						}
					}
				}
				for _, hf := range hcm.GetHttpFilters() {
					var az extauthzv3.ExtAuthz
					var ep extprocv3.ExternalProcessor
					switch {
					case hf.GetTypedConfig().UnmarshalTo(&az) == nil:
						authz++
						if az.GetFailureModeAllow() {
							e.add("listener %s: ext_authz failure_mode_allow is true: the sidecar would fail open", l.GetName())
						}
						if c := az.GetGrpcService().GetEnvoyGrpc().GetClusterName(); !clusters[c] {
							e.add("listener %s: ext_authz calls undefined cluster %q", l.GetName(), c)
						}
					case hf.GetTypedConfig().UnmarshalTo(&ep) == nil:
						proc++
						if ep.GetFailureModeAllow() {
							e.add("listener %s: ext_proc failure_mode_allow is true: bodies would pass unredacted when the gateway is down", l.GetName())
						}
						if c := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); !clusters[c] {
							e.add("listener %s: ext_proc calls undefined cluster %q", l.GetName(), c)
						}
					}
				}
			}
		}
	}
	if authz == 0 {
		e.add("no ext_authz filter: requests would not be judged by the gateway")
	}
	if proc == 0 {
		e.add("no ext_proc filter: REDACT answers could not rewrite bodies")
	}
	return e
}

// checkEnvoyBootstrapFile runs checkEnvoyBootstrap on a file.
func checkEnvoyBootstrapFile(t *testing.T, p string) {
	t.Helper()
	checkEnvoyBootstrap(read(t, p)).report(t, filepath.Base(p))
}

// TestEnvoyBootstrap validates the sidecar bootstrap in deploy/envoy.
func TestEnvoyBootstrap(t *testing.T) {
	for _, p := range files(t, filepath.Join(deployDir(t), "envoy"), ".yaml") {
		checkEnvoyBootstrapFile(t, p)
	}
}

// TestEnvoyBootstrapCheckCatches shows the check fails on a misspelt field,
// an unknown filter type, a fail-open filter and a dangling cluster.
func TestEnvoyBootstrapCheckCatches(t *testing.T) {
	base := string(read(t, filepath.Join(deployDir(t), "envoy", "sidecar.yaml")))
	for _, c := range []struct{ name, from, to, want string }{
		{"misspelt field", "stat_prefix: aa_egress", "stats_prefix: aa_egress", "stats_prefix"},
		{"unknown type", "ext_authz.v3.ExtAuthz\n", "ext_authz.v3.ExtAuthzz\n", "ExtAuthzz"},
		{"fail open", "failure_mode_allow: false\n              status_on_error", "failure_mode_allow: true\n              status_on_error", "fail open"},
		{"dangling cluster", "cluster: aa_dfp", "cluster: aa_nowhere", "undefined cluster \"aa_nowhere\""},
		{"bad port", "port_value: 50051", "port_value: 50052", "gRPC port 50051"},
		{"invalid value", "connect_timeout: 1s", "connect_timeout: -1s", "ConnectTimeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.from) {
				t.Fatalf("sidecar.yaml no longer contains %q; update this case", c.from)
			}
			if e := checkEnvoyBootstrap([]byte(strings.Replace(base, c.from, c.to, 1))); !e.contains(c.want) {
				t.Errorf("found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
}
