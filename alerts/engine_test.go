package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

var secret = []byte("whsec-test")

// receiver is a webhook endpoint on loopback that fails the first `fail`
// posts of each alert with 503, then accepts and verifies the signature.
type receiver struct {
	t    *testing.T
	srv  *httptest.Server
	fail int

	mu       sync.Mutex
	attempts map[string]int
	got      chan Payload
}

func newReceiver(t *testing.T, fail int) *receiver {
	r := &receiver{t: t, fail: fail, attempts: map[string]int{}, got: make(chan Payload, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := Verify(secret, req.Header.Get(SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		r.t.Errorf("receiver: %v", err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	id := req.Header.Get(AlertIDHeader)
	r.mu.Lock()
	r.attempts[id]++
	n := r.attempts[id]
	r.mu.Unlock()
	if n <= r.fail {
		http.Error(w, "not yet", http.StatusServiceUnavailable)
		return
	}
	var p Payload
	if err := json.Unmarshal(body, &p); err != nil || p.ID != id {
		r.t.Errorf("receiver: body %s does not decode to alert %s: %v", body, id, err)
	}
	r.got <- p
}

func (r *receiver) attemptsFor(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.attempts[id]
}

func newEngine(t *testing.T, st Store, reg *prometheus.Registry, hooks ...Webhook) *Engine {
	t.Helper()
	var r prometheus.Registerer
	if reg != nil {
		r = reg
	}
	e, err := New(Options{Store: st, Registerer: r, Webhooks: hooks, BaseBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
		MaxAttempts: 4, SilenceCacheTTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Errorf("close engine: %v", err)
		}
	})
	return e
}

func recvAlert[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing within 10s", what)
	}
	var zero T
	return zero
}

var bot = action.AgentID{Org: "acme", Team: "eng", Agent: "bot"}

func leak(id string) storage.Alert {
	return storage.Alert{ID: id, Kind: KindCredentialLeak, Severity: storage.SeverityCritical, Agent: bot,
		Summary: "blocked an AWS key", Details: []byte(`{"kinds":["aws_access_key"]}`), Source: "decision:" + id}
}

func TestRaiseStoresStreamsAndDeliversWithRetries(t *testing.T) {
	st := memory.New(memory.Options{})
	reg := prometheus.NewRegistry()
	rcv := newReceiver(t, 2)
	e := newEngine(t, st, reg, Webhook{URL: rcv.srv.URL, Secret: secret})
	w, err := e.Watch(t.Context(), Filter{MinSeverity: storage.SeverityWarning})
	if err != nil {
		t.Fatal(err)
	}
	e.Raise(storage.Alert{ID: "info-1", Kind: KindPolicyViolation, Severity: storage.SeverityInfo, Summary: "below the watch filter"})
	e.Raise(leak("leak-1"))

	got := recvAlert(t, w.C, "watch")
	if got.ID != "leak-1" || got.Silenced() || got.Agent != bot {
		t.Fatalf("watch delivered %+v, want leak-1 unsilenced (info-1 is below the filter)", got)
	}
	p := recvAlert(t, rcv.got, "webhook")
	if p.ID == "info-1" { // webhooks get every severity, in any order across workers
		p = recvAlert(t, rcv.got, "webhook")
	}
	if p.ID != "leak-1" || p.Kind != KindCredentialLeak || p.Severity != "critical" || p.Agent != "acme/eng/bot" || string(p.Details) != `{"kinds":["aws_access_key"]}` {
		t.Fatalf("webhook payload = %+v", p)
	}
	if n := rcv.attemptsFor("leak-1"); n != 3 {
		t.Fatalf("receiver saw %d attempts, want 3 (two 503s, then success)", n)
	}
	stored, err := st.GetAlert(t.Context(), "leak-1")
	if err != nil || stored.Summary != "blocked an AWS key" {
		t.Fatalf("stored alert = %+v, %v", stored, err)
	}
	waitCounter(t, e.metrics.deliveries.WithLabelValues("delivered"), 2) // leak-1 and info-1
	if v := value(e.metrics.deliveries.WithLabelValues("retried")); v != 4 {
		t.Fatalf("retried = %v, want 4 (two per alert)", v)
	}
}

func waitCounter(t *testing.T, c prometheus.Collector, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for value(c) != want {
		if time.Now().After(deadline) {
			t.Fatalf("counter = %v, want %v", value(c), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplicasStoreAndDeliverOnce(t *testing.T) {
	st := memory.New(memory.Options{})
	rcv := newReceiver(t, 0)
	hook := Webhook{URL: rcv.srv.URL, Secret: secret}
	a := newEngine(t, st, nil, hook)
	b := newEngine(t, st, nil, hook)
	w, err := b.Watch(t.Context(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		a.Raise(leak("same"))
		b.Raise(leak("same"))
	}
	a.Raise(leak("after")) // queued behind the duplicates on a
	b.Raise(leak("after"))
	var ids []string
	for range 2 {
		ids = append(ids, recvAlert(t, rcv.got, "webhook").ID)
	}
	if strings.Join(ids, ",") != "same,after" && strings.Join(ids, ",") != "after,same" {
		t.Fatalf("deliveries %v, want same and after once each", ids)
	}
	for _, id := range []string{"same", "after"} {
		if n := rcv.attemptsFor(id); n != 1 {
			t.Fatalf("alert %s delivered %d times by two replicas, want once", id, n)
		}
	}
	if x := recvAlert(t, w.C, "watch").ID; x != "same" && x != "after" {
		t.Fatalf("watch got %s", x)
	}
	p, err := st.QueryAlerts(t.Context(), storage.AlertQuery{})
	if err != nil || len(p.Alerts) != 2 {
		t.Fatalf("store holds %d alerts (%v), want 2", len(p.Alerts), err)
	}
}

func TestSilencedAlertIsStoredAndStreamedButNotDelivered(t *testing.T) {
	st := memory.New(memory.Options{})
	reg := prometheus.NewRegistry()
	rcv := newReceiver(t, 0)
	e := newEngine(t, st, reg, Webhook{URL: rcv.srv.URL, Secret: secret})
	now := time.Now()
	if err := st.PutSilence(t.Context(), &storage.Silence{ID: "sil-1", Kind: KindCredentialLeak, AgentPrefix: "acme/eng/",
		StartsAt: now.Add(-time.Minute), EndsAt: now.Add(time.Hour), CreatedBy: "alice", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	e.SilencesChanged()
	w, err := e.Watch(t.Context(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	e.Raise(leak("quiet"))
	other := leak("loud")
	other.Agent = action.AgentID{Org: "acme", Team: "ops", Agent: "bot"}
	e.Raise(other)
	for _, want := range []struct {
		id       string
		silenced bool
	}{{"quiet", true}, {"loud", false}} {
		got := recvAlert(t, w.C, "watch")
		if got.ID != want.id || got.Silenced() != want.silenced || (want.silenced && got.SilenceID != "sil-1") {
			t.Fatalf("watch got %s silenced=%v (%q), want %s silenced=%v", got.ID, got.Silenced(), got.SilenceID, want.id, want.silenced)
		}
	}
	if p := recvAlert(t, rcv.got, "webhook"); p.ID != "loud" {
		t.Fatalf("webhook got %s, want only loud", p.ID)
	}
	if n := rcv.attemptsFor("quiet"); n != 0 {
		t.Fatalf("silenced alert was posted %d times", n)
	}
	if v := value(e.metrics.deliveries.WithLabelValues("silenced")); v != 1 {
		t.Fatalf("silenced deliveries = %v, want 1", v)
	}
}

func TestDeliveryGivesUpAfterMaxAttempts(t *testing.T) {
	st := memory.New(memory.Options{})
	rcv := newReceiver(t, 100)
	e := newEngine(t, st, nil, Webhook{URL: rcv.srv.URL, Secret: secret})
	e.Raise(leak("never"))
	waitCounter(t, e.metrics.deliveries.WithLabelValues("failed"), 1)
	if n := rcv.attemptsFor("never"); n != 4 {
		t.Fatalf("receiver saw %d attempts, want MaxAttempts=4", n)
	}
}

func TestCloseFlushesQueuedDeliveries(t *testing.T) {
	st := memory.New(memory.Options{})
	var posted atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posted.Add(1) }))
	defer srv.Close()
	e, err := New(Options{Store: st, Webhooks: []Webhook{{URL: srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		e.Raise(leak(strings.Repeat("x", i+1)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := posted.Load(); n != 20 {
		t.Fatalf("Close returned with %d of 20 alerts posted", n)
	}
	e.Raise(leak("late"))
	if v := value(e.metrics.dropped); v != 1 {
		t.Fatalf("alert raised after Close: dropped = %v, want 1", v)
	}
}

func TestCloseAbandonsRetriesAtDeadline(t *testing.T) {
	st := memory.New(memory.Options{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	defer srv.Close()
	e, err := New(Options{Store: st, Webhooks: []Webhook{{URL: srv.URL}}, BaseBackoff: time.Hour, MaxBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.Raise(leak("stuck"))
	waitCounter(t, e.metrics.raised.WithLabelValues(KindCredentialLeak, "critical"), 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with a delivery waiting an hour to retry = %v, want deadline exceeded", err)
	}
	waitCounter(t, e.metrics.deliveries.WithLabelValues("abandoned"), 1)
}

func TestSlowWatcherIsDropped(t *testing.T) {
	st := memory.New(memory.Options{})
	e := newEngine(t, st, nil)
	w, err := e.Watch(t.Context(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range WatchBuffer + 10 {
		e.Raise(storage.Alert{ID: "a" + strings.Repeat("i", i+1), Kind: KindPolicyViolation, Severity: storage.SeverityWarning, Summary: "x"})
	}
	// Do not read until the engine has given up on the watcher.
	deadline := time.Now().Add(10 * time.Second)
	for w.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("a watcher that never reads was not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	n := 0
	for range w.C {
		n++
	}
	if !errors.Is(w.Err(), ErrWatcherBehind) || n > WatchBuffer {
		t.Fatalf("watch ended after %d alerts with %v, want at most %d then ErrWatcherBehind", n, w.Err(), WatchBuffer)
	}
}

func TestOptionsRejectBadWebhook(t *testing.T) {
	for _, u := range []string{"ftp://x/y", "/relative", "http://", "::"} {
		_, err := New(Options{Store: memory.New(memory.Options{}), Webhooks: []Webhook{{URL: u}}})
		if err == nil || !strings.Contains(err.Error(), "want an absolute http") {
			t.Errorf("webhook %q: err = %v", u, err)
		}
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without a store succeeded")
	}
}

func TestBackoffIsBoundedWithJitter(t *testing.T) {
	e := &Engine{o: Options{BaseBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	for attempt, base := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 30: time.Second} {
		for range 50 {
			d := e.backoff(attempt)
			if d < base/2 || d >= base*3/2 {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v)", attempt, d, base/2, base*3/2)
			}
		}
	}
}

// value reads a counter.
func value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func TestOldAlertsAreTrimmed(t *testing.T) {
	st := memory.New(memory.Options{})
	old := leak("old")
	old.Time = time.Now().Add(-48 * time.Hour)
	if _, err := st.InsertAlert(t.Context(), &old); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{Store: st, Retention: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	e.Raise(leak("new"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := st.QueryAlerts(t.Context(), storage.AlertQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Alerts) == 1 && p.Alerts[0].ID == "new" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("alerts after trimming at start: %v, want only new", p.Alerts)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
