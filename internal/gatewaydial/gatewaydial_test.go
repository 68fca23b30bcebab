package gatewaydial

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

func TestSplit(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "127.0.0.1:50051", want: []string{"127.0.0.1:50051"}},
		{in: " gw:50051 ", want: []string{"gw:50051"}},
		{in: "unix:///run/aa/gw.sock", want: []string{"unix:///run/aa/gw.sock"}},
		{in: "dns:///gw.aa.svc:50051", want: []string{"dns:///gw.aa.svc:50051"}},
		{in: "a:1,b:2", want: []string{"a:1", "b:2"}},
		{in: " a:1 , b:2 ,[::1]:3", want: []string{"a:1", "b:2", "[::1]:3"}},
		{in: "", err: "the list is empty"},
		{in: " , ", err: "entry 1 is empty"},
		{in: "a:1,,b:2", err: "entry 2 is empty"},
		{in: "a:1,", err: "entry 2 is empty"},
		{in: "a:1,b", err: `"b" is not host:port`},
		{in: "a:1,unix:///gw.sock", err: `"unix:///gw.sock" is not host:port`},
	} {
		got, err := Split(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Split(%q) = %v, %v; want error containing %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("Split(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

func TestTarget(t *testing.T) {
	target, opts, err := Target(" 127.0.0.1:50051 ")
	if err != nil || target != "127.0.0.1:50051" || len(opts) != 1 {
		t.Fatalf("one address: %q, %d options, %v", target, len(opts), err)
	}
	target, opts, err = Target("a:1,b:2")
	if err != nil || target != Scheme+":///gateways" || len(opts) != 2 {
		t.Fatalf("two addresses: %q, %d options, %v", target, len(opts), err)
	}
	// gRPC parses the service config when the client is built.
	cc, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("new client with the service config: %v", err)
	}
	_ = cc.Close()
	if _, _, err := Target("a:1,,b:2"); err == nil {
		t.Fatal("an empty entry was accepted")
	}
}

// replica answers checks; when hang is set it holds each check until its
// server stops, as a replica that dies with the check in flight.
type replica struct {
	v1.UnimplementedPolicyServiceServer
	hang     atomic.Bool
	held     atomic.Int64
	answered atomic.Int64
}

func (r *replica) CheckAction(ctx context.Context, _ *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	if r.hang.Load() {
		r.held.Add(1)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	r.answered.Add(1)
	return &v1.CheckActionResponse{Decision: v1.Decision_ALLOW, DecisionId: "d"}, nil
}

func serve(t *testing.T, r *replica) (*grpc.Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	v1.RegisterPolicyServiceServer(s, r)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return s, l.Addr().String()
}

// TestInFlightCheckRetried holds checks on replica a until it stops
// abruptly (closing its connections with the checks unanswered): every one
// of them is answered by replica b, none fails.
func TestInFlightCheckRetried(t *testing.T) {
	ra, rb := &replica{}, &replica{}
	sa, addrA := serve(t, ra)
	_, addrB := serve(t, rb)
	target, opts, err := Target(addrA + "," + addrB)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	pc := v1.NewPolicyServiceClient(cc)
	// Until both replicas have answered, both connections are not up.
	for ra.answered.Load() == 0 || rb.answered.Load() == 0 {
		if _, err := pc.CheckAction(context.Background(), &v1.CheckActionRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
	}
	ra.hang.Store(true)
	base := rb.answered.Load()
	const n = 20
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := pc.CheckAction(ctx, &v1.CheckActionRequest{}, grpc.WaitForReady(true))
			errs <- err
		}()
	}
	// round_robin sends about half of the checks to a, where they hang.
	for ra.held.Load()+rb.answered.Load()-base < n {
		time.Sleep(5 * time.Millisecond)
	}
	held := ra.held.Load()
	if held == 0 {
		t.Fatal("no check was in flight on replica a")
	}
	sa.Stop() // a dies: listener and connections closed, the held checks unanswered
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("check failed: %v", err)
		}
	}
	if got := rb.answered.Load() - base; got != n {
		t.Fatalf("replica b answered %d of %d checks (%d were held by a when it died)", got, n, held)
	}
	t.Logf("%d checks in flight on the killed replica were retried on the other", held)
}
