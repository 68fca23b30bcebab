package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
)

// InvalidationsOptions configures an Invalidations hub.
type InvalidationsOptions struct {
	// Log is the replica-shared event log. Required.
	Log storage.InvalidationLog
	// Notifier wakes every replica's hub when an event is appended
	// (storage.TopicInvalidations); nil leaves only the poll.
	Notifier storage.Notifier
	// OnEvent, when set, is called for every event before any subscriber on
	// this replica is given it (the gateway drops the agent from its
	// registry cache here, so a check made after a delivered SUSPEND sees it).
	OnEvent func(*storage.InvalidationEvent)
	Logger  *slog.Logger
	// Poll is how often the log is read when no notification arrives, in
	// case one was lost (default 1s).
	Poll time.Duration
	// Retention is how long events are kept (default 24h); older ones are
	// trimmed, and a subscriber resuming before them gets a resync.
	Retention time.Duration
	// Buffer is how many recent events are served from memory (default 4096).
	Buffer int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Invalidations is one replica's view of the invalidation log: it appends
// events, follows what other replicas append, and lets subscribers wait for
// events after a sequence number. Events reach subscribers in sequence order,
// each after OnEvent has run for it.
type Invalidations struct {
	opts InvalidationsOptions
	log  *slog.Logger
	kick chan struct{}

	mu    sync.Mutex
	head  int64 // last sequence number read and passed to OnEvent
	ring  []*storage.InvalidationEvent
	first int64         // Seq of ring[0]
	wake  chan struct{} // closed when head advances
	// lastPolicy is the Seq of the newest policy-changed event read.
	lastPolicy        int64
	lastPolicyVersion string
	ready             chan struct{} // closed once the head is known
}

// NewInvalidations returns a hub; Run must be running for it to follow the log.
func NewInvalidations(o InvalidationsOptions) (*Invalidations, error) {
	if o.Log == nil {
		return nil, errors.New("new invalidations: an invalidation log is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.Buffer <= 0 {
		o.Buffer = 4096
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Invalidations{opts: o, log: o.Logger, kick: make(chan struct{}, 1),
		wake: make(chan struct{}), ready: make(chan struct{})}, nil
}

// Publish appends ev to the shared log and wakes every replica. An event
// whose Key is already logged (another replica published it) is not an
// error: it returns 0, nil.
func (h *Invalidations) Publish(ctx context.Context, ev *storage.InvalidationEvent) (int64, error) {
	if ev.Time.IsZero() {
		ev.Time = h.opts.Now()
	}
	seq, err := h.opts.Log.AppendInvalidation(ctx, ev)
	if errors.Is(err, storage.ErrConflict) && ev.Key != "" {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("publish invalidation %s: %w", ev.Type, err)
	}
	if h.opts.Notifier != nil {
		if err := h.opts.Notifier.Publish(context.WithoutCancel(ctx), storage.TopicInvalidations, []byte(strconv.FormatInt(seq, 10))); err != nil {
			h.log.Warn("notify replicas of invalidation; they see it at their next poll", "seq", seq, "err", err)
		}
	}
	h.Kick()
	return seq, nil
}

// Kick makes Run read the log now.
func (h *Invalidations) Kick() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Head returns the last sequence number this replica has read (0 before
// Run has read the log).
func (h *Invalidations) Head() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.head
}

// WaitHead returns once this replica has read the log up to seq (it asks
// Run to read now), or when wait passes or ctx ends, with the head it has.
// A subscriber that saw seq on another replica, or just before this one
// read it, is then not taken for one ahead of the log.
func (h *Invalidations) WaitHead(ctx context.Context, seq int64, wait time.Duration) int64 {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		h.mu.Lock()
		head, wake := h.head, h.wake
		h.mu.Unlock()
		if head >= seq {
			return head
		}
		h.Kick()
		select {
		case <-wake:
		case <-timer.C:
			return h.Head()
		case <-ctx.Done():
			return h.Head()
		}
	}
}

// Ready returns a channel closed once Run has read the log's head.
func (h *Invalidations) Ready() <-chan struct{} { return h.ready }

// Run follows the log until ctx ends.
func (h *Invalidations) Run(ctx context.Context) error {
	var notes <-chan []byte
	if h.opts.Notifier != nil {
		ch, err := h.opts.Notifier.Subscribe(ctx, storage.TopicInvalidations)
		if err != nil {
			h.log.Warn("invalidation notifications unavailable; polling the log", "every", h.opts.Poll, "err", err)
		} else {
			notes = ch
		}
	}
	for ctx.Err() == nil {
		if err := h.catchUp(ctx, false); err == nil {
			break
		} else if ctx.Err() == nil {
			h.log.Warn("read invalidation log; retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(h.opts.Poll):
			}
		}
	}
	close(h.ready)
	poll := time.NewTicker(h.opts.Poll)
	defer poll.Stop()
	trim := time.NewTicker(time.Hour)
	defer trim.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-notes:
			if !ok {
				notes = nil // the poll keeps us correct
				h.log.Warn("invalidation notifications ended; polling the log", "every", h.opts.Poll)
			}
		case <-h.kick:
		case <-poll.C:
		case <-trim.C:
			if n, err := h.opts.Log.TrimInvalidations(ctx, h.opts.Now().Add(-h.opts.Retention)); err != nil {
				h.log.Warn("trim invalidation log", "err", err)
			} else if n > 0 {
				h.log.Info("trimmed invalidation log", "events", n)
			}
		}
		if err := h.catchUp(ctx, true); err != nil && ctx.Err() == nil {
			h.log.Warn("read invalidation log", "err", err)
		}
	}
}

