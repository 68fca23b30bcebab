package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcxds "google.golang.org/grpc/xds"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

// TestXDSServedByGateway: a real gateway serves ADS on its gRPC listener; a
// grpc-go xDS client resolves an allowed destination through it, its ACKs
// show in GetXdsStatus, and a policy file edit reaches it as a new version.
func TestXDSServedByGateway(t *testing.T) {
	bl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bs := grpc.NewServer()
	healthpb.RegisterHealthServer(bs, health.NewServer())
	go func() { _ = bs.Serve(bl) }()
	t.Cleanup(bs.Stop)
	port := bl.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	write := func(extra string) {
		t.Helper()
		body := fmt.Sprintf(`apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: team-a}
spec:
  scope: {level: team, org: acme, team: team-a}
  default: deny
  network:
    allowlist:
      - {host: 127.0.0.1, ports: [%d]}
%s`, port, extra)
		if err := os.WriteFile(filepath.Join(dir, "team-a.yaml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	// grpc-go's xDS client here has no agent credential (in token mode it
	// would present an agent certificate); agentauth_test.go covers ADS
	// authentication.
	addr := servertest.Start(t, dir, func(c *server.Config) { c.AgentAuth = "off" })

	bootstrap := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}], "node": {"id": "acme/team-a/agent-1"}}`, addr)
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(fmt.Sprintf("xds:///127.0.0.1:%d", port), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("RPC through the gateway's xDS: %v", err)
	}

	admin, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	xs := v1.NewXdsServiceClient(admin)
	acked := func() (string, error) {
		st, err := xs.GetXdsStatus(ctx, &v1.GetXdsStatusRequest{NodeId: "acme/team-a/agent-1"})
		if err != nil {
			return "", err
		}
		if len(st.Nodes) != 1 {
			return "", fmt.Errorf("%d nodes", len(st.Nodes))
		}
		n := st.Nodes[0]
		if n.Flavour != "grpc" || !n.Connected || len(n.Types) != 4 {
			return "", fmt.Errorf("node %v", n)
		}
		for _, ts := range n.Types {
			if ts.AckVersion != n.Version {
				return "", fmt.Errorf("%s acked %q, want %q", ts.Type, ts.AckVersion, n.Version)
			}
		}
		return n.Version, nil
	}
	var v1Version string
	waitFor(t, func() error { v, err := acked(); v1Version = v; return err })

	write(fmt.Sprintf("      - {host: 127.0.0.2, ports: [%d]}\n", port))
	waitFor(t, func() error {
		v, err := acked()
		if err == nil && v == v1Version {
			err = fmt.Errorf("still at %s", v)
		}
		return err
	})
}

func waitFor(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestXDSConfigValidate(t *testing.T) {
	for _, tc := range []struct{ advertise, egress, want string }{
		{"gw", "127.0.0.1:15001", `--xds-advertise-addr: must be host:port, not "gw"`},
		{"", ":15001", `--xds-egress-addr: must be host:port, not ":15001"`},
		{"gw:0", "127.0.0.1:15001", `--xds-advertise-addr: "gw:0" has a bad port`},
	} {
		cfg := server.DefaultConfig()
		cfg.XDSAdvertiseAddr, cfg.XDSEgressAddr = tc.advertise, tc.egress
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("advertise %q egress %q: %v, want %q", tc.advertise, tc.egress, err, tc.want)
		}
	}
}
