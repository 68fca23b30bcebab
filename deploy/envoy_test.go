package deploy

import (
	"fmt"
	"os"
	"os/exec"
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
	// Under xDS the bootstrap holds only the ADS cluster; the listener and
	// the aa_gateway cluster that ext_authz calls come from the gateway.
	gatewayCluster := "aa_gateway"
	ads := bs.GetDynamicResources().GetAdsConfig()
	if ads != nil {
		gs := ads.GetGrpcServices()
		if len(gs) != 1 {
			e.add("ads_config: want one gRPC service, found %d", len(gs))
			return e
		}
		gatewayCluster = gs[0].GetEnvoyGrpc().GetClusterName()
		if gatewayCluster == "aa_gateway" {
			e.add("the ADS cluster must not be named aa_gateway: that cluster comes over CDS and may not shadow a static one")
		}
		if bs.GetDynamicResources().GetLdsConfig().GetAds() == nil || bs.GetDynamicResources().GetCdsConfig().GetAds() == nil {
			e.add("lds_config and cds_config must come over ADS")
		}
	}
	for _, c := range bs.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = true
		if c.GetName() == gatewayCluster {
			for _, ep := range c.GetLoadAssignment().GetEndpoints() {
				for _, lb := range ep.GetLbEndpoints() {
					gatewayPort = fmt.Sprint(lb.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue())
				}
			}
		}
	}
	if gatewayPort != "50051" {
		e.add("cluster %s must point at the gateway's gRPC port 50051, found %q", gatewayCluster, gatewayPort)
	}
	if ads != nil {
		return e
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
						if ep.GetProcessingMode().GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND {
							e.add("listener %s: ext_proc request_header_mode is not SEND: the gateway's ext_proc reads ext_authz's decision from the request headers and refuses every request without them", l.GetName())
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

// renderSidecar runs envoy/sidecar.sh (from dir) with env, as the sidecar
// container does, but with ENVOY_BIN=true so it only renders, and returns
// the configuration it would hand to Envoy.
func renderSidecar(t *testing.T, dir string, env map[string]string, static bool) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "envoy.yaml")
	args := []string{filepath.Join(dir, "sidecar.sh")}
	if static {
		args = append(args, "--static")
	}
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "ENVOY_BIN=true", "AA_ENVOY_CONFIG=" + out}
	for k, v := range env {
		if k == "AA_CREDENTIAL_TOKEN_FILE" {
			// The file an init step (aa-runtime token --out) leaves in the
			// running container; here a stand-in token.
			v = filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(v, []byte("tok.en-1\n"), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh %v: %v\n%s", args, err, b)
	}
	return read(t, out)
}

// sidecarEnv is the sidecar environment of the compose example.
var sidecarEnv = map[string]string{"AA_AGENT_ID": "acme/research/researcher-1", "AA_GATEWAY_HOST": "aa-gateway", "AA_GATEWAY_PORT": "50051", "AA_EGRESS_PORT": "15001"}

// genStaticSidecar renders envoy/static.yaml for the compose example.
func genStaticSidecar(t *testing.T) []byte {
	b := renderSidecar(t, filepath.Join(repoRoot(t), "envoy"), sidecarEnv, true)
	return append([]byte("# Generated from envoy/static.yaml (envoy/sidecar.sh --static with AA_AGENT_ID=acme/research/researcher-1,\n# AA_GATEWAY_HOST=aa-gateway) by `go test ./deploy -run TestGenerated -update`; do not edit.\n# The static fallback, ready for `envoy -c` where no shell renders the template.\n"), b...)
}

// TestEnvoyBootstrap validates both sidecar configurations (xDS and static)
// as envoy/sidecar.sh renders them, and the pre-rendered static one.
func TestEnvoyBootstrap(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "envoy")
	checkEnvoyBootstrap(renderSidecar(t, dir, sidecarEnv, false)).report(t, "envoy/bootstrap.yaml rendered")
	checkEnvoyBootstrap(renderSidecar(t, dir, sidecarEnv, true)).report(t, "envoy/static.yaml rendered")
	checkEnvoyBootstrap(read(t, filepath.Join(deployDir(t), "envoy", "sidecar.yaml"))).report(t, "deploy/envoy/sidecar.yaml")
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
