// Package cache is an in-process read cache in front of the agent registry
// and the policy store, the two stores the decision path reads on every check.
//
// Entries live for a TTL; unknown agents are remembered for a shorter
// NegativeTTL so a flood of checks from an unregistered id does not reach the
// database, yet a new registration is seen soon. Writes made through the
// cache invalidate what they change. Writes made by other replicas are seen
// after the TTL, or at once when the cache follows a storage.Notifier
// (Follow) and the writers publish on it (Options.Notifier).
package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Options configures the caches. Zero values take the defaults.
type Options struct {
	// TTL is how long a found agent, a revoked credential or a policy
	// version is served from memory (default 5s).
	TTL time.Duration
	// NegativeTTL is how long "not found" and "not revoked" answers are
	// served from memory (default 1s). It bounds how long another replica's
	// revocation or registration goes unseen when no Notifier is followed.
	NegativeTTL time.Duration
	// MaxEntries bounds each cache (default 100000).
	MaxEntries int
	// Notifier, when set, receives storage.TopicAgents and
	// storage.TopicPolicy messages for writes made through the cache, so
	// caches on other replicas that Follow it invalidate at once.
	Notifier storage.Notifier
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.TTL <= 0 {
		o.TTL = 5 * time.Second
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = time.Second
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = 100_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Wrap returns s with its AgentRegistry and PolicyStore behind caches.
func Wrap(s storage.Store, opts Options) *Store {
	return &Store{Store: s, Agents: NewAgents(s, opts), Policies: NewPolicies(s, opts)}
}

// Store is a storage.Store whose registry and policy reads are cached.
type Store struct {
	storage.Store
	Agents   *Agents
	Policies *Policies
}

// GetAgent implements storage.AgentRegistry through the cache.
func (s *Store) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	return s.Agents.GetAgent(ctx, id)
}

// PeekAgent answers from the agent cache only (see Agents.PeekAgent).
func (s *Store) PeekAgent(id action.AgentID) (*storage.Agent, bool) {
	return s.Agents.PeekAgent(id)
}

// PutAgent implements storage.AgentRegistry through the cache.
func (s *Store) PutAgent(ctx context.Context, a *storage.Agent) error {
	return s.Agents.PutAgent(ctx, a)
}

// SetAgentStatus implements storage.AgentRegistry through the cache.
func (s *Store) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	return s.Agents.SetAgentStatus(ctx, id, st, reason)
}

// SetAgentMode implements storage.AgentRegistry through the cache.
func (s *Store) SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error {
	return s.Agents.SetAgentMode(ctx, id, m)
}

// TouchAgent implements storage.AgentRegistry through the cache.
func (s *Store) TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error {
	return s.Agents.TouchAgent(ctx, id, at)
}

// RevokeCredential implements storage.AgentRegistry through the cache.
func (s *Store) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	return s.Agents.RevokeCredential(ctx, tokenID, expires)
}

// CredentialRevoked implements storage.AgentRegistry through the cache.
func (s *Store) CredentialRevoked(ctx context.Context, tokenID string) (bool, error) {
	return s.Agents.CredentialRevoked(ctx, tokenID)
}

// SavePolicyVersion implements storage.PolicyStore through the cache.
func (s *Store) SavePolicyVersion(ctx context.Context, v *storage.PolicyVersion) error {
	return s.Policies.SavePolicyVersion(ctx, v)
}

// ActivatePolicyVersion implements storage.PolicyStore through the cache.
func (s *Store) ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error {
	return s.Policies.ActivatePolicyVersion(ctx, version, at)
}

// ActivePolicyVersion implements storage.PolicyStore through the cache.
func (s *Store) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	return s.Policies.ActivePolicyVersion(ctx)
}

// GetPolicyVersion implements storage.PolicyStore through the cache.
func (s *Store) GetPolicyVersion(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	return s.Policies.GetPolicyVersion(ctx, version)
}

var _ storage.Store = (*Store)(nil)

// Follow invalidates both caches on messages from other replicas until ctx
// ends. See Agents.Follow.
func (s *Store) Follow(ctx context.Context, n storage.Notifier) error {
	return errors.Join(s.Agents.Follow(ctx, n), s.Policies.Follow(ctx, n))
}

