package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	procv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/api/openapi"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage"
)

// testAdminKey is the bootstrap admin key of every startGateway gateway
// (the same public test key as servertest.AdminKey).
const testAdminKey = "aak_00000000000000ad_dGVzdC1vbmx5LWFkbWluLWtleS1kby1ub3QtdXNlISE"

// bearerCreds sends an API key on every call of a connection.
type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerCreds) RequireTransportSecurity() bool { return false }

func keyCreds(key string) grpc.DialOption { return grpc.WithPerRPCCredentials(bearerCreds(key)) }

// adminDo sends req with the test admin key.
func adminDo(req *http.Request) (*http.Response, error) {
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	return http.DefaultClient.Do(req)
}

func adminGet(url string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return adminDo(req)
}

func adminPost(url, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	return adminDo(req)
}

// credential is one way a caller presents itself in the matrix.
type credential struct {
	name  string
	key   string // "" sends no Authorization
	role  auth.Role
	agent bool // key is an agent's credential token, also sent as x-aa-credential-token over gRPC
}

// matrixCredentials creates viewer, operator and admin keys and a revoked
// key on g, registers an agent, and returns them with no key and a garbled
// one. The agent's credential token is presented as a bearer key too: an
// agent credential never opens an operator method.
func matrixCredentials(t *testing.T, g *testGateway) []credential {
	t.Helper()
	admin := v1.NewAdminServiceClient(g.conn)
	ctx := t.Context()
	mk := func(name, role string) string {
		k, err := admin.CreateApiKey(ctx, &v1.CreateApiKeyRequest{Name: name, Role: role})
		if err != nil {
			t.Fatalf("create %s key: %v", role, err)
		}
		return k.GetSecret()
	}
	revoked := mk("revoked", "admin")
	if _, err := admin.RevokeApiKey(ctx, &v1.RevokeApiKeyRequest{Id: strings.Split(revoked, "_")[1]}); err != nil {
		t.Fatal(err)
	}
	return []credential{
		{"no key", "", auth.RoleNone, false},
		{"garbled", "aak_garbled", auth.RoleNone, false},
		{"revoked", revoked, auth.RoleNone, false},
		{"viewer", mk("matrix-viewer", "viewer"), auth.RoleViewer, false},
		{"operator", mk("matrix-operator", "operator"), auth.RoleOperator, false},
		{"admin", mk("matrix-admin", "admin"), auth.RoleAdmin, false},
		{name: "agent token", key: register(t, g, agent("acme", "eng", "matrix-agent"), nil).token, role: auth.RoleNone, agent: true},
	}
}

