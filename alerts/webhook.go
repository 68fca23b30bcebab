package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Payload is the JSON body of a webhook POST.
type Payload struct {
	ID       string          `json:"id"`
	Time     time.Time       `json:"time"`
	Kind     string          `json:"kind"`
	Severity string          `json:"severity"`
	Agent    string          `json:"agent,omitempty"`
	Summary  string          `json:"summary"`
	Details  json.RawMessage `json:"details"`
	Source   string          `json:"source,omitempty"`
}

func encodePayload(a *storage.Alert) ([]byte, error) {
	p := Payload{ID: a.ID, Time: a.Time.UTC(), Kind: a.Kind, Severity: string(a.Severity), Summary: a.Summary,
		Details: json.RawMessage(a.Details), Source: a.Source}
	if !a.Agent.IsZero() {
		p.Agent = a.Agent.String()
	}
	if !json.Valid(p.Details) {
		p.Details = json.RawMessage(`{}`)
	}
	return json.Marshal(p)
}

// ValidateWebhookURL accepts absolute http and https URLs with a host.
func ValidateWebhookURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("alert webhook %q: want an absolute http:// or https:// URL", redactURL(s))
	}
	return nil
}

// redactURL drops user info and the query, which may hold tokens.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

type delivery struct {
	hook Webhook
	id   string
	body []byte
}

// deliverLoop starts a sender per queued delivery until the queue is
// closed and empty, then waits for them. A delivery waiting to retry holds
// no sender slot, so one failing receiver does not delay the others; at
// most QueueSize deliveries are in flight and Workers posts at once.
func (e *Engine) deliverLoop() {
	defer e.wg.Done()
	var jobs sync.WaitGroup
	inflight := make(chan struct{}, e.o.QueueSize)
	for d := range e.deliverQ {
		inflight <- struct{}{}
		jobs.Go(func() {
			defer func() { <-inflight }()
			e.deliver(d)
		})
	}
	jobs.Wait()
}

// deliver POSTs one alert, retrying with backoff until a 2xx answer,
// MaxAttempts, or the engine giving up at shutdown.
func (e *Engine) deliver(d delivery) {
	for attempt := 1; ; attempt++ {
		err := e.post(d)
		if err == nil {
			e.metrics.deliveries.WithLabelValues("delivered").Inc()
			return
		}
		if attempt >= e.o.MaxAttempts {
			e.metrics.deliveries.WithLabelValues("failed").Inc()
			e.log.Error("alert webhook failed; giving up", "id", d.id, "url", redactURL(d.hook.URL), "attempts", attempt, "err", err)
			return
		}
		wait := e.backoff(attempt)
		e.log.Warn("alert webhook failed; retrying", "id", d.id, "url", redactURL(d.hook.URL), "attempt", attempt, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			e.metrics.deliveries.WithLabelValues("retried").Inc()
		case <-e.ctx.Done():
			t.Stop()
			e.metrics.deliveries.WithLabelValues("abandoned").Inc()
			return
		}
	}
}

// backoff is BaseBackoff·2^(attempt-1), capped at MaxBackoff, times a
// random factor in [0.5, 1.5).
func (e *Engine) backoff(attempt int) time.Duration {
	d := e.o.BaseBackoff
	for i := 1; i < attempt && d < e.o.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, e.o.MaxBackoff)
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

func (e *Engine) post(d delivery) error {
	select {
	case e.senders <- struct{}{}:
		defer func() { <-e.senders }()
	case <-e.ctx.Done():
		return e.ctx.Err()
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.o.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.hook.URL, bytes.NewReader(d.body))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "agent-assembly-alerts/1")
	req.Header.Set(AlertIDHeader, d.id)
	if len(d.hook.Secret) > 0 {
		req.Header.Set(SignatureHeader, Sign(d.hook.Secret, e.o.Now(), d.body))
	}
	resp, err := e.o.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("post alert: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post alert: receiver answered %s", resp.Status)
	}
	return nil
}