// InvalidateAll drops every cached entry.
func (s *Store) InvalidateAll() {
	s.Agents.InvalidateAll()
	s.Policies.InvalidateAll()
}

// ---------------------------------------------------------------- generic

// table is a TTL map with an invalidation generation: a value loaded before
// an invalidation is never stored after it.
type table[K comparable, V any] struct {
	max int
	now func() time.Time

	mu  sync.RWMutex
	m   map[K]entry[V]
	gen uint64
}

type entry[V any] struct {
	v       V
	err     error
	expires time.Time
}

func newTable[K comparable, V any](max int, now func() time.Time) *table[K, V] {
	return &table[K, V]{max: max, now: now, m: make(map[K]entry[V])}
}

func (t *table[K, V]) get(k K) (entry[V], bool) {
	t.mu.RLock()
	e, ok := t.m[k]
	t.mu.RUnlock()
	if ok && t.now().Before(e.expires) {
		return e, true
	}
	return entry[V]{}, false
}

func (t *table[K, V]) generation() uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.gen
}

// put stores e unless an invalidation happened since gen was read.
func (t *table[K, V]) put(k K, e entry[V], gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if gen != t.gen {
		return
	}
	if len(t.m) >= t.max {
		now := t.now()
		for k2, e2 := range t.m {
			if !now.Before(e2.expires) {
				delete(t.m, k2)
			}
		}
		// Still full: drop an arbitrary tenth (map order is random).
		for k2 := range t.m {
			if len(t.m) < t.max*9/10 {
				break
			}
			delete(t.m, k2)
		}
	}
	t.m[k] = e
}

func (t *table[K, V]) invalidate(k K) {
	t.mu.Lock()
	delete(t.m, k)
	t.gen++
	t.mu.Unlock()
}

func (t *table[K, V]) invalidateAll() {
	t.mu.Lock()
	clear(t.m)
	t.gen++
	t.mu.Unlock()
}

// ---------------------------------------------------------------- agents

// Agents caches GetAgent and CredentialRevoked of an AgentRegistry.
type Agents struct {
	next    storage.AgentRegistry
	opts    Options
	agents  *table[action.AgentID, *storage.Agent]
	revoked *table[string, bool]
	// loads collapses concurrent misses for one agent into one backend read,
	// so a burst of checks from an uncached agent costs one query, not one
	// connection each.
	loads singleflight.Group
}

var _ storage.AgentRegistry = (*Agents)(nil)

// NewAgents returns a cache in front of next.
func NewAgents(next storage.AgentRegistry, opts Options) *Agents {
	opts = opts.withDefaults()
	return &Agents{next: next, opts: opts,
		agents:  newTable[action.AgentID, *storage.Agent](opts.MaxEntries, opts.Now),
		revoked: newTable[string, bool](opts.MaxEntries, opts.Now)}
}

// PeekAgent answers from memory only, without a copy: the cached agent
// (nil for one cached as unknown) and whether the cache held a fresh
// answer. The agent is shared with every other reader and must not be
// modified. The decision path reads an agent's status and mode on every
// check; GetAgent's copy cost two allocations of each.
func (c *Agents) PeekAgent(id action.AgentID) (a *storage.Agent, cached bool) {
	e, ok := c.agents.get(id)
	if !ok || (e.err != nil && !errors.Is(e.err, storage.ErrNotFound)) {
		return nil, false
	}
	return e.v, true
}

// GetAgent serves from memory when it can. Unknown agents are cached for
// NegativeTTL; other errors are not cached.
func (c *Agents) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	if e, ok := c.agents.get(id); ok {
		if e.err != nil {
			return nil, e.err
		}
		return e.v.Clone(), nil
	}
	// A caller that joins another's read waits no longer than its own
	// context allows (the read goes on for the others).
	load := c.loads.DoChan(id.String(), func() (any, error) {
		gen := c.agents.generation()
		a, err := c.next.GetAgent(ctx, id)
		switch {
		case err == nil:
			c.agents.put(id, entry[*storage.Agent]{v: a.Clone(), expires: c.opts.Now().Add(c.opts.TTL)}, gen)
		case errors.Is(err, storage.ErrNotFound):
			c.agents.put(id, entry[*storage.Agent]{err: err, expires: c.opts.Now().Add(c.opts.NegativeTTL)}, gen)
		}
		return a, err
	})
	var r singleflight.Result
	select {
	case r = <-load:
	case <-ctx.Done():
		return nil, fmt.Errorf("get agent %s: %w", id, ctx.Err())
	}
	if r.Err != nil {
		return nil, r.Err
	}
	return r.Val.(*storage.Agent).Clone(), nil
}

