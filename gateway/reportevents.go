package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Limits of one ReportEvents call.
const (
	// MaxReportedEvents is the most events one ReportEvents call may carry.
	MaxReportedEvents = 1000
	// maxEventIDLen bounds reporter names and event ids.
	maxEventIDLen = 128
	// reportDedupTTL is how long an event id is remembered. A reporter that
	// retries later than this may duplicate an event.
	reportDedupTTL = 30 * 24 * time.Hour
)

// ReportLog is what ReportEvents needs from the store: the audit log to
// append to and counters that remember event ids.
type ReportLog interface {
	AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error
	Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error)
	Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error)
}

// reports appends reported events to their own chain, one batch per call.
type reports struct {
	core  *Core
	store ReportLog
	chain string
	mu    sync.Mutex // one writer per chain: batches append in arrival order
}

// WithReports enables ReportEvents: events are normalised and scanned with
// core's policy, deduplicated by reporter and event id in store's counters,
// and appended in order to the chain "<core chain>/reports" of store's audit
// log. It returns s.
func (s *AuditService) WithReports(core *Core, store ReportLog) *AuditService {
	s.reports = &reports{core: core, store: store, chain: core.chain + "/reports"}
	return s
}

// ReportEvents implements AuditService.ReportEvents. The batch is validated
// as a whole (a bad event rejects the call and changes nothing); events whose
// id the reporter sent before are counted as duplicates and not appended
// again; the rest are appended in order in one transaction. A kernel-layer
// event is first linked to the decision another layer made about the same
// action (see correlate), so the audit shows which layers saw it.
func (s *AuditService) ReportEvents(ctx context.Context, req *v1.ReportEventsRequest) (*v1.ReportEventsResponse, error) {
	r := s.reports
	if r == nil {
		return nil, status.Error(codes.Unimplemented, "report events: this gateway was built without an event sink")
	}
	recs, keys, acts, err := r.records(req)
	if err != nil {
		return nil, requestStatus(err)
	}
	layers := make([]string, len(recs))
	for i, ev := range req.GetEvents() {
		layers[i], _ = layerName(ev.GetLayer())
	}
	r.correlate(ctx, recs, acts, layers)
	r.mu.Lock()
	defer r.mu.Unlock()
	expires := r.core.now().Add(reportDedupTTL)
	var fresh []*storage.AuditRecord
	var reserved []string
	release := func() {
		for _, k := range reserved {
			if _, err := r.store.Adjust(context.WithoutCancel(ctx), k, -1, expires); err != nil {
				r.core.log.Error("release reported event id; a retry will be counted as a duplicate", "key", k, "err", err)
			}
		}
	}
	for i, rec := range recs {
		res, err := r.store.Reserve(ctx, keys[i], 1, 1, expires)
		if err != nil {
			release()
			return nil, storeStatus("remember reported event id", err)
		}
		if res.Allowed {
			fresh = append(fresh, rec)
			reserved = append(reserved, keys[i])
		}
	}
	if len(fresh) > 0 {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.core.auditTO)
		err := r.store.AppendAudit(actx, fresh)
		cancel()
		if err != nil {
			release()
			return nil, storeStatus("append reported events", err)
		}
	}
	return &v1.ReportEventsResponse{Appended: int32(len(fresh)), Duplicates: int32(len(recs) - len(fresh))}, nil
}

