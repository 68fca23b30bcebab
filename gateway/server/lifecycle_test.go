package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/identity"
	"github.com/agent-assembly/agent-assembly/internal/pgtest"
	"github.com/agent-assembly/agent-assembly/storage"
)

func lifecycle(g *testGateway) v1.AgentLifecycleServiceClient {
	return v1.NewAgentLifecycleServiceClient(g.conn)
}

// registered is an agent that completed the challenge.
type registered struct {
	id    *v1.AgentId
	key   ed25519.PrivateKey
	token string
	resp  *v1.RegisterResponse
}

// register runs RequestChallenge and Register for id with a fresh key.
func register(t *testing.T, g *testGateway, id *v1.AgentId, mod func(*v1.RegisterRequest)) *registered {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	req := signedRegistration(t, g, id, pub, key)
	if mod != nil {
		mod(req)
	}
	resp, err := lifecycle(g).Register(context.Background(), req)
	if err != nil {
		t.Fatalf("Register %v: %v", id, err)
	}
	return &registered{id: id, key: key, token: resp.GetCredentialToken(), resp: resp}
}

func signedRegistration(t *testing.T, g *testGateway, id *v1.AgentId, pub ed25519.PublicKey, key ed25519.PrivateKey) *v1.RegisterRequest {
	t.Helper()
	ch, err := lifecycle(g).RequestChallenge(context.Background(), &v1.RequestChallengeRequest{Agent: id})
	if err != nil {
		t.Fatalf("RequestChallenge: %v", err)
	}
	return &v1.RegisterRequest{Agent: id, PublicKey: pub, Nonce: ch.GetNonce(), Signature: ed25519.Sign(key, ch.GetNonce()),
		Labels: map[string]string{"runtime": "test"}}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, text string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), text) {
		t.Fatalf("%s: got %v, want %s containing %q", what, err, code, text)
	}
}

// refusalAudited finds the governance record of a refused lifecycle
// credential: the cause the caller is not told is in the audit log.
func refusalAudited(t *testing.T, g *testGateway, reason string) {
	t.Helper()
	page, err := g.srv.Store().QueryAudit(context.Background(), storage.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range page.Records {
		if r.Reason == reason {
			return
		}
	}
	t.Fatalf("no audit record with reason %q", reason)
}

func TestRegisterHappyPath(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	r := register(t, g, coder, nil)
	if r.token == "" || r.resp.GetPolicyVersion() != g.srv.Core().Snapshot().Version() ||
		r.resp.GetHeartbeatInterval().AsDuration() <= 0 || !r.resp.GetExpiresAt().AsTime().After(time.Now()) {
		t.Fatalf("Register response %v: want a token, the serving policy version, a heartbeat interval and a future expiry", r.resp)
	}
	// The token names the agent for others (VerifyToken).
	got, err := g.srv.Agents().VerifyToken(ctx, r.token)
	if err != nil || got != (action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"}) {
		t.Fatalf("VerifyToken = %v, %v", got, err)
	}
	hb, err := lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r.token})
	if err != nil || hb.GetStatus() != v1.AgentStatus_AGENT_STATUS_ACTIVE || hb.GetNextInterval().AsDuration() <= 0 {
		t.Fatalf("Heartbeat: %v %v", hb, err)
	}
	// REST: list and inspect.
	resp, err := adminGet(g.base + "/v1/agents/acme/eng/coder-1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"status":"AGENT_STATUS_ACTIVE"`) || !strings.Contains(string(body), `"runtime":"test"`) {
		t.Fatalf("GET /v1/agents/acme/eng/coder-1: %d %s", resp.StatusCode, body)
	}
	list, err := lifecycle(g).ListAgents(ctx, &v1.ListAgentsRequest{OrgId: "acme"})
	if err != nil || len(list.GetAgents()) != 1 {
		t.Fatalf("ListAgents: %v %v", list, err)
	}
	// A delegated agent: the parent's token authorises the spawn.
	child := register(t, g, agent("acme", "eng", "coder-1-sub"), func(req *v1.RegisterRequest) {
		req.Parent, req.ParentCredentialToken = coder, r.token
	})
	info, err := lifecycle(g).GetAgent(ctx, &v1.GetAgentRequest{Id: "acme/eng/coder-1-sub"})
	if err != nil || info.GetDepth() != 1 || info.GetParent().GetAgentId() != "coder-1" || child.token == "" {
		t.Fatalf("child agent: %v %v", info, err)
	}
	// A spawn that claims a parent without its token is refused.
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	req := signedRegistration(t, g, agent("acme", "eng", "rogue"), pub, key)
	req.Parent = coder
	_, err = lifecycle(g).Register(ctx, req)
	wantCode(t, "parent without token", err, codes.InvalidArgument, "parent_credential_token")
	// Someone else cannot take over the id with another key.
	pub2, key2, _ := ed25519.GenerateKey(rand.Reader)
	_, err = lifecycle(g).Register(ctx, signedRegistration(t, g, coder, pub2, key2))
	wantCode(t, "re-register with another key", err, codes.PermissionDenied, "another public key")
	// Registration is audited.
	if n := countEvents(t, g.srv.Store(), storage.EventGovernance); n < 2 {
		t.Fatalf("%d governance records, want the registrations", n)
	}
}

