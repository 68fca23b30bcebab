package tracing

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
)

var reUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// startLogServer serves a unary method and a server stream, each logging
// one JSON record with its context, behind the request id interceptors
// (which skip the methods named in skip).
func startLogServer(t *testing.T, log *slog.Logger, skip ...string) *grpc.ClientConn {
	t.Helper()
	desc := testService("test.Logs", func(ctx context.Context) { log.InfoContext(ctx, "unary handled") },
		func(ss grpc.ServerStream) error {
			log.InfoContext(ss.Context(), "stream handled")
			return nil
		})
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(UnaryRequestID(skip...)), grpc.ChainStreamInterceptor(StreamRequestID(skip...)))
	srv.RegisterService(desc, struct{}{})
	return serveAndDial(t, srv)
}

// testService describes a service named name with a unary method "Unary"
// (Empty in and out) that calls unary with its context, behind the server's
// interceptors, and a server stream "Stream" served by stream.
func testService(name string, unary func(context.Context), stream func(grpc.ServerStream) error) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: name,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Unary", Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := &emptypb.Empty{}
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) {
				unary(ctx)
				return &emptypb.Empty{}, nil
			}
			if ic == nil {
				return h(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/" + name + "/Unary"}, h)
		}}},
		Streams: []grpc.StreamDesc{{StreamName: "Stream", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error { return stream(ss) }}},
	}
}

// serveAndDial serves srv on a loopback port until the test ends and
// returns a client connection to it.
func serveAndDial(t testing.TB, srv *grpc.Server) *grpc.ClientConn {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestRequestIDsInGRPCLogs calls a real gRPC server: a unary call's and a
// stream's log records carry the request id the response header returns,
// the caller's own id when it is plausible, a fresh UUID otherwise.
func TestRequestIDsInGRPCLogs(t *testing.T) {
	buf := &syncbuf.Buffer{}
	log := slog.New(LogHandler(slog.NewJSONHandler(buf, nil)))
	conn := startLogServer(t, log)

	cases := []struct {
		name, sent string
		want       func(string) bool
	}{
		{"caller's id", "req-42.a:b_c", func(id string) bool { return id == "req-42.a:b_c" }},
		{"no id", "", reUUID.MatchString},
		{"forged log field", `x" "level":"ERROR`, reUUID.MatchString},
		{"too long", strings.Repeat("a", 65), reUUID.MatchString},
	}
	for i, c := range cases {
		ctx := context.Background()
		if c.sent != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, c.sent)
		}
		var hdr metadata.MD
		if err := conn.Invoke(ctx, "/test.Logs/Unary", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr)); err != nil {
			t.Fatal(err)
		}
		got := hdr.Get(RequestIDHeader)
		if len(got) != 1 || !c.want(got[0]) {
			t.Fatalf("%s: response header %v", c.name, got)
		}
		recs := buf.JSONRecords(t, "unary handled")
		if len(recs) != i+1 || recs[i]["request_id"] != got[0] {
			t.Fatalf("%s: log records %v, want the last with request_id %s", c.name, recs, got[0])
		}
	}

	st, err := conn.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, "/test.Logs/Stream")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	hdr, err := st.Header()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RecvMsg(&emptypb.Empty{}); err == nil {
		t.Fatal("the stream sent a message")
	}
	id := hdr.Get(RequestIDHeader)
	recs := buf.JSONRecords(t, "stream handled")
	if len(id) != 1 || !reUUID.MatchString(id[0]) || len(recs) != 1 || recs[0]["request_id"] != id[0] {
		t.Fatalf("stream: header %v, log records %v", id, recs)
	}
}

// TestRequestIDSkippedMethods calls methods the interceptors skip: no id is
// made, none is echoed and the log records carry none, even when the caller
// sends one.
func TestRequestIDSkippedMethods(t *testing.T) {
	buf := &syncbuf.Buffer{}
	log := slog.New(LogHandler(slog.NewJSONHandler(buf, nil)))
	conn := startLogServer(t, log, "/test.Logs/Unary", "/test.Logs/Stream")

	ctx := metadata.AppendToOutgoingContext(context.Background(), RequestIDHeader, "req-1")
	var hdr metadata.MD
	if err := conn.Invoke(ctx, "/test.Logs/Unary", &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	recs := buf.JSONRecords(t, "unary handled")
	if got := hdr.Get(RequestIDHeader); len(got) != 0 || len(recs) != 1 || recs[0]["request_id"] != nil {
		t.Fatalf("skipped unary call: header %v, log records %v; want neither to carry a request id", got, recs)
	}
	st, err := conn.NewStream(context.Background(), &grpc.StreamDesc{ServerStreams: true}, "/test.Logs/Stream")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := st.RecvMsg(&emptypb.Empty{}); err == nil {
		t.Fatal("the stream sent a message")
	}
	hdr, _ = st.Header()
	recs = buf.JSONRecords(t, "stream handled")
	if got := hdr.Get(RequestIDHeader); len(got) != 0 || len(recs) != 1 || recs[0]["request_id"] != nil {
		t.Fatalf("skipped stream: header %v, log records %v; want neither to carry a request id", got, recs)
	}
}

// TestRequestIDsInHTTPLogs does the same through the HTTP middleware.
func TestRequestIDsInHTTPLogs(t *testing.T) {
	buf := &syncbuf.Buffer{}
	log := slog.New(LogHandler(slog.NewJSONHandler(buf, nil)))
	srv := httptest.NewServer(HTTPRequestID(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.WarnContext(r.Context(), "http handled")
	})))
	defer srv.Close()
	for i, sent := range []string{"abc-1", "", "bad id with spaces"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		if sent != "" {
			req.Header.Set("X-Request-Id", sent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.Header.Get(RequestIDHeader)
		if sent == "abc-1" && got != sent || sent != "abc-1" && !reUUID.MatchString(got) {
			t.Fatalf("sent %q, response X-Request-Id %q", sent, got)
		}
		recs := buf.JSONRecords(t, "http handled")
		if len(recs) != i+1 || recs[i]["request_id"] != got {
			t.Fatalf("sent %q: log records %v, want the last with request_id %s", sent, recs, got)
		}
	}
}

// TestLogHandlerAddsTraceIDs logs within a traced context, through a
// handler derived with WithAttrs: the record carries the trace and span ids.
func TestLogHandlerAddsTraceIDs(t *testing.T) {
	buf := &syncbuf.Buffer{}
	log := slog.New(LogHandler(slog.NewJSONHandler(buf, nil))).With("component", "test")
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, TraceFlags: trace.FlagsSampled})
	ctx := WithRequestID(trace.ContextWithSpanContext(context.Background(), sc), "r1")
	log.InfoContext(ctx, "traced")
	log.Info("untraced")
	recs := buf.JSONRecords(t, "traced")
	if len(recs) != 1 || recs[0]["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || recs[0]["span_id"] != "00f067aa0ba902b7" ||
		recs[0]["request_id"] != "r1" || recs[0]["component"] != "test" {
		t.Fatalf("traced record %v", recs)
	}
	if recs := buf.JSONRecords(t, "untraced"); len(recs) != 1 || recs[0]["request_id"] != nil || recs[0]["trace_id"] != nil {
		t.Fatalf("untraced record %v", recs)
	}
}
