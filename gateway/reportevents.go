package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
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
// append to and read back, and counters that remember event ids.
type ReportLog interface {
	AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error
	QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error)
	Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error)
	Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error)
}

// An event id's counter says how far its delivery got:
//
//   - 0 (missing): never seen;
//   - a time in Unix milliseconds (claimed): a call is appending it, or
//     crashed while doing so;
//   - reportDone: appended;
//   - 1 to reportLegacyBelow: appended (marks written before claims existed).
//
// A claim older than staleAfter is recovered: the event is looked up in the
// log by its record id (derived from reporter and event id) and either
// marked appended or appended by the recovering call. So a crash between
// the append and the mark neither loses the batch nor appends it twice.
const (
	reportDone        = int64(1) << 62
	reportLegacyBelow = int64(1_000_000_000_000) // 2001-09-09 in Unix ms
)

// reportNamespace derives audit record ids from reporter and event id.
var reportNamespace = uuid.MustParse("5d1c7a4e-2f6b-4c1e-9a57-0e1d3c7b9f21")

// reportRecordID is the audit record id of a reported event: the same on
// every retry, so a recovering call can find an append whose mark was lost.
func reportRecordID(reporter, eventID string) string {
	return uuid.NewSHA1(reportNamespace, []byte(reporter+"\x00"+eventID)).String()
}

// reports appends reported events to their own chain, one batch per call.
type reports struct {
	core  *Core
	store ReportLog
	chain string
	auth  *AgentAuth // proves the reporter speaks for each event's agent (WithAgentAuth)
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

// staleAfter is how old a claim must be before another call recovers it:
// longer than any call holding it can take.
func (r *reports) staleAfter() time.Duration { return 2*r.core.auditTO + 10*time.Second }

// ReportEvents implements AuditService.ReportEvents. The batch is validated
// as a whole (a bad event rejects the call and changes nothing); events whose
// id the reporter sent before are counted as duplicates and not appended
// again; the rest are appended in order in one transaction. Each event id is
// claimed before the append and marked appended after it, so a retry after
// a crash anywhere in between appends every event exactly once (see
// reportDone). A kernel-layer event is first linked to the decision another
// layer made about the same action (see correlate), so the audit shows which
// layers saw it.
func (s *AuditService) ReportEvents(ctx context.Context, req *v1.ReportEventsRequest) (*v1.ReportEventsResponse, error) {
	r := s.reports
	if r == nil {
		return nil, status.Error(codes.Unimplemented, "report events: this gateway was built without an event sink")
	}
	proven, err := r.auth.AuthenticateAll(ctx, "ReportEvents")
	if err != nil {
		return nil, err
	}
	recs, keys, acts, err := r.records(req)
	if err != nil {
		return nil, requestStatus(err)
	}
	for _, rec := range recs {
		if proven != nil && !proven[rec.Agent] {
			return nil, r.auth.RefuseMismatch(ctx, "ReportEvents", rec.Agent)
		}
	}
	r.core.AlertKernelDrops(req.GetReporter(), req.GetKernelDrops())
	layers := make([]string, len(recs))
	hosts := make([][]string, len(recs))
	timed := make([]bool, len(recs))
	for i, ev := range req.GetEvents() {
		layers[i], _ = layerName(ev.GetLayer())
		hosts[i] = ev.GetResolvedHosts()
		timed[i] = ev.GetTime() != nil
	}
	r.correlate(ctx, recs, acts, layers, hosts)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.core.now()
	expires := now.Add(reportDedupTTL)
	claim := now.UnixMilli()
	var fresh []*storage.AuditRecord
	var claimed []string // keys whose counter holds claim
	var recovered []string
	var recoveredAt []int64
	release := func() {
		for _, k := range claimed {
			if _, err := r.store.Adjust(context.WithoutCancel(ctx), k, -claim, expires); err != nil {
				r.core.log.ErrorContext(ctx, "release reported event id; a retry waits until the claim is stale", "key", k, "err", err)
			}
		}
	}
	for i, rec := range recs {
		res, err := r.store.Reserve(ctx, keys[i], claim, claim, expires)
		if err != nil {
			release()
			return nil, r.core.metrics.storeStatus(storeOpCounters, "claim reported event id", err)
		}
		if res.Allowed {
			fresh = append(fresh, rec)
			claimed = append(claimed, keys[i])
			continue
		}
		v := res.Used
		if v >= reportDone || v < reportLegacyBelow {
			continue // appended before
		}
		since := time.UnixMilli(v)
		if now.Sub(since) < r.staleAfter() {
			release()
			return nil, status.Errorf(codes.Unavailable, "report events: event %q of %s is being appended by another call since %s; retry",
				req.GetEvents()[i].GetEventId(), req.GetReporter(), since.UTC().Format(time.RFC3339Nano))
		}
		// A call claimed it and did not finish: recover, once.
		tk, err := r.store.Reserve(ctx, fmt.Sprintf("%s:recover:%d", keys[i], v), 1, 1, expires)
		if err != nil {
			release()
			return nil, r.core.metrics.storeStatus(storeOpCounters, "claim recovery of reported event id", err)
		}
		if !tk.Allowed {
			release()
			return nil, status.Errorf(codes.Unavailable, "report events: event %q of %s is being recovered by another call; retry",
				req.GetEvents()[i].GetEventId(), req.GetReporter())
		}
		found, err := r.appended(ctx, rec, timed[i], since)
		if err != nil {
			release()
			return nil, storeStatus("look up reported event after an interrupted append", err)
		}
		if found {
			recovered, recoveredAt = append(recovered, keys[i]), append(recoveredAt, v)
			continue
		}
		if _, err := r.store.Adjust(ctx, keys[i], claim-v, expires); err != nil {
			release()
			return nil, r.core.metrics.storeStatus(storeOpCounters, "claim reported event id", err)
		}
		r.core.log.WarnContext(ctx, "reported event claimed by an interrupted call is appended now", "reporter", req.GetReporter(),
			"event_id", req.GetEvents()[i].GetEventId(), "claimed_at", since)
		fresh = append(fresh, rec)
		claimed = append(claimed, keys[i])
	}
	if len(fresh) > 0 {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.core.auditTO)
		err := r.store.AppendAudit(actx, fresh)
		cancel()
		if err != nil {
			release()
			return nil, r.core.metrics.storeStatus(storeOpAuditAppend, "append reported events", err)
		}
	}
	mctx := context.WithoutCancel(ctx)
	for _, k := range claimed {
		if _, err := r.store.Adjust(mctx, k, reportDone-claim, expires); err != nil {
			r.core.log.ErrorContext(mctx, "mark reported event appended; a retry finds it in the log once the claim is stale", "key", k, "err", err)
		}
	}
	for i, k := range recovered {
		if _, err := r.store.Adjust(mctx, k, reportDone-recoveredAt[i], expires); err != nil {
			r.core.log.ErrorContext(mctx, "mark recovered reported event appended", "key", k, "err", err)
		}
	}
	return &v1.ReportEventsResponse{Appended: int32(len(fresh)), Duplicates: int32(len(recs) - len(fresh))}, nil
}