func TestRegisterRejectsReplayAndBadSignature(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	req := signedRegistration(t, g, coder, pub, key)
	if _, err := lifecycle(g).Register(ctx, req); err != nil {
		t.Fatal(err)
	}
	_, err := lifecycle(g).Register(ctx, req)
	wantCode(t, "replayed nonce", err, codes.Unauthenticated, "nonce is unknown, expired or already used")

	// Signed with a key other than the one presented.
	other := agent("acme", "eng", "coder-2")
	_, wrongKey, _ := ed25519.GenerateKey(rand.Reader)
	pub2, _, _ := ed25519.GenerateKey(rand.Reader)
	req = signedRegistration(t, g, other, pub2, wrongKey)
	_, err = lifecycle(g).Register(ctx, req)
	wantCode(t, "wrong signature", err, codes.Unauthenticated, "signature does not verify")
	// The nonce was spent by the failed attempt.
	req.Signature = ed25519.Sign(wrongKey, req.Nonce)
	req.PublicKey = wrongKey.Public().(ed25519.PublicKey)
	_, err = lifecycle(g).Register(ctx, req)
	wantCode(t, "retry on a spent nonce", err, codes.Unauthenticated, "already used")
	// A nonce issued for one agent does not register another.
	req = signedRegistration(t, g, other, pub, key)
	req.Agent = agent("acme", "eng", "coder-3")
	_, err = lifecycle(g).Register(ctx, req)
	wantCode(t, "nonce of another agent", err, codes.Unauthenticated, "nonce")
	// Malformed input names the field.
	req = signedRegistration(t, g, other, pub, key)
	req.PublicKey = req.PublicKey[:10]
	_, err = lifecycle(g).Register(ctx, req)
	wantCode(t, "short key", err, codes.InvalidArgument, "public_key")
	_, err = lifecycle(g).RequestChallenge(ctx, &v1.RequestChallengeRequest{Agent: agent("acme", "", "x")})
	wantCode(t, "challenge without team", err, codes.InvalidArgument, "agent.team_id")
}

func TestExpiredAndRevokedTokensRejected(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	r := register(t, g, coder, nil)

	// A token signed with the gateway's own key but already expired.
	seed, err := identity.LoadOrCreateSigningKey(ctx, g.srv.Store())
	if err != nil {
		t.Fatal(err)
	}
	past, err := identity.NewIssuer(seed, identity.Options{TTL: time.Minute, Now: func() time.Time { return time.Now().Add(-time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	expired, _, err := past.Issue(action.AgentID{Org: "acme", Team: "eng", Agent: "coder-1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: expired})
	wantCode(t, "expired token", err, codes.Unauthenticated, "agent not authenticated")
	refusalAudited(t, g, "heartbeat refused: agent not authenticated (expired)")
	if _, err := g.srv.Agents().VerifyToken(ctx, expired); !errors.Is(err, identity.ErrExpired) {
		t.Fatalf("VerifyToken(expired) = %v", err)
	}
	// A token for another agent than the one named.
	_, err = lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: agent("acme", "eng", "other"), CredentialToken: r.token})
	wantCode(t, "token of another agent", err, codes.PermissionDenied, "does not belong")
	if strings.Contains(err.Error(), "coder-1") {
		t.Fatalf("the refusal names the token's agent: %v", err)
	}
	refusalAudited(t, g, "heartbeat refused: agent not authenticated (mismatch)")
	// A forged token.
	_, err = lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r.token[:len(r.token)-4] + "AAAA"})
	wantCode(t, "forged token", err, codes.Unauthenticated, "agent not authenticated")
	refusalAudited(t, g, "heartbeat refused: agent not authenticated (bad_signature)")

	// Deregistration revokes the token.
	if _, err := lifecycle(g).Deregister(ctx, &v1.DeregisterRequest{Agent: coder, CredentialToken: r.token}); err != nil {
		t.Fatal(err)
	}
	_, err = lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r.token})
	wantCode(t, "revoked token", err, codes.Unauthenticated, "agent not authenticated")
	refusalAudited(t, g, "heartbeat refused: agent not authenticated (revoked)")
	if _, err := g.srv.Agents().VerifyToken(ctx, r.token); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("VerifyToken(revoked) = %v", err)
	}
	// A deregistered agent may register again, even with a new key.
	r2 := register(t, g, coder, nil)
	if _, err := lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r2.token}); err != nil {
		t.Fatalf("heartbeat after re-registration: %v", err)
	}
}

