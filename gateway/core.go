package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/budget"
	"github.com/agent-assembly/agent-assembly/policy"
	"github.com/agent-assembly/agent-assembly/ratelimit"
	"github.com/agent-assembly/agent-assembly/scan"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Auditor makes one audit record durable. storage/groupcommit.Writer
// implements it; Append returns only when the record is durable as configured.
type Auditor interface {
	Append(ctx context.Context, r *storage.AuditRecord) error
}

// untilAuditor is an Auditor that can stop waiting for a record to be
// durable at a deadline without dropping it: the record is taken for
// writing under ctx and written whatever the wait (groupcommit.Writer).
// With one, Decide honours CheckOptions.Deadline.
type untilAuditor interface {
	AppendUntil(ctx context.Context, r *storage.AuditRecord, until time.Time) error
}

// Options configures a Core.
type Options struct {
	// Audit receives every decision and rejected request. Required.
	Audit Auditor
	// Chain names this replica's audit chain.
	Chain   string
	Logger  *slog.Logger
	Metrics *Metrics
	Limits  Limits
	// AuditTimeout bounds the audit write of one decision; when it passes the
	// decision becomes a deny (fail closed). Zero means 2 seconds.
	AuditTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Counters back tool rate limits and LLM budgets. Nil disables both
	// (every limit in the policy is then unenforced, which New logs).
	Counters storage.Counters
	// Pricing prices LLM calls for budgets; nil means the built-in table.
	Pricing *budget.Pricing
	// Agents, when set, is consulted for suspended or killed agents and is
	// told when a budget suspends one.
	Agents AgentStatuses
	// Approvals keeps approval requests; nil makes every PENDING a deny.
	Approvals ApprovalStore
	// LimitTimeout bounds each rate-limit and budget call to the counters
	// backend; when it passes the action is denied (fail closed). Zero means
	// 500 milliseconds.
	LimitTimeout time.Duration
}

// AgentStatuses is what the core needs from the agent registry.
type AgentStatuses interface {
	GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error)
	SetAgentStatus(ctx context.Context, id action.AgentID, s storage.AgentStatus, reason string) error
}

// Core is the decision core shared by every transport.
type Core struct {
	snap  atomic.Pointer[policy.Snapshot]
	views atomic.Pointer[views]
	audit Auditor
	// auditUntil is audit when it is an untilAuditor, else nil.
	auditUntil untilAuditor
	chain      string
	log        *slog.Logger
	metrics    *Metrics
	series     checkSeries // cached series of metrics.Checks and CheckDuration
	limits     Limits
	auditTO    time.Duration
	now        func() time.Time

	limiter   *ratelimit.Limiter
	meter     *budget.Meter
	agents    AgentStatuses
	limitTO   time.Duration
	holds     holdStore
	overrides chan struct{} // bounds the overrideRecord writes in flight
	approvals ApprovalStore
	hooks     alertHooks // see alerting.go
}