// records validates the batch and builds one audit record and one dedup key per event.
func (r *reports) records(req *v1.ReportEventsRequest) ([]*storage.AuditRecord, []string, []action.Action, error) {
	if err := checkID("reporter", req.GetReporter(), true); err != nil {
		return nil, nil, nil, err
	}
	if len(req.GetReporter()) > maxEventIDLen {
		return nil, nil, nil, badField("reporter", "is %d bytes, over the limit of %d", len(req.GetReporter()), maxEventIDLen)
	}
	evs := req.GetEvents()
	if len(evs) == 0 {
		return nil, nil, nil, badField("events", "is empty")
	}
	if len(evs) > MaxReportedEvents {
		return nil, nil, nil, badField("events", "has %d events, over the limit of %d per call", len(evs), MaxReportedEvents)
	}
	now := r.core.now()
	recs := make([]*storage.AuditRecord, len(evs))
	acts := make([]action.Action, len(evs))
	keys := make([]string, len(evs))
	seen := make(map[string]bool, len(evs))
	for i, ev := range evs {
		field := fmt.Sprintf("events[%d]", i)
		id := ev.GetEventId()
		if err := checkID(field+".event_id", id, true); err != nil {
			return nil, nil, nil, err
		}
		if len(id) > maxEventIDLen {
			return nil, nil, nil, badField(field+".event_id", "is %d bytes, over the limit of %d", len(id), maxEventIDLen)
		}
		if seen[id] {
			return nil, nil, nil, badField(field+".event_id", "%q appears twice in the batch", id)
		}
		seen[id] = true
		layer, ok := layerName(ev.GetLayer())
		if !ok {
			return nil, nil, nil, badField(field+".layer", "must be sdk, runtime, envoy or kernel, not %v", ev.GetLayer())
		}
		when := now
		if ev.GetTime() != nil {
			if err := ev.GetTime().CheckValid(); err != nil {
				return nil, nil, nil, badField(field+".time", "%v", err)
			}
			when = ev.GetTime().AsTime()
		}
		a, err := toAction(ev.GetAction(), r.core.limits, when)
		if err != nil {
			if re, ok := err.(*RequestError); ok {
				re.Field = field + ".action." + re.Field
			}
			return nil, nil, nil, err
		}
		d := decisionFromProto(ev.GetDecision())
		if ev.GetDecision() != v1.Decision_DECISION_UNSPECIFIED && d == action.DecisionUnspecified {
			return nil, nil, nil, badField(field+".decision", "unknown value %d", ev.GetDecision())
		}
		for _, f := range []struct{ name, v string }{
			{".rule_id", ev.GetRuleId()}, {".policy_version", ev.GetPolicyVersion()}, {".decision_id", ev.GetDecisionId()},
		} {
			if err := checkID(field+f.name, f.v, false); err != nil {
				return nil, nil, nil, err
			}
		}
		if len(ev.GetReason()) > 4096 {
			return nil, nil, nil, badField(field+".reason", "is %d bytes, over the limit of 4096", len(ev.GetReason()))
		}
		r.redact(&a)
		acts[i] = a
		rule := ev.GetRuleId()
		if rule == "" {
			rule = "layer/" + layer
		}
		reason := "reported by " + layer
		if ev.GetDecisionId() != "" {
			reason += " after decision " + ev.GetDecisionId()
		}
		if ev.GetReason() != "" {
			reason += ": " + ev.GetReason()
		}
		sum := sha256.Sum256([]byte(req.GetReporter() + "\x00" + id))
		keys[i] = "report:" + hex.EncodeToString(sum[:16])
		recs[i] = &storage.AuditRecord{
			Chain: r.chain, ID: newID(), Time: when, Event: storage.EventDecision,
			Agent: a.Agent, SessionID: a.SessionID, TraceID: a.TraceID, SpanID: a.SpanID,
			Kind: a.Kind, Payload: encodePayload(&a), Decision: d, RuleID: rule,
			PolicyVersion: ev.GetPolicyVersion(), Mode: action.ModeEnforce, Reason: reason,
		}
	}
	return recs, keys, acts, nil
}

// redact applies the agent's credential scanner to a so that no reported
// payload stores a raw credential, whatever the reporter did.
func (r *reports) redact(a *action.Action) {
	snap := r.core.snap.Load()
	if snap == nil {
		return
	}
	v := r.core.viewsFor(snap)
	var out Outcome
	out.Decision = action.Deny // scanAction then only redacts; the reported decision stands
	r.core.scanAction(v.get(a.Agent), a, &out)
}

// layerName names a reporting layer.
func layerName(l v1.Layer) (string, bool) {
	switch l {
	case v1.Layer_LAYER_SDK:
		return "sdk", true
	case v1.Layer_LAYER_RUNTIME:
		return "runtime", true
	case v1.Layer_LAYER_ENVOY:
		return "envoy", true
	case v1.Layer_LAYER_KERNEL:
		return "kernel", true
	}
	return "", false
}