// timedCommand is a command and when it arrived.
type timedCommand struct {
	cmd *v1.ControlCommand
	err error
	at  time.Time
}

// receiveTimed receives from st in the background, stamping each command
// with its arrival time, so a latency does not include the caller's own
// request.
func receiveTimed(st grpc.ServerStreamingClient[v1.ControlCommand]) <-chan timedCommand {
	ch := make(chan timedCommand, 16)
	go func() {
		defer close(ch)
		for {
			cmd, err := st.Recv()
			ch <- timedCommand{cmd, err, time.Now()}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// controlStream opens the agent's command stream.
func controlStream(t *testing.T, g *testGateway, r *registered) (grpc.ServerStreamingClient[v1.ControlCommand], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := lifecycle(g).ControlStream(ctx, &v1.ControlStreamRequest{Agent: r.id, CredentialToken: r.token})
	if err != nil {
		t.Fatal(err)
	}
	return st, cancel
}

func TestSuspendViaControlStreamDeniesTheNextCheck(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	r := register(t, g, coder, nil)
	stream, _ := controlStream(t, g, r)
	check := func() *v1.CheckActionResponse {
		t.Helper()
		resp, err := g.client.CheckAction(ctx, toolReq(coder, "git_status", ""))
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if d := check().GetDecision(); d != v1.Decision_ALLOW {
		t.Fatalf("before suspension: %s, want ALLOW", d)
	}
	const rounds = 20
	var lat []time.Duration
	cmds := receiveTimed(stream)
	recv := func() (*v1.ControlCommand, error) {
		tc := <-cmds
		return tc.cmd, tc.err
	}
	for i := range rounds {
		start := time.Now()
		if _, err := lifecycle(g).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: fmt.Sprintf("round %d", i)}); err != nil {
			t.Fatal(err)
		}
		tc := <-cmds
		cmd, err := tc.cmd, tc.err
		if err != nil {
			t.Fatal(err)
		}
		lat = append(lat, tc.at.Sub(start))
		if cmd.GetType() != v1.ControlCommand_TYPE_SUSPEND || cmd.GetReason() != fmt.Sprintf("round %d", i) {
			t.Fatalf("round %d: command %v, want SUSPEND", i, cmd)
		}
		// The ordering guarantee: the check made after the command arrived is denied.
		resp := check()
		if resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "agent suspended") {
			t.Fatalf("round %d: check after SUSPEND: %s %q, want DENY agent suspended", i, resp.GetDecision(), resp.GetReason())
		}
		if _, err := lifecycle(g).ResumeAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1"}); err != nil {
			t.Fatal(err)
		}
		if cmd, err = recv(); err != nil || cmd.GetType() != v1.ControlCommand_TYPE_RESUME {
			t.Fatalf("round %d: %v %v, want RESUME", i, cmd, err)
		}
		if d := check().GetDecision(); d != v1.Decision_ALLOW {
			t.Fatalf("round %d: check after RESUME: %s, want ALLOW", i, d)
		}
	}
	slices.Sort(lat)
	t.Logf("SuspendAgent call to SUSPEND received on the ControlStream (one gateway, sqlite): p50 %v, max %v over %d rounds", lat[rounds/2], lat[rounds-1], rounds)

	// A stream opened while suspended starts with SUSPEND.
	if _, err := lifecycle(g).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "held"}); err != nil {
		t.Fatal(err)
	}
	if cmd, err := recv(); err != nil || cmd.GetType() != v1.ControlCommand_TYPE_SUSPEND {
		t.Fatalf("%v %v", cmd, err)
	}
	late, _ := controlStream(t, g, r)
	if cmd, err := late.Recv(); err != nil || cmd.GetType() != v1.ControlCommand_TYPE_SUSPEND || cmd.GetReason() != "held" {
		t.Fatalf("new stream of a suspended agent: %v %v, want SUSPEND first", cmd, err)
	}

	// Kill: the stream gets KILL and ends, the token stops working, resume is refused.
	code, m := postJSON(t, g.base+"/v1/agents/acme/eng/coder-1:kill", `{"reason": "compromised"}`)
	if code != 200 || m["status"] != "AGENT_STATUS_KILLED" {
		t.Fatalf("POST :kill: %d %v", code, m)
	}
	if cmd, err := recv(); err != nil || cmd.GetType() != v1.ControlCommand_TYPE_KILL || cmd.GetReason() != "compromised" {
		t.Fatalf("%v %v, want KILL", cmd, err)
	}
	if _, err := recv(); err != io.EOF {
		t.Fatalf("after KILL the stream should end, got %v", err)
	}
	if resp := check(); resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "agent killed") {
		t.Fatalf("check of a killed agent: %v", resp)
	}
	_, err := lifecycle(g).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r.token})
	wantCode(t, "token of a killed agent", err, codes.Unauthenticated, "agent not authenticated")
	refusalAudited(t, g, "heartbeat refused: agent not authenticated (revoked)")
	code, m = postJSON(t, g.base+"/v1/agents/acme/eng/coder-1:resume", `{}`)
	if code != 400 || !strings.Contains(fmt.Sprint(m["message"]), "killed") {
		t.Fatalf("resume a killed agent: %d %v", code, m)
	}
}

