// Package tracing sets up OpenTelemetry tracing for the gateway: spans for
// every gRPC call, exported over OTLP/gRPC to a collector. It is off unless
// an endpoint is configured; off, a call's context still carries the
// caller's W3C trace (so audit records and logs are named by it), read by
// an interceptor that costs a metadata lookup instead of the OpenTelemetry
// stats handler. It also gives calls request ids, echoed to the caller and
// added to the log records made with the call's context (requestid.go).
package tracing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Options configures tracing.
type Options struct {
	// Endpoint is the OTLP/gRPC collector as host:port; empty turns tracing off.
	Endpoint string
	// Insecure sends spans without TLS (a collector on loopback or in the pod).
	Insecure bool
	// SampleRatio is the share of new traces sampled (0..1); a request that
	// arrives with a sampled parent is always sampled. Zero means 1.
	SampleRatio float64
	// ServiceName, Version and Replica describe this process in every span.
	ServiceName, Version, Replica string
}

// Tracing is a configured tracer provider.
type Tracing struct {
	tp       trace.TracerProvider
	shutdown func(context.Context) error
	// on is false when no collector is configured.
	on bool
}

// Propagator reads and writes W3C traceparent/tracestate headers.
var Propagator = propagation.TraceContext{}

// New builds the tracer provider. With no endpoint it returns a Tracing
// whose provider records nothing.
func New(ctx context.Context, o Options) (*Tracing, error) {
	if o.Endpoint == "" {
		return &Tracing{tp: noop.NewTracerProvider(), shutdown: func(context.Context) error { return nil }}, nil
	}
	if o.SampleRatio < 0 || o.SampleRatio > 1 {
		return nil, fmt.Errorf("tracing: sample ratio %v is not between 0 and 1", o.SampleRatio)
	}
	if o.SampleRatio == 0 {
		o.SampleRatio = 1
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(o.Endpoint), otlptracegrpc.WithTimeout(5 * time.Second)}
	if o.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", o.Endpoint, err)
	}
	res := resource.NewSchemaless(
		attribute.String("service.name", o.ServiceName),
		attribute.String("service.version", o.Version),
		attribute.String("service.instance.id", o.Replica),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(o.SampleRatio))),
	)
	return &Tracing{tp: tp, shutdown: tp.Shutdown, on: true}, nil
}

// Provider returns the tracer provider.
func (t *Tracing) Provider() trace.TracerProvider { return t.tp }

// ServerOptions instrument a gRPC server: one span per call, continuing the
// caller's trace from its traceparent metadata. With tracing off they only
// put the caller's trace, if any, in each call's context: the OpenTelemetry
// stats handler with a no-op provider cost 7-12 µs per call on the build
// machines (BenchmarkServerOptions), a quarter of a gRPC round trip.
func (t *Tracing) ServerOptions() []grpc.ServerOption {
	if t.on {
		return t.StatsHandler()
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unaryCallerTrace), grpc.ChainStreamInterceptor(streamCallerTrace)}
}

// StatsHandler is ServerOptions without the interceptors: the OpenTelemetry
// stats handler with tracing on, nothing with it off. A server that runs
// its own interceptor puts CallerTrace in it instead, and saves a link in
// its chain of interceptors (grpc-go allocates one per link per call).
func (t *Tracing) StatsHandler() []grpc.ServerOption {
	if !t.on {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.tp), otelgrpc.WithPropagators(Propagator)))}
}

// CallerTrace returns the context a call's handler gets with StatsHandler's
// options: with tracing off, ctx with the remote span context of the
// call's traceparent metadata (when it has a valid one); with tracing on,
// ctx itself (the stats handler has already started the call's span).
func (t *Tracing) CallerTrace(ctx context.Context) context.Context {
	if t.on {
		return ctx
	}
	return callerTrace(ctx)
}

// callerTrace returns ctx with the remote span context of the call's
// traceparent metadata, or ctx itself when it has none (or a malformed one).
func callerTrace(ctx context.Context) context.Context {
	// Only the two W3C headers are read: FromIncomingContext would copy
	// every header of every call.
	tp := metadata.ValueFromIncomingContext(ctx, "traceparent")
	if len(tp) == 0 {
		return ctx
	}
	carrier := propagation.MapCarrier{"traceparent": tp[0]}
	if ts := metadata.ValueFromIncomingContext(ctx, "tracestate"); len(ts) > 0 {
		carrier["tracestate"] = ts[0]
	}
	return Propagator.Extract(ctx, carrier)
}

// StreamInterceptor puts CallerTrace in a stream's context: for a server
// that uses StatsHandler's options and its own unary interceptor.
func (t *Tracing) StreamInterceptor() grpc.StreamServerInterceptor {
	if t.on {
		return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, ss)
		}
	}
	return streamCallerTrace
}

func unaryCallerTrace(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	return h(callerTrace(ctx), req)
}

func streamCallerTrace(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if ctx := callerTrace(ss.Context()); ctx != ss.Context() {
		ss = contextStream{ss, ctx}
	}
	return h(srv, ss)
}

// Shutdown flushes the spans not yet exported, within ctx.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if err := t.shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("tracing: flush spans: %w", err)
	}
	return nil
}
