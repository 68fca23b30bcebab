package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// composeFile is the part of the Compose specification that compose.yaml
// uses. Decoding is strict (unknown keys are errors), so a misspelt key fails
// here instead of being ignored by docker compose. Extension fields (x-…)
// are allowed at the top level only.
type composeFile struct {
	Name       string                    `yaml:"name"`
	Services   map[string]composeService `yaml:"services"`
	Networks   map[string]*composeNet    `yaml:"networks"`
	Volumes    map[string]*struct{}      `yaml:"volumes"`
	Extensions map[string]any            `yaml:",inline"`
}

type composeNet struct {
	Driver string `yaml:"driver"`
}

type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Restart     string            `yaml:"restart"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	NetworkMode string            `yaml:"network_mode"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   yaml.Node         `yaml:"depends_on"`
	Networks    yaml.Node         `yaml:"networks"`
	Healthcheck *struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Timeout  string   `yaml:"timeout"`
		Retries  int      `yaml:"retries"`
	} `yaml:"healthcheck"`
	Profiles []string `yaml:"profiles"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

// decodeCompose decodes a compose file strictly.
func decodeCompose(b []byte) (*composeFile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c composeFile
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode compose file: %w", err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode compose file: more than one YAML document")
	}
	for k := range c.Extensions {
		if !strings.HasPrefix(k, "x-") {
			return nil, fmt.Errorf("decode compose file: unknown top-level key %q", k)
		}
	}
	return &c, nil
}

// names returns the service names a depends_on or networks node lists
// (sequence or mapping form).
func names(n yaml.Node) []string {
	var out []string
	switch n.Kind {
	case yaml.SequenceNode:
		for _, c := range n.Content {
			out = append(out, c.Value)
		}
	case yaml.MappingNode:
		for i := 0; i < len(n.Content); i += 2 {
			out = append(out, n.Content[i].Value)
		}
	}
	return out
}

// checkCompose checks the references inside a compose file (relative to
// dir) and that the gateway services are configured as the code accepts.
func checkCompose(t *testing.T, dir string, c *composeFile) errs {
	var e errs
	if len(c.Services) == 0 {
		e.add("no services")
	}
	gateways := map[string]map[string]string{}
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if s.Image == "" && s.Build == nil {
			e.add("service %s: neither image nor build", name)
		}
		if s.Image != "" && !strings.Contains(filepath.Base(s.Image), ":") {
			e.add("service %s: image %q has no tag", name, s.Image)
		}
		if s.Build != nil {
			df := filepath.Join(dir, s.Build.Context, s.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				e.add("service %s: build.dockerfile %s does not exist (relative to build.context %s)", name, s.Build.Dockerfile, s.Build.Context)
			}
		}
		for _, d := range names(s.DependsOn) {
			if _, ok := c.Services[d]; !ok {
				e.add("service %s: depends_on names no service %q", name, d)
			}
		}
		if peer, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
			if _, ok := c.Services[peer]; !ok {
				e.add("service %s: network_mode names no service %q", name, peer)
			}
		}
		for _, n := range names(s.Networks) {
			if _, ok := c.Networks[n]; !ok {
				e.add("service %s: network %q is not declared under networks:", name, n)
			}
		}
		for _, v := range s.Volumes {
			src, _, ok := strings.Cut(v, ":")
			if !ok {
				e.add("service %s: volume %q is not SOURCE:TARGET", name, v)
				continue
			}
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
					e.add("service %s: bind mount source %s does not exist", name, src)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				e.add("service %s: named volume %q is not declared under volumes:", name, src)
			}
		}
		if strings.Contains(s.Image, "aa-gateway") {
			gateways[name] = s.Environment
			for _, err := range checkGatewayEnv(s.Environment) {
				e.add("service %s: %v", name, err)
			}
		}
	}
	if len(gateways) < 2 {
		e.add("want at least two gateway replicas, found %d", len(gateways))
	}
	ids, keys := map[string]string{}, map[string]bool{}
	for name, env := range gateways {
		if !strings.HasPrefix(env["AA_STORE"], "postgres://") || !strings.HasPrefix(env["AA_COUNTERS"], "redis://") {
			e.add("service %s: replicas must share PostgreSQL (AA_STORE) and Redis (AA_COUNTERS)", name)
		}
		id := env["AA_REPLICA_ID"]
		if id == "" {
			e.add("service %s: AA_REPLICA_ID unset (replicas in containers would be named by random host names)", name)
		} else if other, dup := ids[id]; dup {
			e.add("services %s and %s share AA_REPLICA_ID %q: their audit chains would collide", name, other, id)
		}
		ids[id] = name
		keys[env["AA_SECRETS_KEY_FILE"]] = true
	}
	if len(keys) > 1 {
		e.add("gateway replicas read different secrets key files %v: secrets sealed by one could not be opened by another", sortedKeys(keys))
	}
	return e
}

// TestCompose decodes compose.yaml strictly and checks its references and
// every service's configuration against the code.
func TestCompose(t *testing.T) {
	dir := deployDir(t)
	c, err := decodeCompose(read(t, filepath.Join(dir, "compose.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	checkCompose(t, dir, c).report(t, "compose.yaml")

	// Clients: the example agent reads sdkclient's variables, aasm its own.
	agentEnv := sourceEnv(t, "examples/agent", "sdkclient")
	aasmEnv := sourceEnv(t, "cmd/aasm")
	for name, s := range c.Services {
		var known map[string]bool
		switch {
		case strings.Contains(s.Image, "example-agent"):
			known = agentEnv
		case strings.Contains(s.Image, "aasm"):
			known = aasmEnv
		default:
			continue
		}
		for k := range s.Environment {
			if strings.HasPrefix(k, "AA_") && !known[k] {
				t.Errorf("compose.yaml: service %s sets %s, which its program never reads", name, k)
			}
		}
	}

	// The Envoy sidecar runs envoy/sidecar.sh from a mounted envoy/; its
	// rendered configuration (xDS, or static with --static) validates, it
	// names the same agent as the agent sharing its network namespace, and it
	// reaches the gateways through their network alias.
	env, ok := c.Services["envoy"]
	if !ok {
		t.Fatal("compose.yaml: no envoy service")
	}
	if len(env.Entrypoint) != 2 {
		t.Fatalf("compose.yaml: envoy entrypoint %v, want [/bin/sh …/sidecar.sh]", env.Entrypoint)
	}
	scriptDir := filepath.Dir(env.Entrypoint[1])
	src := ""
	for _, v := range env.Volumes {
		if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == scriptDir {
			src = filepath.Join(dir, parts[0])
		}
	}
	if src == "" {
		t.Fatalf("compose.yaml: envoy runs %s but nothing is mounted at %s", env.Entrypoint[1], scriptDir)
	}
	static := len(env.Command) > 0 && env.Command[0] == "--static"
	checkEnvoyBootstrap(renderSidecar(t, src, env.Environment, static)).report(t, "compose.yaml envoy")
	agent := c.Services["agent"]
	if agent.NetworkMode != "service:envoy" {
		t.Errorf("compose.yaml: agent network_mode %q: the sidecar's egress listener is on its loopback, so the agent must share its network namespace", agent.NetworkMode)
	}
	if agent.Environment["AA_AGENT_ID"] != env.Environment["AA_AGENT_ID"] {
		t.Errorf("compose.yaml: sidecar AA_AGENT_ID %q differs from the agent's %q", env.Environment["AA_AGENT_ID"], agent.Environment["AA_AGENT_ID"])
	}
	for name, s := range c.Services {
		if strings.Contains(s.Image, "aa-gateway") && !slices.Contains(aliases(s.Networks), env.Environment["AA_GATEWAY_HOST"]) {
			t.Errorf("compose.yaml: %s is not reachable as AA_GATEWAY_HOST %q (no such network alias)", name, env.Environment["AA_GATEWAY_HOST"])
		}
		if strings.Contains(s.Image, "aa-gateway") && s.Environment["AA_XDS_ADVERTISE_ADDR"] != env.Environment["AA_GATEWAY_HOST"]+":"+env.Environment["AA_GATEWAY_PORT"] {
			t.Errorf("compose.yaml: %s advertises %q over xDS, but the sidecar reaches it at %s:%s", name, s.Environment["AA_XDS_ADVERTISE_ADDR"], env.Environment["AA_GATEWAY_HOST"], env.Environment["AA_GATEWAY_PORT"])
		}
	}
}

// aliases lists the network aliases of a service's networks mapping.
func aliases(n yaml.Node) []string {
	var out []string
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 1; i < len(n.Content); i += 2 {
		var v struct {
			Aliases []string `yaml:"aliases"`
		}
		if err := n.Content[i].Decode(&v); err == nil {
			out = append(out, v.Aliases...)
		}
	}
	return out
}

// TestComposeCheckCatches shows the compose checks fail on the mistakes they
// exist for.
func TestComposeCheckCatches(t *testing.T) {
	base := string(read(t, filepath.Join(deployDir(t), "compose.yaml")))
	for _, c := range []struct{ name, from, to, want string }{
		{"unknown key", "restart: on-failure", "restrat: on-failure", "field restrat not found"},
		{"unknown setting", "AA_LOG_FORMAT: json", "AA_LOG_FORMATS: json", "AA_LOG_FORMATS is not an aa-gateway setting"},
		{"invalid value", "AA_LOG_FORMAT: json", "AA_LOG_FORMAT: xml", "--log-format: must be text or json"},
		{"remote without allow", "AA_ALLOW_REMOTE: \"true\"", "AA_ALLOW_REMOTE: \"false\"", "--allow-remote"},
		{"no advertise addr", "AA_XDS_ADVERTISE_ADDR: aa-gateway:50051", "AA_XDS_ADVERTISE_ADDRESS: aa-gateway:50051", "wildcard address"},
		{"same replica id", "AA_REPLICA_ID: gateway-2", "AA_REPLICA_ID: gateway-1", "share AA_REPLICA_ID"},
		{"missing dockerfile", "deploy/docker/agent.Dockerfile", "deploy/docker/agnet.Dockerfile", "agnet.Dockerfile does not exist"},
		{"undeclared volume", "- redis-data:/data", "- redis-dta:/data", "named volume \"redis-dta\""},
		{"bad depends_on", "envoy: {condition: service_started}", "envoyy: {condition: service_started}", "no service \"envoyy\""},
		{"bad network_mode", "network_mode: service:envoy", "network_mode: service:envoyy", "network_mode names no service \"envoyy\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.from) {
				t.Fatalf("compose.yaml no longer contains %q; update this case", c.from)
			}
			bad := strings.Replace(base, c.from, c.to, 1)
			cf, err := decodeCompose([]byte(bad))
			var e errs
			if err != nil {
				e = errs{err}
			} else {
				e = checkCompose(t, deployDir(t), cf)
			}
			if !e.contains(c.want) {
				t.Errorf("found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
}