// catchUp reads every event after head, calls OnEvent (when notify) and
// advances head.
func (h *Invalidations) catchUp(ctx context.Context, notify bool) error {
	for {
		after := h.Head()
		evs, err := h.opts.Log.InvalidationsSince(ctx, after, 1000)
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		if notify && h.opts.OnEvent != nil {
			for _, ev := range evs {
				h.opts.OnEvent(ev)
			}
		}
		h.mu.Lock()
		if len(h.ring) > 0 && evs[0].Seq != h.first+int64(len(h.ring)) {
			h.ring = h.ring[:0] // not contiguous (a trimmed gap): restart the buffer
		}
		if len(h.ring) == 0 {
			h.first = evs[0].Seq
		}
		h.ring = append(h.ring, evs...)
		for _, ev := range evs {
			if ev.Type == storage.InvalidatePolicy {
				h.lastPolicy, h.lastPolicyVersion = ev.Seq, ev.PolicyVersion
			}
		}
		if over := len(h.ring) - h.opts.Buffer; over > 0 {
			h.ring = append(h.ring[:0:0], h.ring[over:]...)
			h.first += int64(over)
		}
		h.head = evs[len(evs)-1].Seq
		close(h.wake)
		h.wake = make(chan struct{})
		h.mu.Unlock()
	}
}

// InvalidateResync is the type of the event Next puts first when events
// after the subscriber's position were trimmed from the log before it read
// them: the subscriber missed some and must drop every cached decision. Its
// Seq is the last sequence number lost.
const InvalidateResync storage.InvalidationType = "resync"

// Next returns up to limit events after seq that this replica has read (so
// OnEvent has run for each), in order, waiting until there is at least one
// or ctx ends. Callers resume from the Seq of the last event returned.
func (h *Invalidations) Next(ctx context.Context, after int64, limit int) ([]*storage.InvalidationEvent, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if limit <= 0 {
		limit = 1000
	}
	for {
		h.mu.Lock()
		head, wake := h.head, h.wake
		if head > after && len(h.ring) > 0 && after+1 >= h.first {
			i := int(after + 1 - h.first)
			n := min(len(h.ring)-i, limit)
			evs := append([]*storage.InvalidationEvent(nil), h.ring[i:i+n]...)
			h.mu.Unlock()
			return evs, nil
		}
		h.mu.Unlock()
		if head > after {
			// Older than the buffer: read the log, up to head.
			evs, err := h.opts.Log.InvalidationsSince(ctx, after, limit)
			if err != nil {
				return nil, err
			}
			for len(evs) > 0 && evs[len(evs)-1].Seq > head {
				evs = evs[:len(evs)-1]
			}
			switch {
			case len(evs) == 0: // trimmed up to head: everything after was lost
				return []*storage.InvalidationEvent{{Type: InvalidateResync, Seq: head, Time: h.opts.Now()}}, nil
			case evs[0].Seq > after+1:
				resync := &storage.InvalidationEvent{Type: InvalidateResync, Seq: evs[0].Seq - 1, Time: h.opts.Now()}
				return append([]*storage.InvalidationEvent{resync}, evs...), nil
			}
			return evs, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// AgentEvent returns an event about one agent.
func AgentEvent(t storage.InvalidationType, id action.AgentID, reason string) *storage.InvalidationEvent {
	return &storage.InvalidationEvent{Type: t, Agent: id, Reason: reason}
}

// ApprovalReader reads an approval (storage.Approvals implements it).
type ApprovalReader interface {
	GetApproval(ctx context.Context, id string) (*storage.Approval, error)
}

// FollowApprovals publishes an approval-resolved event for every approval
// decided or expired on any replica (TopicApprovalEvents on n), until ctx
// ends. Every replica follows; the event key makes it appear once.
func (h *Invalidations) FollowApprovals(ctx context.Context, n storage.Notifier, approvals ApprovalReader) error {
	ch, err := n.Subscribe(ctx, TopicApprovalEvents)
	if err != nil {
		return fmt.Errorf("follow approvals: %w", err)
	}
	go func() {
		for msg := range ch {
			id := string(msg)
			ap, err := approvals.GetApproval(ctx, id)
			if err != nil {
				if ctx.Err() == nil {
					h.log.Warn("read approval for invalidation", "approval_id", id, "err", err)
				}
				continue
			}
			if ap.Status == storage.ApprovalPending {
				continue
			}
			ev := &storage.InvalidationEvent{Type: storage.InvalidateApproval, Agent: ap.Agent, ApprovalID: id,
				Reason: string(ap.Status), Key: "approval:" + id}
			if _, err := h.Publish(ctx, ev); err != nil && ctx.Err() == nil {
				h.log.Warn("publish approval resolution", "approval_id", id, "err", err)
			}
		}
	}()
	return nil
}

// PolicyApplied publishes a policy-changed event for the switch from prev to
// version. Replicas that apply the same switch publish it once: the key names
// the version and the policy event it follows.
func (h *Invalidations) PolicyApplied(ctx context.Context, prev, version string) {
	h.mu.Lock()
	after, last := h.lastPolicy, h.lastPolicyVersion
	h.mu.Unlock()
	if last == version {
		return // another replica already announced it
	}
	ev := &storage.InvalidationEvent{Type: storage.InvalidatePolicy, PolicyVersion: version,
		Reason: "policy " + prev + " -> " + version, Key: fmt.Sprintf("policy:%d:%s", after, version)}
	if _, err := h.Publish(ctx, ev); err != nil {
		h.log.Warn("publish policy change", "version", version, "err", err)
	}
}
