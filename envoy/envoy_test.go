package envoy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/xds"
)

var agent = action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}

// decode parses rendered YAML strictly (unknown fields fail) into Envoy's
// Bootstrap and runs its generated validation.
func decode(t *testing.T, y []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(y, &v); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("bootstrap fails Envoy's validation: %v", err)
	}
	return b
}

func TestBootstrap(t *testing.T) {
	y, err := Render(BootstrapYAML, Vars{Agent: agent, Gateway: "aa-gateway.aa-system.svc:50051", Token: "aa1.eyJqdGkiOiJ4In0.c2ln-_"})
	if err != nil {
		t.Fatal(err)
	}
	b := decode(t, y)
	if b.GetNode().GetId() != agent.String() {
		t.Errorf("node id %q", b.GetNode().GetId())
	}
	if e := b.GetNode().GetMetadata().GetFields()[xds.EgressMetadataKey].GetStringValue(); e != "127.0.0.1:15001" {
		t.Errorf("node metadata %s = %q, want 127.0.0.1:15001", xds.EgressMetadataKey, e)
	}
	ads := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()
	if len(ads) != 1 || ads[0].GetEnvoyGrpc().GetClusterName() != "aa_xds" {
		t.Fatalf("ADS config %v", b.GetDynamicResources().GetAdsConfig())
	}
	// The ADS stream presents the agent's credential token.
	if md := ads[0].GetInitialMetadata(); len(md) != 1 || md[0].GetKey() != "x-aa-credential-token" || md[0].GetValue() != "aa1.eyJqdGkiOiJ4In0.c2ln-_" {
		t.Errorf("ADS initial metadata %v, want the credential token", md)
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == xds.GatewayCluster {
			t.Errorf("static cluster %q would shadow the one xDS sends", c.GetName())
		}
	}
	addr := b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if addr.GetAddress() != "aa-gateway.aa-system.svc" || addr.GetPortValue() != 50051 {
		t.Errorf("gateway address %v", addr)
	}
	if a := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); a != "127.0.0.1" {
		t.Errorf("admin listens on %q, want loopback", a)
	}
}

func TestStatic(t *testing.T) {
	y, err := Render(StaticYAML, Vars{Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	b := decode(t, y)
	l := b.GetStaticResources().GetListeners()[0]
	h := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	authz := &extauthzv3.ExtAuthz{}
	if h.GetHttpFilters()[0].GetName() != "envoy.filters.http.ext_authz" || h.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(authz) != nil {
		t.Fatalf("first filter is %q, want ext_authz", h.GetHttpFilters()[0].GetName())
	}
	if authz.GetFailureModeAllow() || authz.GetGrpcService().GetEnvoyGrpc().GetClusterName() != xds.GatewayCluster {
		t.Errorf("ext_authz must fail closed and call %s: %v", xds.GatewayCluster, authz)
	}
	per := &extauthzv3.ExtAuthzPerRoute{}
	if err := h.GetRouteConfig().GetTypedPerFilterConfig()["envoy.filters.http.ext_authz"].UnmarshalTo(per); err != nil {
		t.Fatal(err)
	}
	if ext := per.GetCheckSettings().GetContextExtensions(); ext["aa_org"] != "acme" || ext["aa_team"] != "research" || ext["aa_agent"] != "researcher-1" {
		t.Errorf("context extensions %v", ext)
	}
}

func TestRenderRejects(t *testing.T) {
	if _, err := Render(BootstrapYAML, Vars{Agent: action.AgentID{Agent: "x"}}); err == nil || !strings.Contains(err.Error(), "not org/team/agent") {
		t.Errorf("bad agent: %v", err)
	}
	if _, err := Render(BootstrapYAML, Vars{Agent: agent, Gateway: "nohost"}); err == nil || !strings.Contains(err.Error(), `gateway "nohost" is not host:port`) {
		t.Errorf("bad gateway: %v", err)
	}
	if _, err := Render(BootstrapYAML, Vars{Agent: agent, Token: "aa1.x\"\n"}); err == nil || !strings.Contains(err.Error(), "credential token has characters") {
		t.Errorf("Render accepted a token that breaks the YAML: %v", err)
	}
	if _, err := Render([]byte("x: ${AA_NOPE}"), Vars{Agent: agent}); err == nil || !strings.Contains(err.Error(), "${AA_NOPE}") {
		t.Errorf("unknown placeholder: %v", err)
	}
}

// TestSidecarScript: sidecar.sh renders exactly what Render does.
func TestSidecarScript(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh on PATH")
	}
	for _, tc := range []struct {
		args []string
		tmpl []byte
	}{{nil, BootstrapYAML}, {[]string{"--static"}, StaticYAML}} {
		out := filepath.Join(t.TempDir(), "envoy.yaml")
		cmd := exec.Command("./sidecar.sh", tc.args...)
		cmd.Env = append(os.Environ(), "AA_AGENT_ID="+agent.String(), "AA_GATEWAY_HOST=gw.example", "AA_GATEWAY_PORT=6000",
			"AA_CREDENTIAL_TOKEN=aa1.abc.d-_", "ENVOY_BIN=true", "AA_ENVOY_CONFIG="+out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sidecar.sh %v: %v\n%s", tc.args, err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		want, err := Render(tc.tmpl, Vars{Agent: agent, Gateway: "gw.example:6000", Token: "aa1.abc.d-_"})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("sidecar.sh %v and Render disagree:\n%s\n---\n%s", tc.args, got, want)
		}
	}
	cmd := exec.Command("./sidecar.sh")
	cmd.Env = append(os.Environ(), "AA_AGENT_ID=acme/only-two", "ENVOY_BIN=true")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "is not org/team/agent") {
		t.Errorf("sidecar.sh accepted a bad agent id: %v %s", err, b)
	}
}
