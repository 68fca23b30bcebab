package envoy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// istioDocs reads the YAML documents of an istio/ file.
func istioDocs(t *testing.T, name string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile("istio/" + name)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var out []map[string]any
	for {
		var d map[string]any
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d == nil {
			continue
		}
		if d["apiVersion"] == nil || d["kind"] == nil || d["metadata"] == nil {
			t.Fatalf("%s: document without apiVersion/kind/metadata: %v", name, d)
		}
		out = append(out, d)
	}
}

func get(m any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			mm, ok := m.(map[string]any)
			if !ok {
				return nil
			}
			m = mm[k]
		case int:
			s, ok := m.([]any)
			if !ok || k >= len(s) {
				return nil
			}
			m = s[k]
		}
	}
	return m
}

// TestIstio checks the Istio examples agree with each other and with the
// gateway: one provider name, fail closed, the gateway's gRPC port, CUSTOM
// policies, and egress locked to registered hosts.
func TestIstio(t *testing.T) {
	mesh := istioDocs(t, "mesh-config.yaml")
	prov := get(mesh[0], "spec", "meshConfig", "extensionProviders", 0)
	name := get(prov, "name")
	if name != "agent-assembly" || get(prov, "envoyExtAuthzGrpc", "failOpen") != false || get(prov, "envoyExtAuthzGrpc", "port") != 50051 {
		t.Errorf("extension provider %v", prov)
	}
	policies := istioDocs(t, "authorization-policy.yaml")
	if len(policies) != 2 {
		t.Fatalf("%d AuthorizationPolicies, want 2", len(policies))
	}
	for _, p := range policies {
		if p["kind"] != "AuthorizationPolicy" || get(p, "spec", "action") != "CUSTOM" || get(p, "spec", "provider", "name") != name {
			t.Errorf("policy %v: want kind AuthorizationPolicy, action CUSTOM, provider %v", get(p, "metadata", "name"), name)
		}
	}
	kinds := map[string]int{}
	for _, d := range istioDocs(t, "egress.yaml") {
		kinds[d["kind"].(string)]++
		if d["kind"] == "Sidecar" && get(d, "spec", "outboundTrafficPolicy", "mode") != "REGISTRY_ONLY" {
			t.Errorf("Sidecar must be REGISTRY_ONLY: %v", d)
		}
	}
	for _, k := range []string{"Sidecar", "ServiceEntry", "Gateway", "VirtualService", "DestinationRule"} {
		if kinds[k] == 0 {
			t.Errorf("egress.yaml has no %s", k)
		}
	}
}
