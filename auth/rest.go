package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Routes maps a REST route (HTTP method and path template) to the gRPC
// method it calls, so the REST middleware can apply the method table:
// grpc-gateway's in-process handlers run without gRPC interceptors, and
// name their method only after the middleware has run.
type Routes map[string]string

// RoutesFromOpenAPI reads the routes from the OpenAPI (Swagger 2) document
// generated from the protos: each operation's operationId is
// Service_Method, and every service is in package pkg (e.g.
// "agentassembly.v1").
func RoutesFromOpenAPI(doc []byte, pkg string) (Routes, error) {
	var d struct {
		Paths map[string]map[string]struct {
			OperationID string `json:"operationId"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("read openapi document: %w", err)
	}
	r := make(Routes)
	for path, ops := range d.Paths {
		for verb, op := range ops {
			svc, m, ok := strings.Cut(op.OperationID, "_")
			if !ok || svc == "" || m == "" {
				return nil, fmt.Errorf("read openapi document: %s %s: operationId %q is not Service_Method", verb, path, op.OperationID)
			}
			m = strings.TrimRight(m, "0123456789") // additional bindings: Method2
			r[routeKey(strings.ToUpper(verb), path)] = "/" + pkg + "." + svc + "/" + m
		}
	}
	return r, nil
}

var captureRE = regexp.MustCompile(`\{([^}=]+)=[^}]*\}`)

func routeKey(method, template string) string {
	return method + " " + captureRE.ReplaceAllString(template, "{$1}")
}

// Method returns the gRPC method of a route, given the HTTP method and the
// path pattern grpc-gateway matched.
func (r Routes) Method(httpMethod string, pattern runtime.Pattern) (string, bool) {
	m, ok := r[routeKey(httpMethod, pattern.String())]
	return m, ok
}

// Middleware returns the grpc-gateway middleware that authorizes REST calls
// like the interceptors do gRPC calls: 401 for a missing or invalid key,
// 403 for too low a role, 503 when keys cannot be checked. A route missing
// from routes is refused (403).
func (a *Authenticator) Middleware(routes Routes) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			req := restRequest(r)
			pat, ok := runtime.HTTPPattern(r.Context())
			if ok {
				req.Method, ok = routes.Method(r.Method, pat)
			}
			if !ok {
				req.Method = r.Method + " " + r.URL.Path
			}
			ctx, err := a.Authorize(r.Context(), req)
			if err != nil {
				writeStatus(w, err)
				return
			}
			next(w, r.WithContext(ctx), params)
		}
	}
}

// Handler authorizes every request to next as a call of method (a name in
// the method table, such as MethodPprof) before serving it, with the same
// answers as Middleware: 401, 403 or 503 as a JSON status.
func (a *Authenticator) Handler(method string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req := restRequest(r)
		req.Method = method
		ctx, err := a.Authorize(r.Context(), req)
		if err != nil {
			writeStatus(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// restRequest describes the caller of an HTTP request; Method is left to
// the caller.
func restRequest(r *http.Request) Request {
	req := Request{Surface: "rest", Authorization: r.Header.Get("Authorization"), Source: hostOf(r.RemoteAddr)}
	if len(r.Header.Values("Authorization")) > 1 {
		req.Authorization = "ambiguous" // several credentials: refused as malformed
	}
	if r.TLS != nil {
		req.PeerCert = verifiedLeaf(r.TLS.VerifiedChains)
	}
	return req
}

// writeStatus writes a status error the way grpc-gateway writes errors.
func writeStatus(w http.ResponseWriter, err error) {
	st := status.Convert(err)
	code := runtime.HTTPStatusFromCode(st.Code())
	if st.Code() == codes.Unauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="agent-assembly"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": int(st.Code()), "message": st.Message(), "details": []any{}})
}
