package gateway

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

// faultStore wraps a store and fails at one step of ReportEvents: "append"
// crashes (the call's goroutine ends, nothing after runs) just before the
// audit append, "mark" just after it, when the first event id is marked
// appended; "append-error" makes the append fail with an error.
type faultStore struct {
	*memory.Store
	mu    sync.Mutex
	fault string
}

func (f *faultStore) take(step string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault == step {
		f.fault = ""
		return true
	}
	return false
}

func (f *faultStore) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if f.take("append") {
		runtime.Goexit()
	}
	if f.take("append-error") {
		return storage.ErrUnavailable
	}
	return f.Store.AppendAudit(ctx, recs)
}

func (f *faultStore) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	if delta > reportDone/2 && f.take("mark") {
		runtime.Goexit()
	}
	return f.Store.Adjust(ctx, key, delta, expires)
}

// reportRig is a gateway over a faultStore whose clock the test moves; new
// starts a fresh gateway process over the same store (after a crash).
type reportRig struct {
	t   *testing.T
	st  *faultStore
	now time.Time
	mu  sync.Mutex
	svc *AuditService
}

func newReportRig(t *testing.T) *reportRig {
	r := &reportRig{t: t, st: &faultStore{Store: memory.New(memory.Options{})}, now: time.Now()}
	r.restart()
	return r
}

func (r *reportRig) clock() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.now
}

func (r *reportRig) advance(d time.Duration) {
	r.mu.Lock()
	r.now = r.now.Add(d)
	r.mu.Unlock()
}

func (r *reportRig) restart() {
	core, err := NewCore(Options{Audit: storeAudit{r.st}, Chain: "gw", Now: r.clock})
	if err != nil {
		r.t.Fatal(err)
	}
	r.svc = NewAuditService(r.st).WithReports(core, r.st)
}

// report calls ReportEvents on its own goroutine; crashed is true when the
// call never returned (the store's fault ended it).
func (r *reportRig) report(req *v1.ReportEventsRequest) (resp *v1.ReportEventsResponse, err error, crashed bool) {
	done := make(chan struct{})
	returned := false
	go func() {
		defer close(done)
		resp, err = r.svc.ReportEvents(context.Background(), req)
		returned = true
	}()
	<-done
	return resp, err, !returned
}

// count returns how many reported records the log holds per event id.
func (r *reportRig) count(req *v1.ReportEventsRequest) map[string]int {
	r.t.Helper()
	page, err := r.st.Store.QueryAudit(context.Background(), storage.AuditQuery{Limit: 1000})
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]int{}
	for _, ev := range req.GetEvents() {
		id := reportRecordID(req.GetReporter(), ev.GetEventId())
		for _, rec := range page.Records {
			if rec.ID == id && strings.HasSuffix(rec.Chain, "/reports") {
				out[ev.GetEventId()]++
			}
		}
	}
	return out
}

func kernelBatch(timed bool, ids ...string) *v1.ReportEventsRequest {
	req := &v1.ReportEventsRequest{Reporter: "runtime/crash-test"}
	for i, id := range ids {
		ev := &v1.ReportedEvent{EventId: id, Layer: v1.Layer_LAYER_KERNEL, Decision: v1.Decision_DENY, RuleId: "kernel/connect4",
			Action: &v1.CheckActionRequest{Agent: &v1.AgentId{OrgId: "acme", TeamId: "eng", AgentId: "a1"}, ActionType: v1.ActionType_NETWORK_CALL,
				Context: &v1.CheckActionRequest_NetworkCall{NetworkCall: &v1.NetworkCallContext{Host: "203.0.113.7", Port: uint32(443 + i), Protocol: "tcp"}}}}
		if timed {
			ev.Time = timestamppb.New(time.Date(2026, 11, 26, 1, 0, i, 0, time.UTC))
		}
		req.Events = append(req.Events, ev)
	}
	return req
}

func wantOnce(t *testing.T, got map[string]int, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if got[id] != 1 {
			t.Errorf("event %s is in the audit log %d times, want exactly once (all: %v)", id, got[id], got)
		}
	}
}

// TestReportEventsCrashAfterAppend: the gateway dies after appending a
// batch but before marking its event ids. The retry is told to come back
// while the claim may still be another call's; once the claim is stale the
// retry finds the records by id and counts them as duplicates: nothing is
// appended twice, and the ids are then marked appended.
func TestReportEventsCrashAfterAppend(t *testing.T) {
	for _, timed := range []bool{true, false} {
		t.Run(map[bool]string{true: "event time", false: "gateway time"}[timed], func(t *testing.T) {
			rig := newReportRig(t)
			req := kernelBatch(timed, "e1", "e2", "e3")
			rig.st.fault = "mark"
			if _, _, crashed := rig.report(req); !crashed {
				t.Fatal("the injected crash did not happen")
			}
			wantOnce(t, rig.count(req), "e1", "e2", "e3")

			rig.restart()
			_, err, _ := rig.report(req)
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "being appended by another call") {
				t.Fatalf("retry while the claim is fresh: %v, want UNAVAILABLE naming the other call", err)
			}
			rig.advance(rig.svc.reports.staleAfter() + time.Second)
			resp, err, _ := rig.report(req)
			if err != nil || resp.GetAppended() != 0 || resp.GetDuplicates() != 3 {
				t.Fatalf("retry after the claim went stale: %v %v, want 0 appended, 3 duplicates", resp, err)
			}
			wantOnce(t, rig.count(req), "e1", "e2", "e3")

			keys, err := keysOf(rig, req)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				if v, err := rig.st.Counter(context.Background(), k); err != nil || v != reportDone {
					t.Errorf("recovered id %s not marked appended: counter %d %v", k, v, err)
				}
			}
		})
	}
}