// CredentialRevoked caches "revoked" for TTL (a revocation is not undone)
// and "not revoked" for NegativeTTL.
func (c *Agents) CredentialRevoked(ctx context.Context, tokenID string) (bool, error) {
	if e, ok := c.revoked.get(tokenID); ok {
		return e.v, nil
	}
	gen := c.revoked.generation()
	r, err := c.next.CredentialRevoked(ctx, tokenID)
	if err == nil {
		ttl := c.opts.NegativeTTL
		if r {
			ttl = c.opts.TTL
		}
		c.revoked.put(tokenID, entry[bool]{v: r, expires: c.opts.Now().Add(ttl)}, gen)
	}
	return r, err
}

// Invalidate drops the cached entry for id.
func (c *Agents) Invalidate(id action.AgentID) { c.agents.invalidate(id) }

// InvalidateAll drops every cached agent and revocation answer.
func (c *Agents) InvalidateAll() {
	c.agents.invalidateAll()
	c.revoked.invalidateAll()
}

func (c *Agents) changed(ctx context.Context, id action.AgentID) {
	c.agents.invalidate(id)
	if c.opts.Notifier != nil {
		_ = c.opts.Notifier.Publish(context.WithoutCancel(ctx), storage.TopicAgents, []byte(id.String()))
	}
}

// PutAgent writes through and invalidates.
func (c *Agents) PutAgent(ctx context.Context, a *storage.Agent) error {
	err := c.next.PutAgent(ctx, a)
	c.changed(ctx, a.ID)
	return err
}

// SetAgentStatus writes through and invalidates.
func (c *Agents) SetAgentStatus(ctx context.Context, id action.AgentID, s storage.AgentStatus, reason string) error {
	err := c.next.SetAgentStatus(ctx, id, s, reason)
	c.changed(ctx, id)
	return err
}

// SetAgentMode writes through and invalidates on every replica.
func (c *Agents) SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error {
	err := c.next.SetAgentMode(ctx, id, m)
	c.changed(ctx, id)
	return err
}

// TouchAgent writes through and invalidates locally; other replicas see the
// new LastSeen after TTL (heartbeats are not worth a broadcast).
func (c *Agents) TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error {
	err := c.next.TouchAgent(ctx, id, at)
	c.agents.invalidate(id)
	return err
}

// ListAgents is not cached.
func (c *Agents) ListAgents(ctx context.Context, f storage.AgentFilter) ([]*storage.Agent, error) {
	return c.next.ListAgents(ctx, f)
}

// PutNonce is not cached.
func (c *Agents) PutNonce(ctx context.Context, nonce string, expires time.Time) error {
	return c.next.PutNonce(ctx, nonce, expires)
}

// ConsumeNonce is not cached: nonces are single-use.
func (c *Agents) ConsumeNonce(ctx context.Context, nonce string, now time.Time) error {
	return c.next.ConsumeNonce(ctx, nonce, now)
}

// RevokeCredential writes through and invalidates the token's answer.
func (c *Agents) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	err := c.next.RevokeCredential(ctx, tokenID, expires)
	c.revoked.invalidate(tokenID)
	if c.opts.Notifier != nil {
		_ = c.opts.Notifier.Publish(context.WithoutCancel(ctx), storage.TopicAgents, []byte(revokedPrefix+tokenID))
	}
	return err
}

const revokedPrefix = "revoked:"

// Follow subscribes to storage.TopicAgents on n and invalidates the agent
// (payload org/team/agent), the revocation answer (payload revoked:<token
// id>) or everything (empty payload) named by each message, until ctx ends.
// If the subscription ends early the cache is flushed and stays correct,
// bounded by the TTLs.
func (c *Agents) Follow(ctx context.Context, n storage.Notifier) error {
	ch, err := n.Subscribe(ctx, storage.TopicAgents)
	if err != nil {
		return err
	}
	go func() {
		for msg := range ch {
			s := string(msg)
			switch id, ok := parseAgentID(s); {
			case s == "":
				c.InvalidateAll()
			case len(s) > len(revokedPrefix) && s[:len(revokedPrefix)] == revokedPrefix:
				c.revoked.invalidate(s[len(revokedPrefix):])
			case ok:
				c.agents.invalidate(id)
			default:
				c.InvalidateAll()
			}
		}
		c.InvalidateAll()
	}()
	return nil
}

