package alerts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Store is what the engine needs from storage: the alert feed and the
// notifier that tells every replica about new alerts.
type Store interface {
	storage.Alerts
	storage.Notifier
}

// Webhook is one delivery destination.
type Webhook struct {
	// URL receives a JSON POST per alert.
	URL string
	// Secret keys the HMAC signature; empty sends no signature header.
	Secret []byte
}

// Options configures an Engine. Zero values take the documented defaults.
type Options struct {
	// Store keeps alerts and silences and fans out new-alert notices. Required.
	Store  Store
	Logger *slog.Logger
	// Registerer receives the engine's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Webhooks receive every alert this replica stored that no silence matched.
	Webhooks []Webhook
	// QueueSize bounds the alerts waiting to be stored and, separately, the
	// deliveries waiting to be sent; beyond it new ones are dropped and
	// counted. Default 1024.
	QueueSize int
	// Workers is the number of webhook posts in progress at once. Default 4.
	Workers int
	// MaxAttempts bounds the tries per delivery. Default 6.
	MaxAttempts int
	// BaseBackoff is the wait before the first retry; each retry doubles it,
	// up to MaxBackoff, with ±50% jitter. Defaults 500 ms and 30 s.
	BaseBackoff, MaxBackoff time.Duration
	// AttemptTimeout bounds one POST. Default 5 s.
	AttemptTimeout time.Duration
	// StoreTimeout bounds one store call. Default 2 s.
	StoreTimeout time.Duration
	// SilenceCacheTTL is how long the active silences are cached between
	// reads; local changes invalidate it at once. Default 2 s.
	SilenceCacheTTL time.Duration
	// HTTPClient sends webhooks (a client with no redirects when nil).
	HTTPClient *http.Client
	// Retention is how long alerts (and ended silences) are kept; every
	// TrimEvery the engine deletes older ones. Default 30 days; negative
	// keeps everything.
	Retention time.Duration
	// TrimEvery is how often old alerts are deleted. Default 1 hour.
	TrimEvery time.Duration
}

// Validate applies defaults and rejects bad values.
func (o *Options) Validate() error {
	if o.Store == nil {
		return errors.New("alerts: a store is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.BaseBackoff, 500*time.Millisecond)
	def(&o.MaxBackoff, 30*time.Second)
	def(&o.AttemptTimeout, 5*time.Second)
	def(&o.StoreTimeout, 2*time.Second)
	def(&o.SilenceCacheTTL, 2*time.Second)
	def(&o.TrimEvery, time.Hour)
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 6
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	for _, w := range o.Webhooks {
		if err := ValidateWebhookURL(w.URL); err != nil {
			return err
		}
	}
	return nil
}

// DefaultRetention is how long alerts are kept unless Options.Retention says otherwise.
const DefaultRetention = 30 * 24 * time.Hour

// Engine raises, stores, streams and delivers alerts. It is safe for
// concurrent use. Close it to flush.
type Engine struct {
	o       Options
	log     *slog.Logger
	metrics *metrics

	raiseQ   chan *storage.Alert
	deliverQ chan delivery
	senders  chan struct{} // Workers slots for posts in progress

	ctx    context.Context // ends when Close gives up flushing
	cancel context.CancelFunc
	wg     sync.WaitGroup // store worker + delivery workers
	subWG  sync.WaitGroup // watch fan-out

	mu       sync.Mutex
	closed   bool
	watchers map[*watcher]struct{}
	silences []*storage.Silence
	silAt    time.Time
	seen     *recentSet
}

// New starts an engine: a worker that stores raised alerts, the webhook
// senders and the subscription that feeds watchers.
func New(o Options) (*Engine, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		o: o, log: o.Logger, metrics: newMetrics(o.Registerer),
		raiseQ: make(chan *storage.Alert, o.QueueSize), deliverQ: make(chan delivery, o.QueueSize), senders: make(chan struct{}, o.Workers),
		ctx: ctx, cancel: cancel, watchers: map[*watcher]struct{}{}, seen: newRecentSet(4096),
	}
	sub, err := o.Store.Subscribe(ctx, storage.TopicAlerts)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("subscribe to alerts: %w", err)
	}
	e.subWG.Add(1)
	go e.fanout(sub)
	e.wg.Add(1)
	go e.storeLoop()
	if o.Retention > 0 {
		e.subWG.Add(1)
		go e.trimLoop()
	}
	e.wg.Add(1)
	go e.deliverLoop()
	return e, nil
}

// Raise queues an alert to be stored, streamed and delivered. It never
// blocks: when the queue is full the alert is dropped and counted
// (aa_alerts_dropped_total). a.Time defaults to now and a.Details to {}.
func (e *Engine) Raise(a storage.Alert) {
	if a.Time.IsZero() {
		a.Time = e.o.Now()
	}
	if len(a.Details) == 0 {
		a.Details = []byte(`{}`)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		e.metrics.dropped.Inc()
		return
	}
	select {
	case e.raiseQ <- &a:
	default:
		e.metrics.dropped.Inc()
		e.log.Warn("alert queue full; alert dropped", "kind", a.Kind, "id", a.ID)
	}
}

