package sdkclient

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// replica answers every check and counts them.
type replica struct {
	v1.UnimplementedPolicyServiceServer
	n atomic.Int64
}

func (r *replica) CheckAction(context.Context, *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	r.n.Add(1)
	return &v1.CheckActionResponse{Decision: v1.Decision_ALLOW, DecisionId: "d"}, nil
}

func serveReplica(t *testing.T) (*replica, *grpc.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r, s := &replica{}, grpc.NewServer()
	v1.RegisterPolicyServiceServer(s, r)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return r, s, l.Addr().String()
}

// TestGatewayFailover spreads checks over two replicas and keeps every check
// answered when one of them stops abruptly.
func TestGatewayFailover(t *testing.T) {
	ra, sa, addrA := serveReplica(t)
	rb, _, addrB := serveReplica(t)
	c, err := Dial(context.Background(), Options{Gateway: addrA + ", " + addrB, Agent: "acme/eng/coder-1", NoPreflight: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	check := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := c.CheckToolCall(context.Background(), "git_status", nil); err != nil {
				t.Fatalf("check %d: %v", i, err)
			}
		}
	}
	check(100)
	if ra.n.Load() == 0 || rb.n.Load() == 0 {
		t.Fatalf("checks not spread over the replicas: a=%d b=%d", ra.n.Load(), rb.n.Load())
	}
	sa.Stop() // replica a dies: closes its listener and connections
	before := rb.n.Load()
	check(100)
	if got := rb.n.Load() - before; got != 100 {
		t.Fatalf("replica b answered %d of the 100 checks after a died", got)
	}
}
