package tracing

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// RequestIDHeader is the HTTP header and gRPC metadata key that carries a
// request id: taken from the caller when it is a plausible id, otherwise
// made here, and always echoed back in the response headers.
const RequestIDHeader = "x-request-id"

type requestIDKey struct{}

// WithRequestID returns ctx carrying id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id in ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// acceptRequestID reports whether a caller's id may be used as is: 1 to 64
// characters of letters, digits and . _ : -, so that it cannot forge log
// fields or fill the logs.
func acceptRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// requestIDFrom picks the caller's id when acceptable, else a new one.
func requestIDFrom(caller string) string {
	if acceptRequestID(caller) {
		return caller
	}
	return uuid.NewString()
}

func incomingRequestID(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// skipSet is the set of full method names an interceptor leaves alone.
type skipSet map[string]struct{}

func newSkipSet(methods []string) skipSet {
	s := make(skipSet, len(methods))
	for _, m := range methods {
		s[m] = struct{}{}
	}
	return s
}

func (s skipSet) has(method string) bool {
	_, ok := s[method]
	return ok
}

// UnaryRequestID gives every unary call a request id in its context and
// returns it in the response header. Calls to the skip methods (full names,
// "/package.Service/Method") are passed on untouched: hot paths such as a
// policy check, whose logs carry a decision id instead, pay neither for an
// id nor for a response header.
func UnaryRequestID(skip ...string) grpc.UnaryServerInterceptor {
	skipped := newSkipSet(skip)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if skipped.has(info.FullMethod) {
			return h(ctx, req)
		}
		id := requestIDFrom(incomingRequestID(ctx))
		_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, id))
		return h(WithRequestID(ctx, id), req)
	}
}

// StreamRequestID gives every stream a request id in its context and
// returns it in the response header. Streams of the skip methods are passed
// on untouched, as in UnaryRequestID.
func StreamRequestID(skip ...string) grpc.StreamServerInterceptor {
	skipped := newSkipSet(skip)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if skipped.has(info.FullMethod) {
			return h(srv, ss)
		}
		id := requestIDFrom(incomingRequestID(ss.Context()))
		_ = ss.SetHeader(metadata.Pairs(RequestIDHeader, id))
		return h(srv, contextStream{ss, WithRequestID(ss.Context(), id)})
	}
}

// contextStream is a server stream with a derived context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

// HTTPRequestID gives every HTTP request a request id in its context (which
// grpc-gateway hands on to the service) and sets it on the response.
func HTTPRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := requestIDFrom(r.Header.Get(RequestIDHeader))
		w.Header().Set(RequestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(WithRequestID(r.Context(), id)))
	})
}

// LogHandler wraps h so that every record logged with a context (the
// slog ...Context methods) carries the context's request_id and, when the
// call is traced, its trace_id and span_id.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

// Handle adds the request's ids to r.
func (l logHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := RequestID(ctx); id != "" {
		r.AddAttrs(slog.String("request_id", id))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return l.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper around the derived handler.
func (l logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{l.Handler.WithAttrs(as)}
}

// WithGroup keeps the wrapper around the derived handler.
func (l logHandler) WithGroup(name string) slog.Handler { return logHandler{l.Handler.WithGroup(name)} }