func TestBudgetSuspensionReachesControlStream(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	researcher := agent("acme", "research", "researcher-1")
	r := register(t, g, researcher, nil)
	st, _ := controlStream(t, g, r)
	cmds := receiveTimed(st)
	// One call priced far over the team's $50 daily budget (action_on_exceed: suspend).
	resp, err := g.client.CheckAction(ctx, &v1.CheckActionRequest{Agent: researcher, Context: &v1.CheckActionRequest_LlmCall{
		LlmCall: &v1.LlmCallContext{Provider: "openai", Model: "gpt-4o", PromptTokens: 50_000_000, CompletionTokens: 1_000_000}}})
	if err != nil || resp.GetDecision() != v1.Decision_DENY {
		t.Fatalf("over-budget call: %v %v, want DENY", resp, err)
	}
	tc := <-cmds
	if tc.err != nil || tc.cmd.GetType() != v1.ControlCommand_TYPE_SUSPEND || !strings.Contains(tc.cmd.GetReason(), "budget") {
		t.Fatalf("ControlStream after a budget suspension: %v %v, want SUSPEND naming the budget", tc.cmd, tc.err)
	}
	resp, err = g.client.CheckAction(ctx, netReq(researcher, "en.wikipedia.org", 443))
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "agent suspended") {
		t.Fatalf("check after the budget suspension: %v %v", resp, err)
	}
}