// TestReportEventsCrashBeforeAppend: the gateway dies after claiming the
// event ids but before the append. The retry, once the claims are stale,
// appends the batch (before this fix the ids were marked and the batch was
// lost).
func TestReportEventsCrashBeforeAppend(t *testing.T) {
	rig := newReportRig(t)
	req := kernelBatch(true, "e1", "e2")
	rig.st.fault = "append"
	if _, _, crashed := rig.report(req); !crashed {
		t.Fatal("the injected crash did not happen")
	}
	if got := rig.count(req); len(got) != 0 {
		t.Fatalf("records appended before the crash point: %v", got)
	}
	rig.restart()
	rig.advance(rig.svc.reports.staleAfter() + time.Second)
	resp, err, _ := rig.report(req)
	if err != nil || resp.GetAppended() != 2 {
		t.Fatalf("retry after the crash: %v %v, want 2 appended", resp, err)
	}
	wantOnce(t, rig.count(req), "e1", "e2")
	resp, err, _ = rig.report(req)
	if err != nil || resp.GetDuplicates() != 2 {
		t.Fatalf("delivery after recovery: %v %v, want 2 duplicates", resp, err)
	}
	wantOnce(t, rig.count(req), "e1", "e2")
}

// TestReportEventsAppendFails: a failed append releases the claims, so an
// immediate retry appends the batch; a batch mixing seen and new events
// appends only the new ones.
func TestReportEventsAppendFails(t *testing.T) {
	rig := newReportRig(t)
	req := kernelBatch(true, "e1", "e2")
	rig.st.fault = "append-error"
	_, err, _ := rig.report(req)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "append reported events") {
		t.Fatalf("failed append: %v, want UNAVAILABLE naming the append", err)
	}
	resp, err, _ := rig.report(req)
	if err != nil || resp.GetAppended() != 2 {
		t.Fatalf("retry: %v %v, want 2 appended", resp, err)
	}
	more := kernelBatch(true, "e1", "e2", "e3")
	resp, err, _ = rig.report(more)
	if err != nil || resp.GetAppended() != 1 || resp.GetDuplicates() != 2 {
		t.Fatalf("mixed batch: %v %v, want 1 appended, 2 duplicates", resp, err)
	}
	wantOnce(t, rig.count(more), "e1", "e2", "e3")
}

// TestReportEventsLegacyMark: an id marked by a gateway from before claims
// (counter 1) is a duplicate, not a claim to recover.
func TestReportEventsLegacyMark(t *testing.T) {
	rig := newReportRig(t)
	req := kernelBatch(true, "old")
	keys, err := keysOf(rig, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rig.st.Store.Adjust(context.Background(), keys[0], 1, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	resp, err, _ := rig.report(req)
	if err != nil || resp.GetDuplicates() != 1 {
		t.Fatalf("legacy-marked event: %v %v, want a duplicate", resp, err)
	}
}

func keysOf(rig *reportRig, req *v1.ReportEventsRequest) ([]string, error) {
	_, keys, _, err := rig.svc.reports.records(req)
	if err != nil {
		return nil, errors.Join(errors.New("build records"), err)
	}
	return keys, nil
}

// TestReportEventsResolvedHosts: bad resolved_hosts reject the batch with
// the field named; good ones are written into the record's reason.
func TestReportEventsResolvedHosts(t *testing.T) {
	rig := newReportRig(t)
	for _, tc := range []struct {
		hosts []string
		kind  v1.ActionType
		want  string
	}{
		{[]string{""}, v1.ActionType_NETWORK_CALL, "events[0].resolved_hosts[0]: is empty"},
		{[]string{"api.example.com:443"}, v1.ActionType_NETWORK_CALL, `"api.example.com:443" is not a host name`},
		{[]string{strings.Repeat("a", 254)}, v1.ActionType_NETWORK_CALL, "over the limit of 253"},
		{make([]string, 17), v1.ActionType_NETWORK_CALL, "has 17 names, over the limit of 16"},
		{[]string{"curl.se"}, v1.ActionType_PROCESS_EXEC, "is for network calls only"},
	} {
		req := kernelBatch(true, "h1")
		req.Events[0].ResolvedHosts = tc.hosts
		if tc.kind == v1.ActionType_PROCESS_EXEC {
			req.Events[0].Action.ActionType = tc.kind
			req.Events[0].Action.Context = &v1.CheckActionRequest_ProcessExec{ProcessExec: &v1.ProcessExecContext{Command: "/usr/bin/curl"}}
		}
		_, err, _ := rig.report(req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("hosts %q: %v, want INVALID_ARGUMENT with %q", tc.hosts, err, tc.want)
		}
	}
	req := kernelBatch(true, "h2")
	req.Events[0].ResolvedHosts = []string{"api.example.com", "cdn.example.com"}
	if _, err, _ := rig.report(req); err != nil {
		t.Fatal(err)
	}
	page, err := rig.st.Store.QueryAudit(context.Background(), storage.AuditQuery{Limit: 10})
	if err != nil || len(page.Records) != 1 {
		t.Fatalf("records: %v %v", page.Records, err)
	}
	if r := page.Records[0].Reason; !strings.Contains(r, "address resolved from api.example.com, cdn.example.com") {
		t.Errorf("reason %q does not name the resolved hosts", r)
	}
}
