package main

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// startNamedGateway starts a gateway whose replica id is gw-test.
func startNamedGateway(t *testing.T) string {
	t.Helper()
	return servertest.Start(t, "../../examples/policies", func(c *server.Config) { c.ReplicaID, c.AgentAuth = "gw-test", "off" })
}

// TestStatus runs aasm status against a real gateway: the table (golden),
// the JSON for scripts, and exit 3 with advice when nothing answers.
func TestStatus(t *testing.T) {
	addr := startNamedGateway(t)
	var st struct {
		Healthy       bool     `json:"healthy"`
		ReplicaID     string   `json:"replica_id"`
		Store         string   `json:"store"`
		PolicyVersion string   `json:"policy_version"`
		Replicas      []string `json:"replicas"`
		Durability    string   `json:"audit_durability"`
		TokenKeys     []string `json:"token_key_ids"`
		CheckpointKey string   `json:"audit_checkpoint_key_id"`
	}
	out := mustBin(t, exitAllow, "--addr", addr, "-o", "json", "status")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if !st.Healthy || st.ReplicaID != "gw-test" || st.Store != "memory:" || st.PolicyVersion == "" ||
		len(st.Replicas) != 1 || st.Replicas[0] != "gw-test" || st.Durability != "sync" || len(st.TokenKeys) != 1 || len(st.CheckpointKey) != 16 {
		t.Fatalf("status -o json: %+v", st)
	}
	out = mustBin(t, exitAllow, "--addr", addr, "status")
	golden(t, "status.golden", normalize(out, map[string]string{addr: "<ADDR>", st.PolicyVersion: "<POLICY>", server.Version: "<VERSION>",
		st.TokenKeys[0]: "<TOKEN-KEY>", st.CheckpointKey: "<CHECKPOINT-KEY>"}))

	out = mustBin(t, exitAllow, "--addr", addr, "-o", "yaml", "status")
	if !strings.Contains(out, "replica_id: gw-test") {
		t.Fatalf("status -o yaml lacks the replica:\n%s", out)
	}

	code, _, errOut := runBin(t, "--addr", "127.0.0.1:1", "--timeout", "2s", "status")
	if code != exitError || !strings.Contains(errOut, "cannot reach the gateway at 127.0.0.1:1") || !strings.Contains(errOut, "--addr") {
		t.Fatalf("status without a gateway: exit %d\n%s", code, errOut)
	}
}

// TestNewCommandsHelp: every new command's help has an example.
func TestNewCommandsHelp(t *testing.T) {
	for _, name := range []string{"status", "logs", "login", "logout"} {
		code, out, _ := run(t, name, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "aasm "+name) {
			t.Fatalf("%s --help: exit %d\n%s", name, code, out)
		}
	}
}

// TestStatusCountsEnvoyNodes: an Envoy node with an open ADS stream shows
// in ENVOY NODES.
func TestStatusCountsEnvoyNodes(t *testing.T) {
	addr := startNamedGateway(t)
	adsNode(t, addr, "acme/research/researcher-1", "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, out, _ := run(t, "--addr", addr, "-o", "json", "status")
		var st struct {
			Envoys int `json:"connected_envoy_nodes"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		if st.Envoys == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connected_envoy_nodes = %d after 10s, want 1", st.Envoys)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, out, _ := run(t, "--addr", addr, "status"); !strings.Contains(out, "1 connected to this replica") {
		t.Fatalf("status table:\n%s", out)
	}
}

// unhealthyAdmin is an AdminService that reports an unhealthy replica.
type unhealthyAdmin struct {
	v1.UnimplementedAdminServiceServer
}

func (unhealthyAdmin) GetStatus(context.Context, *v1.GetStatusRequest) (*v1.GatewayStatus, error) {
	return &v1.GatewayStatus{ReplicaId: "sick", Healthy: false, Replicas: []string{"sick"}}, nil
}

// TestStatusUnhealthyExit1 is a unit test of the exit status and advice for
// an unhealthy replica (a real gateway cannot be made unhealthy on demand
// in a test: it refuses to start without a policy and a store).
func TestStatusUnhealthyExit1(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	v1.RegisterAdminServiceServer(s, unhealthyAdmin{})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	code, out, errOut := run(t, "--addr", l.Addr().String(), "status")
	if code != exitDeny || !strings.Contains(out, "HEALTHY           NO") || !strings.Contains(errOut, "unhealthy") || !strings.Contains(errOut, "/readyz") {
		t.Fatalf("unhealthy status: exit %d (want %d)\n%s\n%s", code, exitDeny, out, errOut)
	}
}