// TestAuthorizationMatrixGRPC calls every method registered on a real
// gateway's gRPC server with every kind of credential. Public methods pass
// without one; agent methods never succeed on an operator key; role
// methods pass exactly for roles at or above theirs (a pass is any code
// but Unauthenticated/PermissionDenied: empty requests may still fail
// validation).
func TestAuthorizationMatrixGRPC(t *testing.T) {
	g := startGateway(t, examplesDir(t), func(c *Config) { c.AgentAuth = "token" })
	creds := matrixCredentials(t, g)
	conn, err := grpc.NewClient(g.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One refusal of each kind before the matrix, while the audit bound
	// (a burst of 10 per source) certainly has room for both.
	if _, err := v1.NewAdminServiceClient(conn).GetStatus(t.Context(), &v1.GetStatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetStatus without a key: %v", err)
	}
	if _, err := v1.NewPolicyServiceClient(conn).ApplyPolicy(withKey(t.Context(), creds[3].key), &v1.ApplyPolicyRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ApplyPolicy with a viewer key: %v", err)
	}

	type call struct {
		method string
		class  auth.Class
		cred   credential
		code   codes.Code
		msg    string
		denied bool // an Envoy call answered OK with an in-band denial
	}
	var calls []*call
	var streams = map[string]grpc.StreamDesc{}
	for svc, info := range g.srv.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			full := "/" + svc + "/" + m.Name
			class := auth.Classify(full)
			if class == auth.ClassUnknown {
				t.Errorf("%s is served but missing from the method table (auth/methods.go)", full)
				continue
			}
			if m.IsClientStream || m.IsServerStream {
				streams[full] = grpc.StreamDesc{ClientStreams: m.IsClientStream, ServerStreams: m.IsServerStream}
			}
			for _, c := range creds {
				calls = append(calls, &call{method: full, class: class, cred: c})
			}
		}
	}
	if len(calls) < 7*50 {
		t.Fatalf("only %d calls: services missing from GetServiceInfo?", len(calls))
	}
	// Calls run in parallel: an authorized stream may wait for events
	// until its deadline, which counts as a pass; a refusal is immediate.
	var wg sync.WaitGroup
	for _, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if c.cred.key != "" {
				ctx = withKey(ctx, c.cred.key)
			}
			if c.cred.agent {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-aa-credential-token", c.cred.key)
			}
			var err error
			switch desc, stream := streams[c.method]; {
			case c.method == "/envoy.service.auth.v3.Authorization/Check":
				var resp authv3.CheckResponse
				err = conn.Invoke(ctx, c.method, &emptypb.Empty{}, &resp)
				c.denied = resp.GetStatus().GetCode() != int32(codes.OK)
			case c.method == "/envoy.service.ext_proc.v3.ExternalProcessor/Process":
				var resp procv3.ProcessingResponse
				err = callStream(ctx, conn, &desc, c.method, &resp)
				c.denied = resp.GetImmediateResponse() != nil
			case stream:
				err = callStream(ctx, conn, &desc, c.method, &emptypb.Empty{})
			default:
				err = conn.Invoke(ctx, c.method, &emptypb.Empty{}, &emptypb.Empty{})
			}
			st := status.Convert(err)
			c.code, c.msg = st.Code(), st.Message()
		}()
	}
	wg.Wait()
	for _, c := range calls {
		refused := c.code == codes.Unauthenticated || c.code == codes.PermissionDenied
		what := fmt.Sprintf("%s (%s) with %s: %s %q", c.method, c.class, c.cred.name, c.code, c.msg)
		switch c.class {
		case auth.ClassPublic:
			if refused {
				t.Errorf("%s: a public method was refused", what)
			}
		case auth.ClassAgent:
			if c.code == codes.OK && !c.denied && !c.cred.agent {
				t.Errorf("%s: an agent method succeeded without an agent credential", what)
			}
		default:
			need := c.class.Required()
			switch {
			case c.cred.role == auth.RoleNone:
				if c.code != codes.Unauthenticated || c.msg != auth.MsgUnauthenticated {
					t.Errorf("%s: want Unauthenticated with the generic message", what)
				}
			case c.cred.role < need:
				if c.code != codes.PermissionDenied || c.msg != "this call needs the "+need.String()+" role" {
					t.Errorf("%s: want PermissionDenied naming the %s role", what, need)
				}
			case refused:
				t.Errorf("%s: role %s was refused a %s method", what, c.cred.role, c.class)
			}
		}
	}
	// An operator key is never taken for an agent credential; the agent's
	// own token is.
	for _, c := range calls {
		if c.method == "/agentassembly.v1.PolicyService/CheckAction" && c.cred.agent && (c.code == codes.Unauthenticated || c.code == codes.PermissionDenied) {
			t.Errorf("CheckAction with the agent's token: %s %q, want it past authentication", c.code, c.msg)
		}
		if c.method == "/agentassembly.v1.PolicyService/CheckAction" && c.cred.name == "admin" && c.code != codes.Unauthenticated {
			t.Errorf("CheckAction with an admin key and no agent token: %s %q, want Unauthenticated", c.code, c.msg)
		}
	}
	// Both kinds of refusal are in the audit log as governance events,
	// without any presented secret.
	waitFor(t, "auth refusals in the audit log", func() bool {
		return auditedRefusals(t, g.srv.Store(), auth.RuleUnauthenticated)["grpc"] > 0 &&
			auditedRefusals(t, g.srv.Store(), auth.RuleForbidden)["grpc"] > 0
	})
	noSecretsAudited(t, g.srv.Store(), creds)
}