// NewCore builds a Core. It serves no checks (every check is denied with the
// reason "no policy loaded") until SetSnapshot is called.
func NewCore(o Options) (*Core, error) {
	if o.Audit == nil {
		return nil, errors.New("new core: an audit writer is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Limits.MaxPayloadBytes <= 0 {
		o.Limits.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if o.AuditTimeout <= 0 {
		o.AuditTimeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.LimitTimeout <= 0 {
		o.LimitTimeout = 500 * time.Millisecond
	}
	c := &Core{audit: o.Audit, chain: o.Chain, log: o.Logger, metrics: o.Metrics,
		limits: o.Limits, auditTO: o.AuditTimeout, now: o.Now, agents: o.Agents,
		limitTO: o.LimitTimeout, approvals: o.Approvals, overrides: make(chan struct{}, maxOverrides)}
	c.auditUntil, _ = o.Audit.(untilAuditor)
	if o.Counters != nil {
		c.holds = o.Counters
		c.limiter = ratelimit.New(o.Counters, ratelimit.Options{})
		c.meter = budget.NewMeter(o.Counters, o.Pricing, budget.Options{Now: o.Now, OnThreshold: c.onThreshold})
	}
	return c, nil
}

// SetSnapshot atomically replaces the active policy. Checks in flight finish
// on the snapshot they started with; reload never blocks a check.
func (c *Core) SetSnapshot(s *policy.Snapshot) {
	c.views.Store(newViews(s))
	old := c.snap.Swap(s)
	if old != nil {
		c.metrics.PolicyInfo.DeleteLabelValues(old.Version())
	}
	c.metrics.PolicyInfo.WithLabelValues(s.Version()).Set(1)
}

// Snapshot returns the active policy, or nil before the first SetSnapshot.
func (c *Core) Snapshot() *policy.Snapshot { return c.snap.Load() }

// Outcome is the result of deciding one action.
type Outcome struct {
	DecisionID string
	Decision   action.Decision
	Shadow     action.Decision
	Mode       action.Mode
	RuleID     string
	Reason     string
	Version    string
	Latency    time.Duration
	// Limited is set when a rate limit or budget denied the action (HTTP 429).
	Limited    bool
	RetryAfter time.Duration
	// Redactions are the credentials the caller must replace before acting.
	Redactions []scan.Finding
	// ApprovalID is the approval request behind a PENDING (or approved) answer.
	ApprovalID string
}

// Check validates, decides, audits and answers one request. A malformed
// request is audited as rejected and returned as a *RequestError.
func (c *Core) Check(ctx context.Context, req *v1.CheckActionRequest) (*v1.CheckActionResponse, error) {
	start := c.now()
	a, err := toAction(req, c.limits, start)
	if err != nil {
		c.reject(ctx, req, err, start)
		return nil, err
	}
	if a.TraceID == "" {
		// The caller's trace (W3C traceparent, read by the tracing
		// middleware) names the audit record when the request does not.
		if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
			a.TraceID, a.SpanID = sc.TraceID().String(), sc.SpanID().String()
		}
	}
	out := c.Decide(ctx, &a, start, CheckOptions{WaitForApproval: req.GetWaitForApproval(), ApprovalID: req.GetApprovalId()})
	return out.Response(), nil
}

// Decide evaluates an already normalised action, appends its audit record and
// returns the outcome. start is when the request arrived. If the record cannot
// be made durable, the outcome is a deny that says so.
func (c *Core) Decide(ctx context.Context, a *action.Action, start time.Time, opts CheckOptions) Outcome {
	out := Outcome{DecisionID: newIDAt(start)}
	var payload []byte
	if snap := c.snap.Load(); snap == nil {
		out.Decision, out.Mode, out.RuleID, out.Reason = action.Deny, action.ModeEnforce, "default", "no policy loaded: failing closed"
	} else {
		res := snap.Evaluate(policy.Input{Action: a})
		out.Decision, out.Shadow, out.Mode = res.Decision, res.ShadowDecision, res.Mode
		out.RuleID, out.Reason, out.Version = res.RuleID, res.Reason, res.PolicyVersion
		if res.ShadowDecision != action.DecisionUnspecified && res.ShadowDecision != res.Decision {
			out.Reason += "; observe mode: would be " + res.ShadowDecision.String() + " by " + res.ShadowRuleID
		}
		override, registered := c.checkAgent(ctx, a, &out, opts.Deadline)
		v := c.viewsFor(snap)
		av := v.get(a.Agent)
		c.scanAction(av, a, &out) // redacts a: nothing below sees a raw credential
		applyAgentMode(override, &res, &out)
		payload = encodePayload(a)
		switch out.Decision {
		case action.Allow, action.Redact:
			c.applyLimits(ctx, av, a, &res, &out, registered, opts.Deadline)
		case action.Pending:
			c.resolvePending(ctx, a, payload, av, opts, &out)
			if out.Decision == action.Allow {
				c.applyLimits(ctx, av, a, &res, &out, registered, opts.Deadline)
			}
		}
	}
	if payload == nil {
		payload = encodePayload(a)
	}
	if opts.Note != "" {
		out.Reason += "; " + opts.Note
	}
	out.Latency = c.now().Sub(start)

	rec := &storage.AuditRecord{
		Chain: c.chain, ID: out.DecisionID, Time: start, Event: storage.EventDecision,
		Agent: a.Agent, SessionID: a.SessionID, TraceID: a.TraceID, SpanID: a.SpanID,
		Kind: a.Kind, Payload: payload, Decision: out.Decision, RuleID: out.RuleID,
		PolicyVersion: out.Version, Mode: out.Mode, ShadowDecision: out.Shadow,
		Reason: out.Reason, Latency: out.Latency,
	}
	if err := c.appendBy(ctx, rec, opts.Deadline); err != nil {
		c.metrics.AuditErrors.Inc()
		c.log.ErrorContext(ctx, "audit write failed; denying", "decision_id", out.DecisionID, "agent", a.Agent.String(), "err", err)
		if a.Kind == action.KindLLMCall && (out.Decision == action.Allow || out.Decision == action.Redact) {
			// The call will not happen. A caller with a deadline does not
			// wait for the budget store too: its answer is due.
			if opts.Deadline.IsZero() {
				c.releaseHold(ctx, out.DecisionID)
			} else {
				go c.releaseHold(context.WithoutCancel(ctx), out.DecisionID)
			}
		}
		if out.Decision != action.Deny && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			// The record was queued and may still be written, with the
			// policy's decision: say in the log what was answered instead.
			select {
			case c.overrides <- struct{}{}:
				go c.appendOverride(c.overrideRecord(rec, err))
			default: // the store is down, not slow: no more waiting goroutines
				c.metrics.AuditErrors.Inc()
			}
		}
		out.Decision = action.Deny
		out.RuleID = "audit"
		out.Reason = "audit log unavailable, failing closed: " + err.Error()
	}
	out.Latency = c.now().Sub(start)
	c.alertDecision(a, &out)
	layer := opts.Layer
	if layer == "" {
		layer = LayerSDK
	}
	c.series.count(c.metrics, out.Decision, a.Kind, out.Mode, layer).Inc()
	c.series.duration(c.metrics, out.Decision).Observe(out.Latency.Seconds())
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(
			attribute.String("aa.agent", a.Agent.String()), attribute.String("aa.action", a.Kind.String()),
			attribute.String("aa.decision", out.Decision.String()), attribute.String("aa.rule", out.RuleID),
			attribute.String("aa.decision_id", out.DecisionID), attribute.String("aa.layer", layer))
	}
	return out
}

