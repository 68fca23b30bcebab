package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// ReasonUnavailable starts the reason of every answer given without the gateway.
const ReasonUnavailable = "gateway unavailable"

// handle runs one request through the pipeline: decode (done by the
// caller) → enrich with the socket's identity → strip the SDK's claims and
// re-scan → answer from the cache or check with the gateway → report.
func (rt *Runtime) handle(ctx context.Context, a *agentState, m proto.Message) *v1.RuntimeReply {
	switch r := m.(type) {
	case *v1.RuntimeQuery:
		stripClaims(rt.log, a.ID.String(), r.GetClaims())
		reply := rt.query(ctx, a, r.GetCheck(), r.GetNoCache())
		reply.RequestId = r.GetRequestId()
		return reply
	case *v1.RuntimeApproval:
		reply := rt.approval(ctx, a, r)
		reply.RequestId = r.GetRequestId()
		return reply
	case *v1.RuntimeEvents:
		stripClaims(rt.log, a.ID.String(), r.GetClaims())
		reply := rt.events(ctx, a, r.GetEvents())
		reply.RequestId = r.GetRequestId()
		return reply
	case *v1.RuntimeUsage:
		reply := rt.usage(ctx, a, r.GetUsage())
		reply.RequestId = r.GetRequestId()
		return reply
	case *v1.RuntimeHeartbeat:
		return &v1.RuntimeReply{RequestId: r.GetRequestId(), Health: rt.health()}
	}
	return &v1.RuntimeReply{Error: &v1.RuntimeError{Code: v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_INTERNAL, Message: fmt.Sprintf("no handler for %T", m)}}
}

func badRequest(msg string) *v1.RuntimeReply {
	return &v1.RuntimeReply{
		Error: &v1.RuntimeError{Code: v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_BAD_REQUEST, Message: msg},
		Check: &v1.CheckActionResponse{Decision: v1.Decision_DENY, Reason: "invalid request: " + msg, PolicyRuleId: "request"},
	}
}

// enrich sets the socket's identity on req; whatever the SDK put there is replaced.
func (a *agentState) enrich(req *v1.CheckActionRequest) {
	req.Agent = a.pid
	req.CredentialToken = *a.token.Load()
}

// approval waits (bounded by ApprovalTimeout) until a human decides the
// approval, then presents it with the same action to the gateway, which
// answers ALLOW only for the action it was granted for.
func (rt *Runtime) approval(ctx context.Context, a *agentState, r *v1.RuntimeApproval) *v1.RuntimeReply {
	req := r.GetCheck()
	if r.GetApprovalId() == "" {
		return badRequest("approval_id is required")
	}
	if req == nil || req.GetContext() == nil {
		return badRequest("check (the pending action) is required")
	}
	wctx, cancel := context.WithTimeout(ctx, rt.opts.ApprovalTimeout)
	_, err := rt.approvals.WaitApproval(withToken(wctx, a), &v1.GetApprovalRequest{Id: r.GetApprovalId()})
	cancel()
	if err != nil && unavailable(err) && status.Code(err) != codes.DeadlineExceeded {
		a.enrich(req)
		reds, clean := rescan(rt.scanner, req)
		return rt.failed(ctx, a, clean, reds, err)
	}
	// Whatever the wait said (decided, still pending at our deadline, not
	// found), the gateway's answer to the presented approval is the decision.
	req.ApprovalId, req.WaitForApproval = r.GetApprovalId(), false
	return rt.query(ctx, a, req, true)
}

func (rt *Runtime) query(ctx context.Context, a *agentState, req *v1.CheckActionRequest, noCache bool) *v1.RuntimeReply {
	if req == nil {
		return badRequest("check is required")
	}
	if req.GetContext() == nil {
		return badRequest("check has no action context (llm_call, tool_call, file_op, network_call, process_exec, agent_spawn or tool_result)")
	}
	a.enrich(req)
	reds, clean := rescan(rt.scanner, req)

	var key cacheKey
	useCache := !noCache && rt.opts.CacheTTL >= 0 && rt.cache.live.Load() && cacheable(req)
	if useCache {
		key, useCache = keyOf(req)
	}
	if useCache {
		if resp, ok := rt.cache.get(key); ok {
			rt.record(a, clean, resp.GetDecision(), resp.GetPolicyRuleId(), resp.GetPolicyVersion(), resp.GetDecisionId(), "served from the runtime's decision cache", false)
			return &v1.RuntimeReply{Check: resp, Cached: true}
		}
	}
	gen := rt.cache.gen.Load()
	cctx, cancel := context.WithTimeout(ctx, rt.opts.CheckTimeout)
	resp, err := rt.policy.CheckAction(cctx, req)
	cancel()
	if err != nil {
		return rt.failed(ctx, a, clean, reds, err)
	}
	rt.reachable.Store(true)
	a.lastMode.Store(int32(resp.GetEnforcementMode()))
	rt.cache.observe(resp.GetPolicyVersion())
	if useCache {
		rt.cache.put(key, gen, resp)
	}
	return &v1.RuntimeReply{Check: mergeRedactions(resp, reds)}
}