// noSecretsAudited fails when any governance record holds a key's secret.
func noSecretsAudited(t *testing.T, st storage.Store, creds []credential) {
	t.Helper()
	page, err := st.QueryAudit(t.Context(), storage.AuditQuery{Event: storage.EventGovernance, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range page.Records {
		for _, c := range creds {
			if s := secretOf(c.key); s != "" && strings.Contains(string(r.Payload)+r.Reason, s) {
				t.Fatalf("audit record %s holds a presented secret: %s %s", r.ID, r.Reason, r.Payload)
			}
		}
	}
}

// callStream opens a stream, sends one empty message and reads one into resp.
func callStream(ctx context.Context, conn *grpc.ClientConn, desc *grpc.StreamDesc, method string, resp proto.Message) error {
	st, err := conn.NewStream(ctx, desc, method)
	if err != nil {
		return err
	}
	if err := st.SendMsg(&emptypb.Empty{}); err != nil && err != io.EOF {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	return st.RecvMsg(resp)
}

func withKey(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}

// secretOf returns the secret part of an API key.
func secretOf(key string) string {
	_, secret, _ := strings.Cut(strings.TrimPrefix(key, auth.KeyPrefix), "_")
	return secret
}

// auditedRefusals counts by surface ("grpc", "rest") the audited refusals
// with rule (governance records with decision DENY).
func auditedRefusals(t *testing.T, st storage.Store, rule string) map[string]int {
	t.Helper()
	page, err := st.QueryAudit(t.Context(), storage.AuditQuery{Event: storage.EventGovernance, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, r := range page.Records {
		if r.RuleID != rule || r.Decision != action.Deny {
			continue
		}
		var p struct{ Surface string }
		_ = json.Unmarshal(r.Payload, &p)
		out[p.Surface]++
	}
	return out
}

// TestAuthorizationMatrixREST sends every REST route of the OpenAPI
// document every kind of credential: 401 without a valid key, 403 below
// the route's role, anything else at or above it; agent routes never
// succeed on an operator key; health, readiness, metrics and the OpenAPI
// document need no key.
func TestAuthorizationMatrixREST(t *testing.T) {
	g := startGateway(t, examplesDir(t), func(c *Config) { c.AgentAuth = "token" })
	creds := matrixCredentials(t, g)
	routes, err := auth.RoutesFromOpenAPI(openapi.JSON, "agentassembly.v1")
	if err != nil {
		t.Fatal(err)
	}
	// One refusal of each kind first, while the audit bound has room.
	if code := restStatus(t, http.MethodGet, g.base+"/v1/status", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/status without a key: %d", code)
	}
	if code := restStatus(t, http.MethodGet, g.base+"/v1/admin/keys", creds[4].key); code != http.StatusForbidden {
		t.Fatalf("GET /v1/admin/keys with an operator key: %d", code)
	}
	type result struct {
		route, method string
		class         auth.Class
		cred          credential
		code          int
		body          string
	}
	var results []*result
	for _, r := range openAPIRoutes(t) {
		verb, path, _ := strings.Cut(r, " ")
		m, ok := routes[verb+" "+path]
		if !ok {
			t.Fatalf("route %s has no method", r)
		}
		class := auth.Classify(m)
		if class == auth.ClassUnknown {
			t.Errorf("route %s calls %s, missing from the method table", r, m)
		}
		id := "x"
		if strings.HasPrefix(path, "/v1/agents/{id}") {
			id = "acme/eng/x" // {id=*/*/*}
		}
		for _, c := range creds {
			results = append(results, &result{route: verb + " " + fill(path, id), method: m, class: class, cred: c})
		}
	}
	client := &http.Client{Timeout: 3 * time.Second}
	var wg sync.WaitGroup
	for _, r := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			verb, path, _ := strings.Cut(r.route, " ")
			var body io.Reader
			if verb == http.MethodPost || verb == http.MethodPut || verb == http.MethodPatch {
				body = strings.NewReader("{}")
			}
			req, err := http.NewRequest(verb, g.base+path, body)
			if err != nil {
				r.body = err.Error()
				return
			}
			if r.cred.key != "" {
				req.Header.Set("Authorization", "Bearer "+r.cred.key)
			}
			resp, err := client.Do(req)
			if err != nil {
				r.code, r.body = -1, err.Error() // a stream that passed and waits
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			var e struct{ Message string }
			if json.Unmarshal(b, &e) == nil && e.Message != "" {
				b = []byte(e.Message)
			}
			r.code, r.body = resp.StatusCode, string(b)
		}()
	}
	wg.Wait()
	for _, r := range results {
		what := fmt.Sprintf("%s (%s, %s) with %s: %d %s", r.route, r.method, r.class, r.cred.name, r.code, r.body)
		refused := r.code == http.StatusUnauthorized || r.code == http.StatusForbidden
		switch r.class {
		case auth.ClassAgent:
			if r.code >= 200 && r.code < 300 {
				t.Errorf("%s: an agent route succeeded without an agent credential", what)
			}
		default:
			need := r.class.Required()
			switch {
			case r.cred.role == auth.RoleNone:
				if r.code != http.StatusUnauthorized || !strings.Contains(r.body, auth.MsgUnauthenticated) {
					t.Errorf("%s: want 401 with the generic message", what)
				}
			case r.cred.role < need:
				if r.code != http.StatusForbidden || !strings.Contains(r.body, "needs the "+need.String()+" role") {
					t.Errorf("%s: want 403 naming the %s role", what, need)
				}
			case refused || r.code == 0:
				t.Errorf("%s: role %s was refused a %s route", what, r.cred.role, r.class)
			}
		}
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		resp, err := http.Get(g.base + p)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a key: %v %v", p, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	// A route the table does not know is refused, not served.
	if resp, err := http.Get(g.base + "/v1/no-such-route"); err == nil {
		if resp.StatusCode < 400 {
			t.Errorf("unknown route answered %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
	waitFor(t, "REST auth refusals in the audit log", func() bool {
		return auditedRefusals(t, g.srv.Store(), auth.RuleUnauthenticated)["rest"] > 0 &&
			auditedRefusals(t, g.srv.Store(), auth.RuleForbidden)["rest"] > 0
	})
	noSecretsAudited(t, g.srv.Store(), creds)
}

// restStatus sends a bodiless request with key ("" for none) and returns
// the status code.
func restStatus(t *testing.T, method, url, key string) int {
	t.Helper()
	code, _ := restBody(t, method, url, key)
	return code
}

// restBody sends a request without a body, with key as a bearer token
// unless empty, and returns the status code and response body.
func restBody(t *testing.T, method, url, key string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the body: %v", method, url, err)
	}
	return resp.StatusCode, body
}

// TestRevokedKeyFailsOnEveryReplica runs two replicas on one PostgreSQL: a
// key revoked through one is refused by the other on the very next call
// (keys are read from the store on every operator call), and a rotation
// through one replaces the secret on both.
func TestRevokedKeyFailsOnEveryReplica(t *testing.T) {
	a, b := sharedReplicas(t)
	ctx := t.Context()
	created, err := v1.NewAdminServiceClient(a.conn).CreateApiKey(ctx, &v1.CreateApiKeyRequest{Name: "ci", Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	key, id := created.GetSecret(), created.GetKey().GetId()
	call := func(g *testGateway, key string) codes.Code {
		_, err := v1.NewAdminServiceClient(bareConn(t, g)).GetStatus(withKey(ctx, key), &v1.GetStatusRequest{})
		return status.Code(err)
	}
	for name, g := range map[string]*testGateway{"a": a, "b": b} {
		if c := call(g, key); c != codes.OK {
			t.Fatalf("replica %s before revocation: %s", name, c)
		}
	}
	rotated, err := v1.NewAdminServiceClient(b.conn).RotateApiKey(ctx, &v1.RotateApiKeyRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if rotated.GetKey().GetId() != id || rotated.GetKey().GetRole() != "viewer" || rotated.GetSecret() == key {
		t.Fatalf("rotate: %v", rotated)
	}
	if c := call(a, key); c != codes.Unauthenticated {
		t.Fatalf("old secret on replica a right after a rotation on b: %s", c)
	}
	key = rotated.GetSecret()
	if c := call(a, key); c != codes.OK {
		t.Fatalf("new secret on replica a: %s", c)
	}
	if _, err := v1.NewAdminServiceClient(a.conn).RevokeApiKey(ctx, &v1.RevokeApiKeyRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]*testGateway{"a": a, "b": b} {
		if c := call(g, key); c != codes.Unauthenticated {
			t.Fatalf("replica %s right after the revocation: %s, want Unauthenticated", name, c)
		}
	}
	list, err := v1.NewAdminServiceClient(b.conn).ListApiKeys(ctx, &v1.ListApiKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range list.GetKeys() {
		if k.GetId() == id && !k.GetRevoked() {
			t.Fatalf("list on b shows the key active: %v", k)
		}
	}
}