// HonoursDeadline reports whether Decide ends every wait on a store by
// CheckOptions.Deadline when it is set (the ext_authz server then decides
// on the Check's own goroutine): it does when its Auditor can stop waiting
// for a record without dropping it (Options.Audit is a groupcommit.Writer,
// as in the gateway). Decide's other work is computation: policy evaluation
// is bounded by the policy's compiled size and CEL cost limits.
func (c *Core) HonoursDeadline() bool { return c.auditUntil != nil }

// append writes one record; a cancelled caller does not cancel the write.
func (c *Core) append(ctx context.Context, rec *storage.AuditRecord) error {
	return c.appendBy(ctx, rec, time.Time{})
}

// appendBy is append that stops waiting for the write at deadline (when set
// and the Auditor can): the record is taken for writing within the audit
// timeout as always, and written even when the wait ends at the deadline
// (see Decide's override record for what the caller was answered).
func (c *Core) appendBy(ctx context.Context, rec *storage.AuditRecord, deadline time.Time) error {
	actx := bound(ctx, c.auditTO)
	var err error
	if c.auditUntil != nil && !deadline.IsZero() {
		err = c.auditUntil.AppendUntil(actx, rec, deadline)
	} else {
		err = c.audit.Append(actx, rec)
	}
	actx.release()
	c.metrics.storeError(storeOpAuditAppend, err)
	return err
}

// reject audits a malformed request.
func (c *Core) reject(ctx context.Context, req *v1.CheckActionRequest, err error, start time.Time) {
	field := "request"
	var re *RequestError
	if errors.As(err, &re) {
		field = re.Field
	}
	c.metrics.Rejected.WithLabelValues(field).Inc()
	rec := &storage.AuditRecord{
		Chain: c.chain, ID: newID(), Time: start, Event: storage.EventRejected,
		Agent: agentOf(req), TraceID: clipID(req.GetTraceId()), SessionID: clipID(req.GetSessionId()),
		Kind:     action.Kind(req.GetActionType()),
		Payload:  []byte(`{}`),
		Decision: action.Deny, RuleID: "request", Mode: action.ModeEnforce,
		Reason: "rejected: " + err.Error(), Latency: c.now().Sub(start),
	}
	if _, ok := v1.ActionType_name[int32(req.GetActionType())]; !ok {
		rec.Kind = action.KindUnspecified
	}
	if aerr := c.append(ctx, rec); aerr != nil {
		c.metrics.AuditErrors.Inc()
		c.log.ErrorContext(ctx, "audit write of rejected request failed", "err", aerr)
	}
}

func clipID(s string) string {
	if len(s) > maxIDLen {
		return s[:maxIDLen]
	}
	return s
}

// Response renders the outcome on the wire.
func (o Outcome) Response() *v1.CheckActionResponse {
	return &v1.CheckActionResponse{
		Decision:        decisionToProto(o.Decision),
		Reason:          o.Reason,
		PolicyRuleId:    o.RuleID,
		PolicyVersion:   o.Version,
		DecisionLatency: durationpb.New(o.Latency),
		DecisionId:      o.DecisionID,
		EnforcementMode: modeToProto(o.Mode),
		ShadowDecision:  decisionToProto(o.Shadow),
		RetryAfter:      retryAfter(o.RetryAfter),
		Redactions:      redactions(o.Redactions),
		ApprovalId:      o.ApprovalID,
	}
}

func redactions(fs []scan.Finding) []*v1.Redaction {
	if len(fs) == 0 {
		return nil
	}
	out := make([]*v1.Redaction, len(fs))
	for i, f := range fs {
		out[i] = &v1.Redaction{Kind: string(f.Kind), Path: f.Path, Start: int32(f.Start), End: int32(f.End), Replacement: f.Redacted}
	}
	return out
}

