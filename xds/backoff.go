package xds

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// timerFunc schedules f after d and returns a function that cancels it.
type timerFunc func(d time.Duration, f func()) (stop func())

func realTimer(d time.Duration, f func()) func() {
	t := time.AfterFunc(d, f)
	return func() { t.Stop() }
}

// backoffCache wraps a snapshot cache so that a client that rejects (NACKs)
// a version is not sent the same version again at once. go-control-plane's
// snapshot cache answers a NACK, whose version is the last accepted one, with
// the current (rejected) snapshot immediately; a client that keeps rejecting
// it is stormed (measured: about 1,650 rejections in 1.1 s). Here the watch
// of a NACK is opened only after a delay that doubles per consecutive NACK
// of the node and type, up to a maximum; an ACK resets it, and a new
// snapshot for the node opens delayed watches at once.
//
// It also routes nodes to one of two snapshot caches: Envoy nodes to one in
// ADS mode (responses ordered CDS, EDS, LDS, RDS), gRPC nodes to one that is
// not, because an ADS-mode cache only answers a named subscription when the
// snapshot holds exactly the names asked for, and a gRPC client subscribes
// to the destinations it dials, not to everything the policy allows.
type backoffCache struct {
	envoy   cache.SnapshotCache
	grpc    cache.SnapshotCache
	hash    cache.NodeHash
	base    time.Duration
	max     time.Duration
	after   timerFunc
	onDelay func(node, typeURL string, d time.Duration)
	mu      sync.Mutex
	delays  map[nodeType]time.Duration
	pending map[nodeType]*pendingWatch
}

type nodeType struct{ node, typeURL string }

type pendingWatch struct {
	req       *cache.Request
	sub       cache.Subscription
	ch        chan cache.Response
	stop      func()
	fired     bool
	cancelled bool
	inner     func()
}

func newBackoffCache(envoy, grpc cache.SnapshotCache, hash cache.NodeHash, base, max time.Duration, after timerFunc) *backoffCache {
	return &backoffCache{envoy: envoy, grpc: grpc, hash: hash, base: base, max: max, after: after,
		delays: map[nodeType]time.Duration{}, pending: map[nodeType]*pendingWatch{}}
}

// CreateWatch delays the watch of a NACK; other requests pass through.
func (b *backoffCache) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	k := nodeType{b.hash.ID(req.GetNode()), req.GetTypeUrl()}
	b.mu.Lock()
	if req.GetErrorDetail() == nil {
		delete(b.delays, k)
		b.mu.Unlock()
		return b.pick(k.node).CreateWatch(req, sub, ch)
	}
	d := b.delays[k] * 2
	if d == 0 {
		d = b.base
	}
	d = min(d, b.max)
	b.delays[k] = d
	pw := &pendingWatch{req: req, sub: sub, ch: ch}
	b.pending[k] = pw
	pw.stop = b.after(d, func() { b.fire(k, pw) })
	onDelay := b.onDelay
	b.mu.Unlock()
	if onDelay != nil {
		onDelay(k.node, k.typeURL, d)
	}
	return func() { b.cancel(k, pw) }, nil
}

// fire opens a delayed watch in the inner cache.
func (b *backoffCache) fire(k nodeType, pw *pendingWatch) {
	b.mu.Lock()
	if pw.fired || pw.cancelled {
		b.mu.Unlock()
		return
	}
	pw.fired = true
	if b.pending[k] == pw {
		delete(b.pending, k)
	}
	b.mu.Unlock()
	inner, err := b.pick(k.node).CreateWatch(pw.req, pw.sub, pw.ch)
	if err != nil {
		return // the stream is served again at the client's next request
	}
	b.mu.Lock()
	pw.inner = inner
	cancelled := pw.cancelled
	b.mu.Unlock()
	if cancelled && inner != nil {
		inner()
	}
}

func (b *backoffCache) cancel(k nodeType, pw *pendingWatch) {
	b.mu.Lock()
	pw.cancelled = true
	if pw.stop != nil {
		pw.stop()
	}
	if b.pending[k] == pw {
		delete(b.pending, k)
	}
	inner := pw.inner
	b.mu.Unlock()
	if inner != nil {
		inner()
	}
}

// SetSnapshot publishes a snapshot and opens the node's delayed watches at
// once: a new version deserves a prompt try.
func (b *backoffCache) SetSnapshot(ctx context.Context, node string, s cache.ResourceSnapshot) error {
	if err := b.pick(node).SetSnapshot(ctx, node, s); err != nil {
		return err
	}
	var due []func()
	b.mu.Lock()
	for k, pw := range b.pending {
		if k.node == node {
			delete(b.delays, k)
			due = append(due, func() { pw.stop(); b.fire(k, pw) })
		}
	}
	b.mu.Unlock()
	for _, f := range due {
		f()
	}
	return nil
}

// pick returns the cache of a node key.
func (b *backoffCache) pick(node string) cache.SnapshotCache {
	if strings.HasSuffix(node, grpcSuffix) {
		return b.grpc
	}
	return b.envoy
}

// clear forgets a node's snapshot and backoff state.
func (b *backoffCache) clear(node string) {
	b.pick(node).ClearSnapshot(node)
	b.mu.Lock()
	for k := range b.delays {
		if k.node == node {
			delete(b.delays, k)
		}
	}
	b.mu.Unlock()
}

// GetSnapshot returns a node's current snapshot.
func (b *backoffCache) GetSnapshot(node string) (cache.ResourceSnapshot, error) {
	return b.pick(node).GetSnapshot(node)
}

// CreateDeltaWatch passes incremental watches to the node's cache.
func (b *backoffCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	return b.pick(b.hash.ID(req.GetNode())).CreateDeltaWatch(req, sub, ch)
}

// Fetch answers a REST fetch from the node's cache.
func (b *backoffCache) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	return b.pick(b.hash.ID(req.GetNode())).Fetch(ctx, req)
}

var _ cache.Cache = (*backoffCache)(nil)
