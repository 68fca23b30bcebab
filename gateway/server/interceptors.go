package server

import (
	"context"

	"google.golang.org/grpc"

	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/tracing"
)

// unaryInterceptor is the gateway's one unary interceptor. Every call's
// context gets the caller's trace (tracing off; tracing.CallerTrace), then
// the call runs through request ids, panic recovery and authorization, in
// that order. A hot method (hotMethods) that authorization passes untouched
// (auth.Passes) and that gets no request id only has its panics recovered:
// the other two links would leave it as it is, and grpc-go's chain of four
// interceptors allocated three closures per call to get there (about 1 µs
// of CPU of each ext_authz check under load, the links' calls included).
func (s *Server) unaryInterceptor() grpc.UnaryServerInterceptor {
	recovered := recoverUnary(s.log)
	chain := chainUnary(tracing.UnaryRequestID(hotMethods...), recovered, s.auth.UnaryInterceptor())
	hot := make(map[string]bool, len(hotMethods))
	for _, m := range hotMethods {
		hot[m] = auth.Passes(m)
	}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx = s.tracing.CallerTrace(ctx)
		if hot[info.FullMethod] {
			return recovered(ctx, req, info, h)
		}
		return chain(ctx, req, info, h)
	}
}

// chainUnary runs ints in order around a call's handler, as grpc-go's
// ChainUnaryInterceptor does.
func chainUnary(ints ...grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return ints[0](ctx, req, info, chainLink(ints, 1, info, h))
	}
}

// chainLink is the handler ints[i-1] calls: ints[i] around the rest, or h.
func chainLink(ints []grpc.UnaryServerInterceptor, i int, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) grpc.UnaryHandler {
	if i == len(ints) {
		return h
	}
	return func(ctx context.Context, req any) (any, error) {
		return ints[i](ctx, req, info, chainLink(ints, i+1, info, h))
	}
}