func parseAgentID(s string) (action.AgentID, bool) {
	var parts [3]string
	n := 0
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '/' {
			if n == 3 {
				return action.AgentID{}, false
			}
			parts[n] = s[start:i]
			n++
			start = i + 1
		}
	}
	if n != 3 {
		return action.AgentID{}, false
	}
	return action.AgentID{Org: parts[0], Team: parts[1], Agent: parts[2]}, true
}

// ---------------------------------------------------------------- policies

// Policies caches ActivePolicyVersion and GetPolicyVersion of a PolicyStore.
type Policies struct {
	next     storage.PolicyStore
	opts     Options
	versions *table[string, *storage.PolicyVersion]
}

var _ storage.PolicyStore = (*Policies)(nil)

// activeKey is the versions-table key of the active version. Real versions
// never start with a NUL byte.
const activeKey = "\x00active"

// NewPolicies returns a cache in front of next.
func NewPolicies(next storage.PolicyStore, opts Options) *Policies {
	opts = opts.withDefaults()
	return &Policies{next: next, opts: opts, versions: newTable[string, *storage.PolicyVersion](opts.MaxEntries, opts.Now)}
}

func (c *Policies) cached(ctx context.Context, key string, load func() (*storage.PolicyVersion, error)) (*storage.PolicyVersion, error) {
	if e, ok := c.versions.get(key); ok {
		if e.err != nil {
			return nil, e.err
		}
		return e.v.Clone(), nil
	}
	gen := c.versions.generation()
	v, err := load()
	switch {
	case err == nil:
		c.versions.put(key, entry[*storage.PolicyVersion]{v: v.Clone(), expires: c.opts.Now().Add(c.opts.TTL)}, gen)
	case errors.Is(err, storage.ErrNotFound):
		c.versions.put(key, entry[*storage.PolicyVersion]{err: err, expires: c.opts.Now().Add(c.opts.NegativeTTL)}, gen)
	}
	return v, err
}

// ActivePolicyVersion serves the active version from memory when it can.
func (c *Policies) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	return c.cached(ctx, activeKey, func() (*storage.PolicyVersion, error) { return c.next.ActivePolicyVersion(ctx) })
}

// GetPolicyVersion serves a version from memory when it can.
func (c *Policies) GetPolicyVersion(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	return c.cached(ctx, version, func() (*storage.PolicyVersion, error) { return c.next.GetPolicyVersion(ctx, version) })
}

// SavePolicyVersion writes through; it invalidates a cached "not found".
func (c *Policies) SavePolicyVersion(ctx context.Context, v *storage.PolicyVersion) error {
	err := c.next.SavePolicyVersion(ctx, v)
	c.versions.invalidate(v.Version)
	return err
}

// ActivatePolicyVersion writes through and invalidates every version (the
// Active flags of two versions change).
func (c *Policies) ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error {
	err := c.next.ActivatePolicyVersion(ctx, version, at)
	c.versions.invalidateAll()
	if c.opts.Notifier != nil && err == nil {
		_ = c.opts.Notifier.Publish(context.WithoutCancel(ctx), storage.TopicPolicy, []byte(version))
	}
	return err
}

// PolicyHistory is not cached.
func (c *Policies) PolicyHistory(ctx context.Context, limit int) ([]*storage.PolicyVersion, error) {
	return c.next.PolicyHistory(ctx, limit)
}

// InvalidateAll drops every cached version.
func (c *Policies) InvalidateAll() { c.versions.invalidateAll() }

// Follow subscribes to storage.TopicPolicy on n and drops the cache on every
// message until ctx ends.
func (c *Policies) Follow(ctx context.Context, n storage.Notifier) error {
	ch, err := n.Subscribe(ctx, storage.TopicPolicy)
	if err != nil {
		return err
	}
	go func() {
		for range ch {
			c.InvalidateAll()
		}
		c.InvalidateAll()
	}()
	return nil
}
