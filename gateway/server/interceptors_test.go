package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage/memory"
	"github.com/agent-assembly/agent-assembly/tracing"
)

// TestUnaryInterceptor: a hot method gets the caller's trace and has its
// panics recovered, with no request id; any other method goes through the
// whole chain (a request id for a public method, a refusal for an operator
// method called without a key, before its handler runs).
func TestUnaryInterceptor(t *testing.T) {
	tr, err := tracing.New(t.Context(), tracing.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a, err := auth.New(auth.Options{Keys: memory.New(memory.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{log: log, tracing: tr, auth: a}
	intercept := s.unaryInterceptor()

	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", "00-"+tid+"-"+sid+"-01"))
	call := func(method string, h grpc.UnaryHandler) (any, error) {
		return intercept(ctx, "req", &grpc.UnaryServerInfo{FullMethod: method}, h)
	}

	check := authv3.Authorization_Check_FullMethodName
	if !auth.Passes(check) {
		t.Fatalf("%s is a hot method that authorization does not pass", check)
	}
	var sawTrace, sawID string
	resp, err := call(check, func(ctx context.Context, req any) (any, error) {
		sawTrace = trace.SpanContextFromContext(ctx).TraceID().String()
		sawID = tracing.RequestID(ctx)
		return "ok", nil
	})
	if err != nil || resp != "ok" {
		t.Fatalf("hot method answered %v, %v", resp, err)
	}
	if sawTrace != tid || sawID != "" {
		t.Errorf("hot method's handler saw trace %q and request id %q; want %q and none", sawTrace, sawID, tid)
	}

	_, err = call(check, func(context.Context, any) (any, error) { panic("boom") })
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), check) {
		t.Errorf("a panicking hot handler answered %v; want Internal naming the method", err)
	}
	if !strings.Contains(logs.String(), "panic in handler") || !strings.Contains(logs.String(), "boom") {
		t.Errorf("the panic was not logged: %q", logs.String())
	}

	health := "/grpc.health.v1.Health/Check"
	sawTrace, sawID = "", ""
	if _, err := call(health, func(ctx context.Context, req any) (any, error) {
		sawTrace = trace.SpanContextFromContext(ctx).TraceID().String()
		sawID = tracing.RequestID(ctx)
		return "ok", nil
	}); err != nil {
		t.Fatal(err)
	}
	if sawTrace != tid || sawID == "" {
		t.Errorf("public method's handler saw trace %q and request id %q; want %q and an id", sawTrace, sawID, tid)
	}

	ran := false
	_, err = call(v1.AdminService_ListApiKeys_FullMethodName, func(context.Context, any) (any, error) {
		ran = true
		return "ok", nil
	})
	if status.Code(err) != codes.Unauthenticated || ran {
		t.Errorf("operator method without a key: %v (handler ran: %v); want Unauthenticated before the handler", err, ran)
	}
}
