package tracing

import (
	"context"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// serveTraced serves one unary method that reports the trace id its context
// carries, behind opts, and returns a client for it.
func serveTraced(t testing.TB, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	desc := testService("test.Trace",
		func(ctx context.Context) { grpc.SetHeader(ctx, metadata.Pairs("seen-trace", traceOf(ctx))) },
		func(ss grpc.ServerStream) error {
			return ss.SendHeader(metadata.Pairs("seen-trace", traceOf(ss.Context())))
		})
	srv := grpc.NewServer(opts...)
	srv.RegisterService(desc, struct{}{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	return serveAndDial(t, srv)
}

// traceOf renders ctx's trace as "traceid/spanid", or "" for none.
func traceOf(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.HasTraceID() {
		return ""
	}
	return sc.TraceID().String() + "/" + sc.SpanID().String()
}

// seenTrace calls the traced method with the given traceparent (none when
// empty) and returns "traceid/spanid" as the handler saw it.
func seenTrace(t *testing.T, conn *grpc.ClientConn, traceparent string) string {
	t.Helper()
	ctx := context.Background()
	if traceparent != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent)
	}
	var hdr metadata.MD
	if err := conn.Invoke(ctx, "/test.Trace/Unary", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	unary := ""
	if v := hdr.Get("seen-trace"); len(v) == 1 {
		unary = v[0]
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.Trace/Stream")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if hdr, err = st.Header(); err != nil {
		t.Fatal(err)
	}
	if v := hdr.Get("seen-trace"); len(v) != 1 || v[0] != unary {
		t.Errorf("traceparent %q: the stream saw %q, the unary call %q", traceparent, v, unary)
	}
	return unary
}

// TestCallerTraceWithTracingOff: with no collector configured, a call's
// context still carries the caller's W3C trace (so audit records and logs
// are named by it), and a call without one, or with a malformed one,
// carries none: unary calls and streams alike.
func TestCallerTraceWithTracingOff(t *testing.T) {
	tr, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	// The control: a server without the options does not see the trace.
	if got := seenTrace(t, serveTraced(t), "00-"+tid+"-"+sid+"-01"); got != "" {
		t.Fatalf("a bare server saw trace %q", got)
	}
	conn := serveTraced(t, tr.ServerOptions()...)
	if got := seenTrace(t, conn, "00-"+tid+"-"+sid+"-01"); got != tid+"/"+sid {
		t.Errorf("with a traceparent the handler saw %q, want %q", got, tid+"/"+sid)
	}
	if got := seenTrace(t, conn, ""); got != "" {
		t.Errorf("without a traceparent the handler saw %q, want none", got)
	}
	for _, bad := range []string{"garbage", "00-" + tid + "-" + sid, "00-00000000000000000000000000000000-" + sid + "-01", "ff-" + tid + "-" + sid + "-01"} {
		if got := seenTrace(t, conn, bad); got != "" {
			t.Errorf("with traceparent %q the handler saw %q, want none", bad, got)
		}
	}
}

// BenchmarkServerOptions measures what ServerOptions add to a unary call
// (the gRPC health Check) when tracing is off, against a bare server.
//
//	go test ./tracing -run '^$' -bench ServerOptions
func BenchmarkServerOptions(b *testing.B) {
	off, err := New(context.Background(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name string
		opts []grpc.ServerOption
	}{{"bare", nil}, {"tracing-off", off.ServerOptions()}, {"otelgrpc-noop", []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(off.Provider()), otelgrpc.WithPropagators(Propagator)))}}} {
		b.Run(v.name, func(b *testing.B) {
			client := healthpb.NewHealthClient(serveTraced(b, v.opts...))
			ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			b.SetParallelism(32) // 64 clients on two cores, as in the gateway benchmarks
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