// SilencesChanged drops the cached silences, so the next alert sees a
// silence just created or expired on this replica.
func (e *Engine) SilencesChanged() {
	e.mu.Lock()
	e.silAt = time.Time{}
	e.mu.Unlock()
}

// Close stops taking alerts, stores those queued and sends the pending
// deliveries (retries included) until ctx ends; what is left then is
// abandoned and counted.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	close(e.raiseQ) // the store worker closes deliverQ when it has drained
	e.mu.Unlock()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("flush alerts: %w", ctx.Err())
	}
	e.cancel()
	<-done
	e.subWG.Wait()
	return err
}

// storeLoop stores raised alerts one at a time.
func (e *Engine) storeLoop() {
	defer e.wg.Done()
	defer close(e.deliverQ)
	for a := range e.raiseQ {
		e.store(a)
	}
}

func (e *Engine) store(a *storage.Alert) {
	if e.seen.has(a.ID) {
		return // this replica stored or saw it already
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.o.StoreTimeout)
	defer cancel()
	if si := e.silenceFor(ctx, a); si != nil {
		a.SilenceID = si.ID
	}
	inserted, err := e.o.Store.InsertAlert(ctx, a)
	if err != nil {
		e.metrics.storeErrors.Inc()
		e.log.Error("store alert", "kind", a.Kind, "id", a.ID, "err", err)
		return
	}
	e.seen.add(a.ID)
	if !inserted {
		return // another replica stored it first and delivers it
	}
	e.metrics.raised.WithLabelValues(a.Kind, string(a.Severity)).Inc()
	e.log.Info("alert", "kind", a.Kind, "severity", string(a.Severity), "agent", a.Agent.String(), "summary", a.Summary,
		"id", a.ID, "silence", a.SilenceID)
	// Deliveries are decided (queued or not) before watchers hear of the
	// alert, so a watcher that sees it knows its webhook fate is sealed.
	e.queueDeliveries(a)
	if err := e.o.Store.Publish(ctx, storage.TopicAlerts, []byte(a.ID)); err != nil {
		e.log.Warn("announce alert to watchers", "id", a.ID, "err", err)
	}
}

// queueDeliveries queues a for every webhook unless a silence matched it.
func (e *Engine) queueDeliveries(a *storage.Alert) {
	if len(e.o.Webhooks) == 0 {
		return
	}
	if a.Silenced() {
		e.metrics.deliveries.WithLabelValues("silenced").Add(float64(len(e.o.Webhooks)))
		return
	}
	body, err := encodePayload(a)
	if err != nil {
		e.log.Error("encode alert", "id", a.ID, "err", err)
		return
	}
	for _, w := range e.o.Webhooks {
		select {
		case e.deliverQ <- delivery{hook: w, id: a.ID, body: body}:
		default:
			e.metrics.deliveries.WithLabelValues("dropped").Inc()
			e.log.Warn("webhook queue full; delivery dropped", "id", a.ID, "url", redactURL(w.URL))
		}
	}
}

// silenceFor returns the first active silence matching a, reading the
// silences at most every SilenceCacheTTL. A failed read silences nothing:
// an alert delivered twice beats one never seen.
func (e *Engine) silenceFor(ctx context.Context, a *storage.Alert) *storage.Silence {
	now := e.o.Now()
	e.mu.Lock()
	fresh := !e.silAt.IsZero() && now.Sub(e.silAt) < e.o.SilenceCacheTTL
	ss := e.silences
	e.mu.Unlock()
	if !fresh {
		got, err := e.o.Store.ListSilences(ctx, now)
		if err != nil {
			e.log.Warn("read silences; alert not silenced", "err", err)
		} else {
			ss = got
			e.mu.Lock()
			e.silences, e.silAt = got, now
			e.mu.Unlock()
		}
	}
	for _, si := range ss {
		if si.ActiveAt(a.Time) && si.Matches(a) {
			return si
		}
	}
	return nil
}

// recentSet remembers the last n ids.
type recentSet struct {
	mu   sync.Mutex
	m    map[string]struct{}
	ring []string
	next int
}

func newRecentSet(n int) *recentSet {
	return &recentSet{m: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (r *recentSet) has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.m[id]
	return ok
}

func (r *recentSet) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[id]; ok {
		return
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.m, old)
	}
	r.ring[r.next] = id
	r.m[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
}

// trimLoop deletes alerts older than Retention now and every TrimEvery.
// Every replica trims; the deletes are idempotent.
func (e *Engine) trimLoop() {
	defer e.subWG.Done()
	t := time.NewTicker(e.o.TrimEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		n, err := e.o.Store.TrimAlerts(ctx, e.o.Now().Add(-e.o.Retention))
		cancel()
		if err != nil && e.ctx.Err() == nil {
			e.log.Warn("trim old alerts", "err", err)
		} else if n > 0 {
			e.log.Info("trimmed old alerts", "deleted", n, "retention", e.o.Retention)
		}
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
	}
}
