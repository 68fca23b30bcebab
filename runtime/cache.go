package runtime

import (
	"crypto/sha256"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// cacheKey identifies a normalised action of one agent.
type cacheKey [sha256.Size]byte

// decisionCache holds gateway answers by normalised action. It serves
// entries only while live (the invalidation stream is connected); every
// invalidation bumps the generation so that answers computed before it are
// not stored after it.
type decisionCache struct {
	ttl  time.Duration
	max  int
	now  func() time.Time
	live atomic.Bool
	gen  atomic.Uint64

	mu      sync.RWMutex
	entries map[cacheKey]cacheEntry
	version string // the policy version of the entries
}

type cacheEntry struct {
	resp    *v1.CheckActionResponse
	expires time.Time
}

func newDecisionCache(ttl time.Duration, max int, now func() time.Time) *decisionCache {
	return &decisionCache{ttl: ttl, max: max, now: now, entries: make(map[cacheKey]cacheEntry)}
}

// cacheable reports whether an action kind may be answered from the cache:
// LLM calls spend budget and tool results carry output, so both always go to
// the gateway.
func cacheable(req *v1.CheckActionRequest) bool {
	switch req.GetContext().(type) {
	case *v1.CheckActionRequest_ToolCall, *v1.CheckActionRequest_FileOp,
		*v1.CheckActionRequest_NetworkCall, *v1.CheckActionRequest_ProcessExec:
		return req.GetApprovalId() == "" && !req.GetWaitForApproval()
	}
	return false
}

// keyOf normalises req (identity and action, without trace ids, token or
// approval fields) and hashes it.
func keyOf(req *v1.CheckActionRequest) (cacheKey, bool) {
	n := &v1.CheckActionRequest{Agent: req.GetAgent(), ActionType: req.GetActionType()}
	switch c := req.GetContext().(type) {
	case *v1.CheckActionRequest_ToolCall:
		n.Context = c
	case *v1.CheckActionRequest_FileOp:
		n.Context = c
	case *v1.CheckActionRequest_NetworkCall:
		n.Context = c
	case *v1.CheckActionRequest_ProcessExec:
		n.Context = c
	default:
		return cacheKey{}, false
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(n)
	if err != nil {
		return cacheKey{}, false
	}
	return sha256.Sum256(b), true
}

// storable reports whether a gateway answer may be reused: a plain allow or
// deny that no rate limit, budget or approval produced.
func storable(resp *v1.CheckActionResponse) bool {
	switch resp.GetDecision() {
	case v1.Decision_ALLOW, v1.Decision_DENY:
	default:
		return false
	}
	return resp.GetRetryAfter() == nil && resp.GetApprovalId() == "" && len(resp.GetRedactions()) == 0
}

func (c *decisionCache) get(k cacheKey) (*v1.CheckActionResponse, bool) {
	if c.ttl < 0 || !c.live.Load() {
		return nil, false
	}
	c.mu.RLock()
	e, ok := c.entries[k]
	c.mu.RUnlock()
	if !ok || c.now().After(e.expires) {
		return nil, false
	}
	return e.resp, true
}

// put stores resp unless the cache was invalidated since gen was read.
func (c *decisionCache) put(k cacheKey, gen uint64, resp *v1.CheckActionResponse) {
	if c.ttl < 0 || !c.live.Load() || !storable(resp) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() != gen {
		return
	}
	if len(c.entries) >= c.max {
		clear(c.entries)
	}
	c.entries[k] = cacheEntry{resp: resp, expires: c.now().Add(c.ttl)}
}

// invalidate drops every entry and makes in-flight answers unstorable.
func (c *decisionCache) invalidate() {
	c.mu.Lock()
	c.gen.Add(1)
	clear(c.entries)
	c.mu.Unlock()
}

// setLive turns serving on or off; turning it off also drops every entry.
func (c *decisionCache) setLive(on bool) {
	if !on {
		c.live.Store(false)
		c.invalidate()
		return
	}
	c.invalidate()
	c.live.Store(true)
}

func (c *decisionCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// observe notes the policy version of a fresh gateway answer: a version
// other than the entries' drops them, a backstop for an invalidation event
// that has not arrived yet.
func (c *decisionCache) observe(version string) {
	if version == "" {
		return
	}
	c.mu.RLock()
	same := c.version == version
	c.mu.RUnlock()
	if same {
		return
	}
	c.mu.Lock()
	if c.version != version {
		c.version = version
		c.gen.Add(1)
		clear(c.entries)
	}
	c.mu.Unlock()
}
