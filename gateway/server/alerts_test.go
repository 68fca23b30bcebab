package server

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/alerts"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage/sqlite/sqlitetest"
)

const alertsPolicy = `apiVersion: agent-assembly/v1
kind: Policy
metadata:
  name: alerts-test
spec:
  scope: {level: team, org: acme, team: eng}
  default: deny
  capabilities: [llm_call, tool_call, network_call]
  llm:
    providers: [openai]
    models: ["gpt-4o*"]
  tools:
    "*": {allow: true}
  budget:
    daily_usd: 1
    per: agent
    action_on_exceed: deny
  data:
    credential_action: block
`

// hookReceiver is a webhook endpoint on loopback that answers 503 to the
// first post of every alert and 200 to the next, verifying each signature.
type hookReceiver struct {
	t      *testing.T
	secret []byte
	mu     sync.Mutex
	tries  map[string]int
	got    chan alerts.Payload
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := alerts.Verify(h.secret, r.Header.Get(alerts.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		h.t.Errorf("webhook: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	id := r.Header.Get(alerts.AlertIDHeader)
	h.mu.Lock()
	h.tries[id]++
	n := h.tries[id]
	h.mu.Unlock()
	if n == 1 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var p alerts.Payload
	if err := json.Unmarshal(body, &p); err != nil || p.ID != id {
		h.t.Errorf("webhook: body %s is not alert %s: %v", body, id, err)
	}
	h.got <- p
}

func (h *hookReceiver) triesFor(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.tries[id]
}

// TestAlertsEndToEnd drives a budget crossing, a budget exhaustion, a
// blocked credential leak and a silenced policy violation through a real
// gateway: each is stored (ListAlerts over gRPC and REST), streamed
// (WatchAlerts), delivered signed to a webhook that fails once (retried),
// except the silenced one; and the settled LLM usage shows in GetCosts.
func TestAlertsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(alertsPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := "whsec-0123456789abcdef"
	secretFile := filepath.Join(dir, "webhook.secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rcv := &hookReceiver{t: t, secret: []byte(secret), tries: map[string]int{}, got: make(chan alerts.Payload, 16)}
	hook := httptest.NewServer(rcv)
	defer hook.Close()
	g := startGateway(t, dir, func(c *Config) {
		c.AlertWebhooks = []string{hook.URL + "/aa-alerts"}
		c.AlertWebhookSecretFile = secretFile
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alertsC := v1.NewAlertServiceClient(g.conn)
	costs := v1.NewCostServiceClient(g.conn)

	sil, err := alertsC.CreateSilence(ctx, &v1.CreateSilenceRequest{Kind: alerts.KindPolicyViolation, AgentPrefix: "acme/eng/",
		Duration: durationpb.New(time.Hour), Comment: "known noisy default denies"})
	if err != nil {
		t.Fatalf("CreateSilence: %v", err)
	}
	if !sil.GetActive() || sil.GetCreatedBy() == "" {
		t.Fatalf("silence = %v, want active with its creator recorded", sil)
	}
	watch, err := alertsC.WatchAlerts(ctx, &v1.WatchAlertsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Header(); err != nil { // the watch is in place
		t.Fatal(err)
	}

	bot := agent("acme", "eng", "bot")
	llm := func(prompt, completion int64) *v1.CheckActionResponse {
		t.Helper()
		resp, err := g.client.CheckAction(ctx, &v1.CheckActionRequest{Agent: bot, Context: &v1.CheckActionRequest_LlmCall{
			LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: prompt, CompletionTokens: completion}}})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	use := func(id string, prompt, completion int64) {
		t.Helper()
		if _, err := g.client.RecordUsage(ctx, &v1.RecordUsageRequest{Agent: bot, DecisionId: id, PromptTokens: prompt, CompletionTokens: completion}); err != nil {
			t.Fatalf("RecordUsage: %v", err)
		}
	}
	// gpt-4o: $0.0025 per 1k prompt tokens, $0.01 per 1k completion tokens; $1 a day.
	r1 := llm(100_000, 10_000) // reserves $0.35
	if r1.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("first LLM call: %v", r1)
	}
	use(r1.GetDecisionId(), 200_000, 20_000) // settles at $0.70
	r2 := llm(40_000, 0)                     // $0.10 more: 80% crossed
	if r2.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("second LLM call: %v", r2)
	}
	use(r2.GetDecisionId(), 40_000, 0)
	if r3 := llm(100_000, 0); r3.GetDecision() != v1.Decision_DENY || !strings.HasSuffix(r3.GetPolicyRuleId(), "/budget") {
		t.Fatalf("third LLM call (over budget): %v", r3)
	}
	leakKey := "AKIA" + strings.Repeat("Q", 8) + "EXAMPLE7"
	if r := checkTool(t, g, bot, "deploy", `{"aws_key":"`+leakKey+`"}`); r.GetDecision() != v1.Decision_DENY {
		t.Fatalf("tool call with a credential: %v", r)
	}
	if r, err := g.client.CheckAction(ctx, netReq(bot, "example.org", 443)); err != nil || r.GetDecision() != v1.Decision_DENY {
		t.Fatalf("network call outside the allowlist: %v %v", r, err)
	}

	// Streamed: four alerts, the violation marked silenced.
	byKind := map[string]*v1.Alert{}
	for len(byKind) < 4 {
		a, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch: %v (have %v)", err, byKind)
		}
		byKind[a.GetKind()] = a
	}
	for kind, want := range map[string]struct {
		severity string
		silenced bool
	}{
		alerts.KindBudgetThreshold: {"warning", false},
		alerts.KindBudgetExhausted: {"critical", false},
		alerts.KindCredentialLeak:  {"critical", false},
		alerts.KindPolicyViolation: {"info", true},
	} {
		a := byKind[kind]
		if a == nil || a.GetSeverity() != want.severity || a.GetSilenced() != want.silenced || a.GetAgent().GetAgentId() != "bot" {
			t.Fatalf("streamed %s alert = %v, want severity %s silenced=%v for acme/eng/bot", kind, a, want.severity, want.silenced)
		}
	}
	if v := byKind[alerts.KindPolicyViolation]; v.GetSilenceId() != sil.GetId() {
		t.Fatalf("violation silenced by %q, want %q", v.GetSilenceId(), sil.GetId())
	}
	if d := byKind[alerts.KindCredentialLeak].GetDetailsJson(); strings.Contains(d, leakKey) {
		t.Fatalf("credential alert details carry the key: %s", d)
	}
	var th map[string]any
	if err := json.Unmarshal([]byte(byKind[alerts.KindBudgetThreshold].GetDetailsJson()), &th); err != nil || th["threshold_percent"] != 80.0 || th["limit_usd"] != 1.0 {
		t.Fatalf("threshold details = %v (%v)", th, err)
	}

	// Delivered: the three unsilenced alerts, each after one failed attempt.
	delivered := map[string]alerts.Payload{}
	for len(delivered) < 3 {
		select {
		case p := <-rcv.got:
			delivered[p.Kind] = p
		case <-ctx.Done():
			t.Fatalf("webhook received %d of 3 alerts", len(delivered))
		}
	}
	for kind, p := range delivered {
		if byKind[kind] == nil || p.ID != byKind[kind].GetId() || p.Agent != "acme/eng/bot" {
			t.Fatalf("webhook got %s alert %+v, streamed %v", kind, p, byKind[kind])
		}
		if n := rcv.triesFor(p.ID); n != 2 {
			t.Fatalf("alert %s was posted %d times, want 2 (a 503, then a retry)", p.ID, n)
		}
	}
	if n := rcv.triesFor(byKind[alerts.KindPolicyViolation].GetId()); n != 0 {
		t.Fatalf("the silenced alert was posted %d times", n)
	}

	// Stored: gRPC with filters, and REST.
	list, err := alertsC.ListAlerts(ctx, &v1.ListAlertsRequest{Severity: "critical"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetAlerts()) != 2 || list.GetAlerts()[0].GetKind() != alerts.KindCredentialLeak || list.GetAlerts()[1].GetKind() != alerts.KindBudgetExhausted {
		t.Fatalf("ListAlerts(critical) = %v, want the leak then the exhaustion (newest first)", list.GetAlerts())
	}
	code, rest := restCall(t, "GET", g.base+"/v1/alerts?kind=budget_threshold&org_id=acme", "")
	if as, _ := rest["alerts"].([]any); code != 200 || len(as) != 1 || as[0].(map[string]any)["id"] != byKind[alerts.KindBudgetThreshold].GetId() {
		t.Fatalf("GET /v1/alerts?kind=budget_threshold: %d %v", code, rest)
	}
	code, rest = restCall(t, "GET", g.base+"/v1/alerts?severity=loud", "")
	if code != 400 || !strings.Contains(rest["message"].(string), "severity") {
		t.Fatalf("GET /v1/alerts?severity=loud: %d %v", code, rest)
	}

	// Costs: the two settled calls, over REST and gRPC.
	code, rest = restCall(t, "GET", g.base+"/v1/costs?group_by=agent,model", "")
	groups, _ := rest["groups"].([]any)
	if code != 200 || len(groups) != 1 {
		t.Fatalf("GET /v1/costs: %d %v", code, rest)
	}
	grp := groups[0].(map[string]any)
	if grp["agent_id"] != "bot" || grp["team_id"] != "eng" || grp["model"] != "gpt-4o" || grp["cost_micro_usd"] != "800000" ||
		grp["cost_usd"] != 0.8 || grp["prompt_tokens"] != "240000" || grp["completion_tokens"] != "20000" || grp["requests"] != "2" {
		t.Fatalf("GET /v1/costs group = %v, want bot/gpt-4o $0.80 from 240000+20000 tokens in 2 requests", grp)
	}
	gc, err := costs.GetCosts(ctx, &v1.GetCostsRequest{GroupBy: []string{"team", "day"}, OrgId: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Format(time.DateOnly)
	if len(gc.GetGroups()) != 1 || gc.GetGroups()[0].GetDay() != today || gc.GetGroups()[0].GetAgentId() != "" ||
		gc.GetTotal().GetCostMicroUsd() != 800_000 || gc.GetTotal().GetRequests() != 2 || gc.GetToDay() != today {
		t.Fatalf("GetCosts(team, day) = %v", gc)
	}
	if _, err := costs.GetCosts(ctx, &v1.GetCostsRequest{GroupBy: []string{"planet"}}); err == nil || !strings.Contains(err.Error(), "group_by") {
		t.Fatalf("GetCosts(group_by=planet) = %v, want an error naming group_by", err)
	}

	// Silences: listed, then deleted (expired), then no longer active.
	ls, err := alertsC.ListSilences(ctx, &v1.ListSilencesRequest{})
	if err != nil || len(ls.GetSilences()) != 1 {
		t.Fatalf("ListSilences = %v, %v", ls, err)
	}
	code, rest = restCall(t, "DELETE", g.base+"/v1/alerts/silences/"+sil.GetId(), "")
	if code != 200 || rest["active"] == true {
		t.Fatalf("DELETE silence: %d %v", code, rest)
	}
	if ls, err = alertsC.ListSilences(ctx, &v1.ListSilencesRequest{}); err != nil || len(ls.GetSilences()) != 0 {
		t.Fatalf("ListSilences after delete = %v, %v", ls, err)
	}
	if ls, err = alertsC.ListSilences(ctx, &v1.ListSilencesRequest{IncludeExpired: true}); err != nil || len(ls.GetSilences()) != 1 {
		t.Fatalf("ListSilences(include_expired) = %v, %v", ls, err)
	}
	if _, err := alertsC.CreateSilence(ctx, &v1.CreateSilenceRequest{Duration: durationpb.New(time.Hour)}); err == nil || !strings.Contains(err.Error(), "matcher") {
		t.Fatalf("CreateSilence without matchers = %v, want an error asking for a matcher", err)
	}

	// Metrics: three deliveries, three retries, one silenced. A delivery is
	// counted when the receiver's answer arrives, just after it handed over
	// the payload, so the scrape is repeated until then.
	want := []string{
		`aa_alert_webhook_deliveries_total{result="delivered"} 3`,
		`aa_alert_webhook_deliveries_total{result="retried"} 3`,
		`aa_alert_webhook_deliveries_total{result="silenced"} 1`,
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get(g.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var missing []string
		for _, line := range want {
			if !strings.Contains(string(b), line) {
				missing = append(missing, line)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q", missing)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func checkTool(t *testing.T, g *testGateway, a *v1.AgentId, name, args string) *v1.CheckActionResponse {
	t.Helper()
	r, err := g.client.CheckAction(context.Background(), toolReq(a, name, args))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitAlerts lists alerts of kind until n are stored (they are stored
// asynchronously, off the request path), failing after 10 s.
func waitAlerts(t *testing.T, c v1.AlertServiceClient, kind string, n int) []*v1.Alert {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.ListAlerts(context.Background(), &v1.ListAlertsRequest{Kind: kind})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAlerts()) >= n || time.Now().After(deadline) {
			if len(resp.GetAlerts()) != n {
				t.Fatalf("%d %s alerts stored, want %d: %v", len(resp.GetAlerts()), kind, n, resp.GetAlerts())
			}
			return resp.GetAlerts()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAlertsFromRuntimeXDSAndAudit checks the other sources on a real
// gateway: kernel ring-buffer drops reported by a runtime (one alert per
// doubling of its count), an Envoy node's NACK (one per rejected version),
// and an audit chain that fails verification.
func TestAlertsFromRuntimeXDSAndAudit(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	ac := v1.NewAlertServiceClient(g.conn)
	audit := v1.NewAuditServiceClient(g.conn)
	report := func(id string, drops uint64) {
		t.Helper()
		_, err := audit.ReportEvents(ctx, &v1.ReportEventsRequest{Reporter: "host-1/runtime", KernelDrops: drops, Events: []*v1.ReportedEvent{{
			EventId: id, Layer: v1.Layer_LAYER_KERNEL, Time: timestamppb.Now(), Action: netReq(coder, "evil.example.com", 443),
			Decision: v1.Decision_DENY, RuleId: "kernel", Reason: "connect denied in the kernel"}}})
		if err != nil {
			t.Fatalf("ReportEvents: %v", err)
		}
	}
	report("e1", 0)
	report("e2", 3)
	report("e3", 3) // same count: nothing new
	report("e4", 4) // 3 -> 4 crosses a power of two
	drops := waitAlerts(t, ac, alerts.KindEBPFDrops, 2)
	if !strings.Contains(drops[0].GetSummary(), "host-1/runtime lost 4 kernel events") || drops[0].GetSeverity() != "warning" {
		t.Fatalf("newest drops alert = %v", drops[0])
	}

	adsAnswer(t, g.conn, "acme/eng/coder-1", "Proto constraint validation failed: test rejection")
	nack := waitAlerts(t, ac, alerts.KindXDSNack, 1)[0]
	if nack.GetAgent().GetAgentId() != "coder-1" || !strings.Contains(nack.GetSummary(), "test rejection") {
		t.Fatalf("NACK alert = %v", nack)
	}

	// Silences over REST.
	code, created := restCall(t, "POST", g.base+"/v1/alerts/silences", `{"severity":"info","duration":"600s","comment":"rest"}`)
	if code != 200 || created["active"] != true || created["severity"] != "info" {
		t.Fatalf("POST /v1/alerts/silences: %d %v", code, created)
	}
	code, listed := restCall(t, "GET", g.base+"/v1/alerts/silences", "")
	if ss, _ := listed["silences"].([]any); code != 200 || len(ss) != 1 || ss[0].(map[string]any)["id"] != created["id"] {
		t.Fatalf("GET /v1/alerts/silences: %d %v", code, listed)
	}
	for _, bad := range []string{`{"duration":"600s"}`, `{"kind":"nope","duration":"600s"}`, `{"kind":"xds_nack"}`, `{"kind":"xds_nack","duration":"-5s"}`} {
		if code, body := restCall(t, "POST", g.base+"/v1/alerts/silences", bad); code != 400 {
			t.Errorf("POST /v1/alerts/silences %s: %d %v, want 400", bad, code, body)
		}
	}
	if code, body := restCall(t, "DELETE", g.base+"/v1/alerts/silences/not-a-uuid", ""); code != 400 {
		t.Errorf("DELETE a malformed silence id: %d %v, want 400", code, body)
	}

	// An operator suspends an agent, then kills it: two alerts, the kill critical.
	register(t, g, coder, nil)
	life := v1.NewAgentLifecycleServiceClient(g.conn)
	if _, err := life.SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "investigating"}); err != nil {
		t.Fatal(err)
	}
	if _, err := life.KillAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "compromised"}); err != nil {
		t.Fatal(err)
	}
	sus := waitAlerts(t, ac, alerts.KindAgentSuspended, 2)
	if sus[0].GetSeverity() != "critical" || !strings.Contains(sus[0].GetSummary(), "killed: compromised") ||
		sus[1].GetSeverity() != "warning" || !strings.Contains(sus[1].GetDetailsJson(), `"previous":"active"`) {
		t.Fatalf("suspension alerts = %v", sus)
	}

	// Tamper with a stored audit record of this replica's chain, then verify.
	if _, err := g.client.CheckAction(ctx, netReq(coder, "github.com", 443)); err != nil {
		t.Fatal(err)
	}
	// What an attacker with file access does: change record 1 in the file.
	if err := sqlitetest.TamperRecord(ctx, strings.TrimPrefix(g.cfg.Store, "sqlite:"), g.cfg.ReplicaName(), 1, nil, nil); err != nil {
		t.Fatalf("tamper: %v", err)
	}
	v, err := audit.VerifyAudit(ctx, &v1.VerifyAuditRequest{Chain: g.cfg.ReplicaName()})
	if err != nil || v.GetOk() {
		t.Fatalf("VerifyAudit after tampering = %v, %v; want a broken chain", v, err)
	}
	brk := waitAlerts(t, ac, alerts.KindAuditChainBreak, 1)[0]
	if brk.GetSeverity() != "critical" || brk.GetSource() != "audit:"+g.cfg.ReplicaName()+":1" {
		t.Fatalf("chain break alert = %v", brk)
	}
	if _, err := audit.VerifyAudit(ctx, &v1.VerifyAuditRequest{Chain: g.cfg.ReplicaName()}); err != nil {
		t.Fatal(err)
	}
	waitAlerts(t, ac, alerts.KindAuditChainBreak, 1) // verifying again raises no second alert
}

// adsAnswer opens an ADS stream as the Envoy node id and answers the first
// listener configuration: an ACK when nack is empty, else a NACK with nack
// as its error detail.
func adsAnswer(t *testing.T, conn *grpc.ClientConn, id, nack string) {
	t.Helper()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: id, UserAgentName: "envoy", Metadata: &structpb.Struct{}}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	answer := &discoverygrpc.DiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
	if nack != "" { // a NACK keeps the previous version
		answer.VersionInfo, answer.ErrorDetail = "", &rpcstatus.Status{Code: 3, Message: nack}
	}
	if err := stream.Send(answer); err != nil {
		t.Fatal(err)
	}
}

func TestAlertWebhookConfig(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		hooks, secret, want string
	}{
		{"ftp://hooks.example.com/x", "", "--alert-webhook: alert webhook \"ftp://hooks.example.com/x\": want an absolute http:// or https:// URL"},
		{"https://hooks.example.com/x", "", "--alert-webhook-secret-file: is required with --alert-webhook"},
	} {
		c := DefaultConfig()
		c.AlertWebhooks = commaList(tc.hooks)
		c.AlertWebhookSecretFile = tc.secret
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("hooks %q secret %q: Validate = %v, want %q", tc.hooks, tc.secret, err, tc.want)
		}
	}
	var c Config
	fs := flag.NewFlagSet("aa-gateway", flag.ContinueOnError)
	if err := Bind(fs, &c, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--alert-webhook", " https://a.example/x , http://127.0.0.1:9/y,"}); err != nil || len(c.AlertWebhooks) != 2 || c.AlertWebhooks[1] != "http://127.0.0.1:9/y" {
		t.Fatalf("--alert-webhook = %q, %v", c.AlertWebhooks, err)
	}
	if _, err := webhookSecret(short); err == nil || !strings.Contains(err.Error(), "at least 16 bytes") {
		t.Fatalf("short secret: %v", err)
	}
	if _, err := webhookSecret(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "read alert webhook secret") {
		t.Fatalf("missing secret: %v", err)
	}
}