// appended reports whether rec's id is in the log already: an interrupted
// call appended it but did not mark it. An event without its own time was
// stamped when the interrupted call claimed it (since).
func (r *reports) appended(ctx context.Context, rec *storage.AuditRecord, timed bool, since time.Time) (bool, error) {
	q := storage.AuditQuery{Org: rec.Agent.Org, Team: rec.Agent.Team, Agent: rec.Agent.Agent, Kind: rec.Kind,
		Event: storage.EventDecision, Since: rec.Time, Until: rec.Time.Add(time.Nanosecond), Limit: 1000}
	if !timed {
		q.Since, q.Until = since.Add(-time.Minute), since.Add(r.staleAfter()+time.Minute)
	}
	for {
		page, err := r.store.QueryAudit(ctx, q)
		if err != nil {
			return false, err
		}
		for _, d := range page.Records {
			if d.ID == rec.ID {
				return true, nil
			}
		}
		if page.NextCursor == "" {
			return false, nil
		}
		q.Cursor = page.NextCursor
	}
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
		if err := checkHosts(field+".resolved_hosts", ev.GetResolvedHosts()); err != nil {
			return nil, nil, nil, err
		}
		if len(ev.GetResolvedHosts()) > 0 && a.Kind != action.KindNetworkCall {
			return nil, nil, nil, badField(field+".resolved_hosts", "is for network calls only, not %s", a.Kind)
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
		if h := ev.GetResolvedHosts(); len(h) > 0 {
			reason += "; address resolved from " + strings.Join(h, ", ")
		}
		sum := sha256.Sum256([]byte(req.GetReporter() + "\x00" + id))
		keys[i] = "report:" + hex.EncodeToString(sum[:16])
		recs[i] = &storage.AuditRecord{
			Chain: r.chain, ID: reportRecordID(req.GetReporter(), id), Time: when, Event: storage.EventDecision,
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

// Bounds of ReportedEvent.resolved_hosts.
const (
	maxResolvedHosts = 16
	maxHostLen       = 253
)

// checkHosts validates the host names a reporter says an address was
// resolved from: DNS names, without ports, schemes or wildcards.
func checkHosts(field string, hosts []string) error {
	if len(hosts) > maxResolvedHosts {
		return badField(field, "has %d names, over the limit of %d", len(hosts), maxResolvedHosts)
	}
	for i, h := range hosts {
		f := fmt.Sprintf("%s[%d]", field, i)
		if h == "" {
			return badField(f, "is empty")
		}
		if len(h) > maxHostLen {
			return badField(f, "is %d bytes, over the limit of %d", len(h), maxHostLen)
		}
		for j := 0; j < len(h); j++ {
			c := h[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
				return badField(f, "%q is not a host name (byte %d)", h, j)
			}
		}
	}
	return nil
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
