package extauthz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway/server"
	"github.com/agent-assembly/agent-assembly/gateway/server/servertest"
)

var resetsIn = regexp.MustCompile(`resets in [0-9hms.]+`)

var update = flag.Bool("update", false, "rewrite the expected answers under testdata/answers")

// answer is the part of a CheckResponse Envoy acts on, with the decision id
// (random) replaced by "<id>".
type answer struct {
	GRPCCode        int32             `json:"grpc_code"`
	HTTPStatus      int32             `json:"http_status"`
	Headers         map[string]string `json:"headers"`
	HeadersToRemove []string          `json:"headers_to_remove,omitempty"`
	Body            map[string]string `json:"body,omitempty"`
}

func summarise(t *testing.T, r *authv3.CheckResponse) (answer, string) {
	t.Helper()
	a := answer{GRPCCode: r.GetStatus().GetCode(), Headers: map[string]string{}}
	id := ""
	note := func(k, v string) {
		if k == "x-aa-decision-id" || k == "x-aa-usage-id" {
			if k == "x-aa-decision-id" {
				id = v
			}
			v = "<id>"
		}
		if k == "retry-after" {
			if n, err := strconv.Atoi(v); err != nil || n < 1 {
				t.Fatalf("retry-after %q is not a positive number of seconds", v)
			}
			v = "<seconds>"
		}
		a.Headers[k] = v
	}
	if ok := r.GetOkResponse(); ok != nil {
		a.HTTPStatus = 200
		for _, h := range ok.GetHeaders() {
			note(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		a.HeadersToRemove = ok.GetHeadersToRemove()
		return a, id
	}
	d := r.GetDeniedResponse()
	a.HTTPStatus = int32(d.GetStatus().GetCode())
	for _, h := range d.GetHeaders() {
		note(h.GetHeader().GetKey(), h.GetHeader().GetValue())
	}
	if err := json.Unmarshal([]byte(d.GetBody()), &a.Body); err != nil {
		t.Fatalf("denial body is not a JSON object of strings: %v: %s", err, d.GetBody())
	}
	// Budget reasons end with the time until the window resets.
	a.Body["reason"] = resetsIn.ReplaceAllString(a.Body["reason"], "resets in <duration>")
	if a.Body["decision_id"] != "" {
		if a.Body["decision_id"] != id {
			t.Fatalf("body decision_id %q differs from header %q", a.Body["decision_id"], id)
		}
		a.Body["decision_id"] = "<id>"
	}
	return a, id
}

// TestEnvoyContract sends every CheckRequest under testdata/requests, shaped
// as Envoy's ext_authz HTTP filter sends it (mTLS principal, pseudo-headers,
// raw_body with with_request_body), to a real gateway over gRPC, and
// compares what Envoy would act on with testdata/answers. Every decision id
// it answers with must be in the audit log with the same decision.
func TestEnvoyContract(t *testing.T) {
	// The fixtures are about mapping, with identity from the principal and
	// headers as Envoy sends them; agent authentication has its own tests
	// (gateway/server/agentauth_test.go).
	addr := servertest.Start(t, "testdata/policies", func(c *server.Config) { c.AgentAuth = "off" })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), servertest.AdminCreds())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	authz := authv3.NewAuthorizationClient(conn)
	audit := v1.NewAuditServiceClient(conn)

	files, err := filepath.Glob("testdata/requests/*.json")
	if err != nil || len(files) < 10 {
		t.Fatalf("fixtures: %v (%d files)", err, len(files))
	}
	slices.Sort(files)
	type seen struct{ decision, note string }
	ids := map[string]seen{} // decision id -> what the answer said
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var req authv3.CheckRequest
			if err := protojson.Unmarshal(raw, &req); err != nil {
				t.Fatalf("fixture is not a CheckRequest: %v", err)
			}
			resp, err := authz.Check(context.Background(), &req)
			if err != nil {
				t.Fatalf("Check returned a gRPC error (Envoy would apply failure_mode_allow): %v", err)
			}
			got, id := summarise(t, resp)
			if id != "" {
				ids[id] = seen{got.Headers["x-aa-decision"], got.Headers["x-aa-note"]}
			}
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(got); err != nil {
				t.Fatal(err)
			}
			out := buf.Bytes()
			golden := filepath.Join("testdata", "answers", name+".json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./extauthz -run TestEnvoyContract -update)", err)
			}
			if string(want) != string(out) {
				t.Errorf("answer for %s differs from %s\n--- got\n%s--- want\n%s", name, golden, out, want)
			}
		})
	}

	recs, err := audit.ListAuditRecords(context.Background(), &v1.ListAuditRecordsRequest{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*v1.AuditRecord{}
	for _, r := range recs.GetRecords() {
		byID[r.GetId()] = r
	}
	for id, want := range ids {
		r := byID[id]
		if r == nil {
			t.Errorf("decision %s (%s) is not in the audit log", id, want.decision)
			continue
		}
		if got := strings.ToLower(strings.TrimPrefix(r.GetDecision().String(), "DECISION_")); got != want.decision {
			t.Errorf("audit record %s says %s, the answer said %s", id, got, want.decision)
		}
		if want.note != "" && !strings.Contains(r.GetReason(), want.note) {
			t.Errorf("audit record %s reason %q is not flagged with %q", id, r.GetReason(), want.note)
		}
		if strings.Contains(protojson.Format(r), "ghp_FAKE") {
			t.Errorf("audit record %s holds the credential", id)
		}
	}
}