// unavailable reports whether err means the gateway could not answer.
func unavailable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted, codes.Unknown:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// failed answers a check the gateway did not decide: fail closed (or open
// for an observe-only agent when configured) and record the local decision.
func (rt *Runtime) failed(ctx context.Context, a *agentState, clean *v1.CheckActionRequest, reds []*v1.Redaction, err error) *v1.RuntimeReply {
	if !unavailable(err) {
		st := status.Convert(err)
		return &v1.RuntimeReply{
			Error: &v1.RuntimeError{Code: v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_BAD_REQUEST, Message: st.Message()},
			Check: &v1.CheckActionResponse{Decision: v1.Decision_DENY, Reason: "gateway refused the request: " + st.Message(), PolicyRuleId: "request"},
		}
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	if rt.reachable.Swap(false) {
		rt.log.Warn("gateway unreachable; answering locally", "fail_mode", rt.opts.FailMode, "err", err)
	}
	msg := ReasonUnavailable + ": " + status.Convert(err).Message()
	resp := &v1.CheckActionResponse{Decision: v1.Decision_DENY, Reason: msg + "; failing closed", PolicyRuleId: "runtime/fail-closed", EnforcementMode: v1.EnforcementMode_ENFORCE}
	if rt.opts.FailMode == FailOpenObserve && v1.EnforcementMode(a.lastMode.Load()) == v1.EnforcementMode_OBSERVE {
		resp = &v1.CheckActionResponse{Decision: v1.Decision_ALLOW, Reason: msg + "; failing open (observe-only policy)", PolicyRuleId: "runtime/fail-open", EnforcementMode: v1.EnforcementMode_OBSERVE}
		resp = mergeRedactions(resp, reds)
	}
	rt.record(a, clean, resp.GetDecision(), resp.GetPolicyRuleId(), "", "", resp.GetReason(), false)
	return &v1.RuntimeReply{
		Error: &v1.RuntimeError{Code: v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_UNAVAILABLE, Message: msg},
		Check: resp,
	}
}

// record queues an audit event the runtime decided or saw; it is written to
// the buffer with the next batch and forwarded in order.
func (rt *Runtime) record(a *agentState, req *v1.CheckActionRequest, d v1.Decision, rule, version, decisionID, reason string, sdk bool) {
	layer := v1.Layer_LAYER_RUNTIME
	if sdk {
		layer = v1.Layer_LAYER_SDK
	}
	ev := &v1.ReportedEvent{
		Layer: layer, Time: timestamppb.New(rt.now()), Action: withoutToken(req), Decision: d,
		RuleId: rule, PolicyVersion: version, DecisionId: decisionID, Reason: reason,
	}
	if err := rt.buf.Enqueue(ev); err != nil {
		rt.log.Error("audit event not buffered", "agent", a.ID.String(), "err", err)
	}
}

// withoutToken returns req without its credential token, which is never written to disk.
func withoutToken(req *v1.CheckActionRequest) *v1.CheckActionRequest {
	if req.GetCredentialToken() == "" {
		return req
	}
	c := proto.Clone(req).(*v1.CheckActionRequest)
	c.CredentialToken = ""
	return c
}

// events makes the SDK's event reports durable, re-scanned and with the
// socket's identity, and replies once they are on disk.
func (rt *Runtime) events(ctx context.Context, a *agentState, evs []*v1.RuntimeEvent) *v1.RuntimeReply {
	if len(evs) == 0 {
		return badRequest("events is empty")
	}
	out := make([]*v1.ReportedEvent, 0, len(evs))
	now := rt.now()
	for i, ev := range evs {
		req := ev.GetAction()
		if req == nil || req.GetContext() == nil {
			return badRequest(fmt.Sprintf("events[%d].action has no action context", i))
		}
		a.enrich(req)
		_, clean := rescan(rt.scanner, req)
		reason := ev.GetOutcome()
		if d := ev.GetDuration(); d != nil {
			reason += fmt.Sprintf(" (took %s)", d.AsDuration().Round(time.Microsecond))
		}
		out = append(out, &v1.ReportedEvent{
			Layer: v1.Layer_LAYER_SDK, Time: timestamppb.New(now), Action: withoutToken(clean),
			Decision: v1.Decision_DECISION_UNSPECIFIED, RuleId: "sdk/event", DecisionId: ev.GetDecisionId(), Reason: reason,
		})
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rt.buf.Append(wctx, out...); err != nil {
		return &v1.RuntimeReply{Error: &v1.RuntimeError{Code: v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_INTERNAL, Message: "buffer events: " + err.Error()}}
	}
	return &v1.RuntimeReply{Accepted: int32(len(out))}
}

// usage forwards actual LLM usage; it is not buffered (budgets reconcile
// from the next call's reservation when it is lost).
func (rt *Runtime) usage(ctx context.Context, a *agentState, u *v1.RecordUsageRequest) *v1.RuntimeReply {
	if u == nil {
		return badRequest("usage is required")
	}
	u.Agent, u.CredentialToken = a.pid, *a.token.Load()
	cctx, cancel := context.WithTimeout(ctx, rt.opts.CheckTimeout)
	defer cancel()
	resp, err := rt.policy.RecordUsage(cctx, u)
	if err != nil {
		code := v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_BAD_REQUEST
		msg := status.Convert(err).Message()
		if unavailable(err) {
			code, msg = v1.RuntimeErrorCode_RUNTIME_ERROR_CODE_UNAVAILABLE, ReasonUnavailable+": "+msg
		}
		return &v1.RuntimeReply{Error: &v1.RuntimeError{Code: code, Message: msg}}
	}
	return &v1.RuntimeReply{Usage: resp}
}
