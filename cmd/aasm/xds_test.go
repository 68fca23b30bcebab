package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// adsNode opens an ADS stream to the gateway as an Envoy node and answers
// the first listener response with ack (or a NACK carrying nackMsg).
func adsNode(t *testing.T, addr, id, nackMsg string) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: id, UserAgentName: "envoy", Metadata: &structpb.Struct{}}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	req := &discoverygrpc.DiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
	if nackMsg != "" {
		req.VersionInfo = ""
		req.ErrorDetail = &status.Status{Code: 3, Message: nackMsg}
	}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
}

func TestXDSStatus(t *testing.T) {
	addr := startGateway(t)
	adsNode(t, addr, "acme/research/researcher-1", "")
	adsNode(t, addr, "acme/eng/coder-1", "Proto constraint validation failed: test rejection")

	var out, errOut string
	var code int
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Wait for both answers to be recorded: the NACK and the other
		// node's ACK arrive on separate streams, in either order.
		code, out, errOut = run(t, "--addr", addr, "xds", "status")
		if strings.Contains(out, "test rejection") && strings.Count(out, "Listener") == 2 && researcherAcked(t, addr) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != exitDeny || !strings.Contains(out, "NODE") || !strings.Contains(out, "acme/research/researcher-1") ||
		!strings.Contains(out, "acme/eng/coder-1") || !strings.Contains(out, "test rejection") {
		t.Fatalf("xds status: exit %d (want %d: a node rejects its version)\n%s\n%s", code, exitDeny, out, errOut)
	}
	t.Log("\n" + out)

	code, out, errOut = run(t, "--addr", addr, "-o", "json", "xds", "status", "--node", "acme/research/researcher-1")
	var st struct {
		Nodes []struct {
			NodeID  string `json:"node_id"`
			Flavour string `json:"flavour"`
			Version string `json:"version"`
			Types   []struct {
				Type       string `json:"type"`
				AckVersion string `json:"ack_version"`
			} `json:"types"`
		} `json:"nodes"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 1 {
		t.Fatalf("xds status --node: exit %d\n%s\n%s", code, out, errOut)
	}
	n := st.Nodes[0]
	if n.NodeID != "acme/research/researcher-1" || n.Flavour != "envoy" || len(n.Types) != 1 || n.Types[0].AckVersion != n.Version {
		t.Errorf("node status %+v", n)
	}
}

// researcherAcked reports whether the gateway has recorded
// acme/research/researcher-1's ACK of the version it was sent.
func researcherAcked(t *testing.T, addr string) bool {
	t.Helper()
	code, out, _ := run(t, "--addr", addr, "-o", "json", "xds", "status", "--node", "acme/research/researcher-1")
	var st struct {
		Nodes []struct {
			Version string `json:"version"`
			Types   []struct {
				AckVersion string `json:"ack_version"`
			} `json:"types"`
		} `json:"nodes"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Nodes) != 1 || len(st.Nodes[0].Types) != 1 {
		return false
	}
	return st.Nodes[0].Version != "" && st.Nodes[0].Types[0].AckVersion == st.Nodes[0].Version
}