func TestAgentModeOverride(t *testing.T) {
	g := startGateway(t, examplesDir(t), nil)
	ctx := context.Background()
	register(t, g, coder, nil)
	denied := toolReq(coder, "launch_missiles", "{}")
	check := func() *v1.CheckActionResponse {
		t.Helper()
		resp, err := g.client.CheckAction(ctx, denied)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := check(); resp.GetDecision() != v1.Decision_DENY {
		t.Fatalf("policy decision: %v, want DENY", resp)
	}
	code, m := postJSON(t, g.base+"/v1/agents/acme/eng/coder-1:mode", `{"mode": "OBSERVE", "reason": "rollout"}`)
	if code != 200 || m["mode_override"] != "OBSERVE" {
		t.Fatalf("POST :mode: %d %v", code, m)
	}
	resp := check()
	if resp.GetDecision() != v1.Decision_ALLOW || resp.GetEnforcementMode() != v1.EnforcementMode_OBSERVE ||
		resp.GetShadowDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "would be deny") {
		t.Fatalf("observe override: %v, want ALLOW in OBSERVE with shadow DENY", resp)
	}
	rec := auditRecord(t, g.srv.Store(), resp.GetDecisionId())
	if rec.Mode != action.ModeObserve || rec.ShadowDecision != action.Deny || rec.Decision != action.Allow {
		t.Fatalf("audit of an observed check: mode %s decision %s shadow %s", rec.Mode, rec.Decision, rec.ShadowDecision)
	}
	if _, err := lifecycle(g).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/coder-1", Mode: v1.EnforcementMode_DISABLED}); err != nil {
		t.Fatal(err)
	}
	if resp := check(); resp.GetDecision() != v1.Decision_ALLOW || resp.GetEnforcementMode() != v1.EnforcementMode_DISABLED {
		t.Fatalf("disabled override: %v", resp)
	}
	// A suspension still denies whatever the mode.
	if _, err := lifecycle(g).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1"}); err != nil {
		t.Fatal(err)
	}
	if resp := check(); resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "agent suspended") {
		t.Fatalf("suspended agent in disabled mode: %v", resp)
	}
	if _, err := lifecycle(g).ResumeAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1"}); err != nil {
		t.Fatal(err)
	}
	info, err := lifecycle(g).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/coder-1", Mode: v1.EnforcementMode_ENFORCEMENT_MODE_UNSPECIFIED})
	if err != nil || info.GetModeOverride() != v1.EnforcementMode_ENFORCEMENT_MODE_UNSPECIFIED {
		t.Fatalf("clear override: %v %v", info, err)
	}
	if resp := check(); resp.GetDecision() != v1.Decision_DENY || resp.GetEnforcementMode() != v1.EnforcementMode_ENFORCE {
		t.Fatalf("after clearing the override: %v", resp)
	}
	_, err = lifecycle(g).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/coder-1", Mode: 7})
	wantCode(t, "unknown mode", err, codes.InvalidArgument, "mode")
	_, err = lifecycle(g).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/nobody", Mode: v1.EnforcementMode_OBSERVE})
	wantCode(t, "unknown agent", err, codes.NotFound, "nobody")
	// Every change is a governance record naming the modes.
	page, err := g.srv.Store().QueryAudit(ctx, storage.AuditQuery{Event: storage.EventGovernance, Agent: "coder-1", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var modes []string
	for _, r := range page.Records {
		if r.RuleID == "agent.mode" {
			modes = append(modes, r.Reason)
		}
	}
	if len(modes) != 3 || !strings.Contains(strings.Join(modes, "|"), "policy -> observe: rollout") {
		t.Fatalf("mode changes audited: %q", modes)
	}
}

// subscribe opens an InvalidationService stream from after.
func subscribe(t *testing.T, g *testGateway, after int64) (grpc.ServerStreamingClient[v1.InvalidationEvent], context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := v1.NewInvalidationServiceClient(g.conn).Subscribe(ctx, &v1.SubscribeRequest{Subscriber: "test", LastSeqSeen: after})
	if err != nil {
		t.Fatal(err)
	}
	return st, cancel
}

func recvEvent(t *testing.T, st grpc.ServerStreamingClient[v1.InvalidationEvent]) *v1.InvalidationEvent {
	t.Helper()
	ev, err := st.Recv()
	if err != nil {
		t.Fatalf("receive invalidation: %v", err)
	}
	return ev
}

func TestInvalidationStreamOrderAndResume(t *testing.T) {
	dir := t.TempDir()
	copyDir(t, examplesDir(t), dir)
	g := startGateway(t, dir, nil)
	ctx := context.Background()
	register(t, g, coder, nil) // seq 1: registered
	st, cancel := subscribe(t, g, 1)

	ctl := &v1.AgentControlRequest{Id: "acme/eng/coder-1"}
	if _, err := lifecycle(g).SuspendAgent(ctx, ctl); err != nil { // 2
		t.Fatal(err)
	}
	if _, err := lifecycle(g).ResumeAgent(ctx, ctl); err != nil { // 3
		t.Fatal(err)
	}
	resp, err := g.client.CheckAction(ctx, rmReq(`{"command":"rm -rf build"}`))
	if err != nil || resp.GetApprovalId() == "" {
		t.Fatalf("%v %v", resp, err)
	}
	if _, err := approvalClient(g).Decide(ctx, &v1.DecideRequest{Id: resp.GetApprovalId(), Approve: true, DecidedBy: "alice"}); err != nil { // 4
		t.Fatal(err)
	}
	want := []struct {
		seq int64
		typ v1.InvalidationEvent_Type
	}{{2, v1.InvalidationEvent_TYPE_AGENT_SUSPENDED}, {3, v1.InvalidationEvent_TYPE_AGENT_RESUMED}, {4, v1.InvalidationEvent_TYPE_APPROVAL_RESOLVED}}
	for _, w := range want {
		ev := recvEvent(t, st)
		if ev.GetSeq() != w.seq || ev.GetType() != w.typ {
			t.Fatalf("got seq %d %s, want seq %d %s", ev.GetSeq(), ev.GetType(), w.seq, w.typ)
		}
		if w.typ == v1.InvalidationEvent_TYPE_APPROVAL_RESOLVED && ev.GetApprovalId() != resp.GetApprovalId() {
			t.Fatalf("approval event names %q, want %q", ev.GetApprovalId(), resp.GetApprovalId())
		}
	}
	cancel() // the subscriber disconnects ...

	// ... and misses a policy change and a mode change.
	v0 := g.srv.Core().Snapshot().Version()
	writeAtomic(t, filepath.Join(dir, "zz-extra.yaml"), blockWikipedia)
	waitFor(t, "policy reload", func() bool { return g.srv.Core().Snapshot().Version() != v0 })
	if _, err := lifecycle(g).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/coder-1", Mode: v1.EnforcementMode_OBSERVE}); err != nil {
		t.Fatal(err)
	}
	// Reconnecting from the last seq seen gets exactly the missed events, in order.
	st, _ = subscribe(t, g, 4)
	ev := recvEvent(t, st)
	if ev.GetSeq() != 5 || ev.GetType() != v1.InvalidationEvent_TYPE_POLICY_CHANGED || ev.GetPolicyVersion() != g.srv.Core().Snapshot().Version() {
		t.Fatalf("first missed event: %v, want seq 5 POLICY_CHANGED to the new version", ev)
	}
	ev = recvEvent(t, st)
	if ev.GetSeq() != 6 || ev.GetType() != v1.InvalidationEvent_TYPE_AGENT_MODE_CHANGED || ev.GetAgent().GetAgentId() != "coder-1" {
		t.Fatalf("second missed event: %v, want seq 6 AGENT_MODE_CHANGED", ev)
	}
	// Nothing else was in between: the next event is the next one raised.
	if _, err := lifecycle(g).SuspendAgent(ctx, ctl); err != nil {
		t.Fatal(err)
	}
	if ev = recvEvent(t, st); ev.GetSeq() != 7 || ev.GetType() != v1.InvalidationEvent_TYPE_AGENT_SUSPENDED {
		t.Fatalf("live event after the catch-up: %v, want seq 7 AGENT_SUSPENDED", ev)
	}
	// A position ahead of the log is answered with a resync.
	st, _ = subscribe(t, g, 1000)
	if ev = recvEvent(t, st); ev.GetType() != v1.InvalidationEvent_TYPE_RESYNC || ev.GetSeq() != 7 {
		t.Fatalf("subscribing ahead of the log: %v, want RESYNC at 7", ev)
	}
	bad, err := v1.NewInvalidationServiceClient(g.conn).Subscribe(ctx, &v1.SubscribeRequest{LastSeqSeen: -1})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, "negative last_seq_seen", err, codes.InvalidArgument, "last_seq_seen")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sharedReplicas starts two gateways in this process on one fresh