func retryAfter(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

func decisionToProto(d action.Decision) v1.Decision {
	switch d {
	case action.Allow:
		return v1.Decision_ALLOW
	case action.Deny:
		return v1.Decision_DENY
	case action.Pending:
		return v1.Decision_PENDING
	case action.Redact:
		return v1.Decision_REDACT
	}
	return v1.Decision_DECISION_UNSPECIFIED
}

func decisionFromProto(d v1.Decision) action.Decision {
	switch d {
	case v1.Decision_ALLOW:
		return action.Allow
	case v1.Decision_DENY:
		return action.Deny
	case v1.Decision_PENDING:
		return action.Pending
	case v1.Decision_REDACT:
		return action.Redact
	}
	return action.DecisionUnspecified
}

func modeToProto(m action.Mode) v1.EnforcementMode {
	switch m {
	case action.ModeEnforce:
		return v1.EnforcementMode_ENFORCE
	case action.ModeObserve:
		return v1.EnforcementMode_OBSERVE
	case action.ModeDisabled:
		return v1.EnforcementMode_DISABLED
	}
	return v1.EnforcementMode_ENFORCEMENT_MODE_UNSPECIFIED
}

func modeFromProto(m v1.EnforcementMode) action.Mode {
	switch m {
	case v1.EnforcementMode_ENFORCE:
		return action.ModeEnforce
	case v1.EnforcementMode_OBSERVE:
		return action.ModeObserve
	case v1.EnforcementMode_DISABLED:
		return action.ModeDisabled
	}
	return action.ModeUnspecified
}

// String summarises the outcome for logs.
func (o Outcome) String() string {
	return fmt.Sprintf("%s by %s (%s)", o.Decision, o.RuleID, o.Reason)
}

// AuditGovernance appends a governance record for an operator or system
// action (a secret stored, a policy change) on behalf of agent, which may be
// zero for actions that concern no agent. payload must already be free of
// secret values; nil records an empty object.
func (c *Core) AuditGovernance(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error {
	return c.auditGovernance(ctx, agent, ruleID, reason, payload, action.Allow)
}

// AuditRefusal is AuditGovernance for a call that was refused (an operator
// without a valid key or the role): the record's decision is DENY.
func (c *Core) AuditRefusal(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error {
	return c.auditGovernance(ctx, agent, ruleID, reason, payload, action.Deny)
}

func (c *Core) auditGovernance(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte, d action.Decision) error {
	if payload == nil {
		payload = []byte(`{}`)
	}
	payload = withActor(ctx, payload)
	rec := &storage.AuditRecord{
		Chain: c.chain, ID: newID(), Time: c.now(), Event: storage.EventGovernance, Agent: agent,
		Payload: payload, Decision: d, RuleID: ruleID, Mode: action.ModeEnforce, Reason: reason,
	}
	if err := c.append(ctx, rec); err != nil {
		c.metrics.AuditErrors.Inc()
		c.log.ErrorContext(ctx, "audit governance action", "rule", ruleID, "err", err)
		return fmt.Errorf("audit %s: %w", ruleID, err)
	}
	return nil
}

// overrideRecord is the governance record saying that decision rec, whose
// audit write did not finish in time, was answered DENY (fail closed)
// whatever rec says: the writer may still store rec later, and the log must
// not then show only an ALLOW the client never received. Queued after rec, it
// follows it in the chain when both are written.
func (c *Core) overrideRecord(rec *storage.AuditRecord, cause error) *storage.AuditRecord {
	payload, _ := json.Marshal(struct {
		DecisionID string `json:"decision_id"`
		Decision   string `json:"recorded_decision"`
	}{rec.ID, rec.Decision.String()})
	return &storage.AuditRecord{
		Chain: c.chain, ID: newID(), Time: c.now(), Event: storage.EventGovernance,
		Agent: rec.Agent, SessionID: rec.SessionID, TraceID: rec.TraceID, SpanID: rec.SpanID, Kind: rec.Kind,
		Payload: payload, Decision: action.Deny, RuleID: "audit", Mode: action.ModeEnforce,
		Reason: fmt.Sprintf("decision %s was answered DENY, failing closed, because its audit record was not durable in time (%v); that record, if written, shows %s, the policy's decision", rec.ID, cause, rec.Decision),
	}
}

// maxOverrides bounds the overrideRecord writes waiting for a slow store. A
// store that stays slow beyond it fails the overrides in excess, which are
// counted as audit errors.
const maxOverrides = 256

// appendOverride writes an overrideRecord, waiting longer than a check
// would: the store was slow a moment ago.
func (c *Core) appendOverride(o *storage.AuditRecord) {
	defer func() { <-c.overrides }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.audit.Append(ctx, o); err != nil {
		c.metrics.AuditErrors.Inc()
		c.log.Error("audit the fail-closed answer of a decision whose record was late", "record_id", o.ID, "err", err)
	}
}