// PostgreSQL schema and one Redis key prefix, sharing the secrets key, as
// two replicas behind a load balancer.
func sharedReplicas(t *testing.T) (a, b *testGateway) {
	t.Helper()
	pgURL, redisURL := os.Getenv("AA_TEST_POSTGRES_URL"), os.Getenv("AA_TEST_REDIS_URL")
	if pgURL == "" || redisURL == "" {
		t.Skip("AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL not set: run scripts/testdb.sh start and eval \"$(scripts/testdb.sh env)\"")
	}
	name, store := pgtest.Schema(t, "lifecycle")
	key := filepath.Join(t.TempDir(), "secrets.key")
	mod := func(id string) func(*Config) {
		return func(c *Config) {
			c.Store = store
			c.Counters = pgtest.WithParam(redisURL, "prefix", name+":")
			c.SecretsKeyFile = key
			c.ReplicaID = id
		}
	}
	return startGateway(t, examplesDir(t), mod("gw-a")), startGateway(t, examplesDir(t), mod("gw-b"))
}

func TestLifecycleAcrossReplicas(t *testing.T) {
	a, b := sharedReplicas(t)
	ctx := context.Background()
	r := register(t, a, coder, nil) // on replica a: seq 1
	// The token a issued works on b (one shared signing key).
	if _, err := lifecycle(b).Heartbeat(ctx, &v1.HeartbeatRequest{Agent: coder, CredentialToken: r.token}); err != nil {
		t.Fatalf("heartbeat on the other replica: %v", err)
	}
	// The agent's ControlStream and a runtime's subscription are on b; its
	// checks go to b too, so b's cache must hold the agent before the suspension.
	sub, _ := subscribe(t, b, 1)
	stream, _ := controlStream(t, b, r)
	if resp, err := b.client.CheckAction(ctx, toolReq(coder, "git_status", "")); err != nil || resp.GetDecision() != v1.Decision_ALLOW {
		t.Fatalf("check on b before suspension: %v %v", resp, err)
	}
	cmds := receiveTimed(stream)
	start := time.Now()
	if _, err := lifecycle(a).SuspendAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1", Reason: "from replica a"}); err != nil {
		t.Fatal(err)
	}
	called := time.Since(start)
	tc := <-cmds
	if tc.err != nil || tc.cmd.GetType() != v1.ControlCommand_TYPE_SUSPEND || tc.cmd.GetReason() != "from replica a" {
		t.Fatalf("ControlStream on b: %v %v, want SUSPEND from replica a", tc.cmd, tc.err)
	}
	t.Logf("suspend on replica a to SUSPEND on replica b's ControlStream (PostgreSQL + Redis): %v (the SuspendAgent call, which also writes the audit record: %v)", tc.at.Sub(start), called)
	resp, err := b.client.CheckAction(ctx, toolReq(coder, "git_status", ""))
	if err != nil || resp.GetDecision() != v1.Decision_DENY || !strings.Contains(resp.GetReason(), "agent suspended") {
		t.Fatalf("check on b after the SUSPEND command: %v %v, want DENY agent suspended", resp, err)
	}
	ev := recvEvent(t, sub)
	if ev.GetSeq() != 2 || ev.GetType() != v1.InvalidationEvent_TYPE_AGENT_SUSPENDED || ev.GetAgent().GetAgentId() != "coder-1" {
		t.Fatalf("subscriber on b: %v, want seq 2 AGENT_SUSPENDED raised on a", ev)
	}
	// Events raised on both replicas share one sequence.
	if _, err := lifecycle(b).ResumeAgent(ctx, &v1.AgentControlRequest{Id: "acme/eng/coder-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := lifecycle(a).SetAgentMode(ctx, &v1.SetAgentModeRequest{Id: "acme/eng/coder-1", Mode: v1.EnforcementMode_OBSERVE}); err != nil {
		t.Fatal(err)
	}
	if ev = recvEvent(t, sub); ev.GetSeq() != 3 || ev.GetType() != v1.InvalidationEvent_TYPE_AGENT_RESUMED {
		t.Fatalf("%v, want seq 3 AGENT_RESUMED", ev)
	}
	if ev = recvEvent(t, sub); ev.GetSeq() != 4 || ev.GetType() != v1.InvalidationEvent_TYPE_AGENT_MODE_CHANGED {
		t.Fatalf("%v, want seq 4 AGENT_MODE_CHANGED", ev)
	}
	// The mode set on a governs checks on b.
	resp, err = b.client.CheckAction(ctx, toolReq(coder, "launch_missiles", "{}"))
	if err != nil || resp.GetDecision() != v1.Decision_ALLOW || resp.GetEnforcementMode() != v1.EnforcementMode_OBSERVE {
		t.Fatalf("check on b in observe mode set on a: %v %v", resp, err)
	}
	// Resuming on a replica a subscriber of a misses nothing.
	subA, _ := subscribe(t, a, 2)
	for _, want := range []int64{3, 4} {
		if ev = recvEvent(t, subA); ev.GetSeq() != want {
			t.Fatalf("resume on a: seq %d, want %d", ev.GetSeq(), want)
		}
	}
}
