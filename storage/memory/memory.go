// Package memory is a storage.Store held in process memory: for tests, and
// for a gateway started with --store memory: that needs nothing to persist.
package memory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/internal/broadcast"
)

// TailBuffer is how many records a TailAudit consumer may fall behind before
// its channel is closed; it then resumes with QueryAudit.
const TailBuffer = 4096

// Options configures a memory store. The zero value is ready to use.
type Options struct {
	// Sealer, when set, encrypts secret values; otherwise they are kept as
	// given (they never leave the process).
	Sealer storage.Sealer
	// Now is the clock for counter expiry and secret timestamps (time.Now when nil).
	Now func() time.Time
}

// Store implements storage.Store in memory. It is safe for concurrent use.
type Store struct {
	opts     Options
	counters *Counters
	notifier *Notifier
	tail     *broadcast.Broadcaster[*storage.AuditRecord]

	mu sync.RWMutex
	// audit holds every record in (Time, Chain, Seq) order.
	audit  []*storage.AuditRecord
	chains map[string][]*storage.AuditRecord

	agents  map[action.AgentID]*storage.Agent
	nonces  map[string]time.Time
	revoked map[string]time.Time

	policies map[string]*storage.PolicyVersion
	saved    []string // versions in save order
	active   string

	approvals map[string]*storage.Approval
	decided   map[string]chan struct{}

	secrets map[string]secret
	closed  bool

	inval invalidations

	feed alertFeed // see alerts.go

	apiKeys map[string]*storage.APIKey // see apikeys.go
}

type secret struct {
	value []byte
	meta  storage.SecretMeta
}

var _ storage.Store = (*Store)(nil)

// New returns an empty store.
func New(opts Options) *Store {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Store{
		opts:      opts,
		counters:  NewCounters(opts.Now),
		notifier:  NewNotifier(),
		tail:      broadcast.New[*storage.AuditRecord](TailBuffer, broadcast.Disconnect),
		chains:    make(map[string][]*storage.AuditRecord),
		agents:    make(map[action.AgentID]*storage.Agent),
		nonces:    make(map[string]time.Time),
		revoked:   make(map[string]time.Time),
		policies:  make(map[string]*storage.PolicyVersion),
		approvals: make(map[string]*storage.Approval),
		decided:   make(map[string]chan struct{}),
		secrets:   make(map[string]secret),
	}
}

// Ping reports ErrClosed after Close.
func (s *Store) Ping(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return storage.ErrClosed
	}
	return nil
}

// Close ends tails and subscriptions. The data stays readable.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.tail.Close()
	return s.notifier.Close()
}

// Reserve implements storage.Counters.
func (s *Store) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	return s.counters.Reserve(ctx, key, amount, limit, expires)
}

// Adjust implements storage.Counters.
func (s *Store) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	return s.counters.Adjust(ctx, key, delta, expires)
}

// Counter implements storage.Counters.
func (s *Store) Counter(ctx context.Context, key string) (int64, error) {
	return s.counters.Counter(ctx, key)
}

// TakeToken implements storage.Counters.
func (s *Store) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	return s.counters.TakeToken(ctx, key, rate, burst, now)
}

// PutHold implements storage.Counters.
func (s *Store) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	return s.counters.PutHold(ctx, key, data, expires)
}

// TakeHold implements storage.Counters.
func (s *Store) TakeHold(ctx context.Context, key string) ([]byte, error) {
	return s.counters.TakeHold(ctx, key)
}

// PeekHold implements storage.Counters.
func (s *Store) PeekHold(ctx context.Context, key string) ([]byte, error) {
	return s.counters.PeekHold(ctx, key)
}

// Publish implements storage.Notifier.
func (s *Store) Publish(ctx context.Context, topic string, payload []byte) error {
	return s.notifier.Publish(ctx, topic, payload)
}

// Subscribe implements storage.Notifier.
func (s *Store) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	return s.notifier.Subscribe(ctx, topic)
}

// ---------------------------------------------------------------- audit

// AppendAudit links and stores recs atomically.
func (s *Store) AppendAudit(ctx context.Context, recs []*storage.AuditRecord) error {
	if len(recs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("append audit: %w", storage.ErrClosed)
	}
	_, err := storage.LinkRecords(recs, func(chain string) (storage.ChainHead, error) {
		c := s.chains[chain]
		if len(c) == 0 {
			return storage.ChainHead{}, nil
		}
		last := c[len(c)-1]
		return storage.ChainHead{Seq: last.Seq, Hash: last.Hash}, nil
	})
	if err != nil {
		return fmt.Errorf("append audit: %w", err)
	}
	for _, r := range recs {
		c := r.Clone()
		s.chains[c.Chain] = append(s.chains[c.Chain], c)
		pos := storage.PositionOf(c)
		i := len(s.audit)
		for i > 0 && storage.PositionOf(s.audit[i-1]).Compare(pos) > 0 {
			i--
		}
		s.audit = slices.Insert(s.audit, i, c)
	}
	if s.tail.Subscribers() > 0 { // a copy per record only for live tails
		for _, r := range recs {
			s.tail.Publish(r.Clone())
		}
	}
	return nil
}

// QueryAudit pages the log.
func (s *Store) QueryAudit(ctx context.Context, q storage.AuditQuery) (storage.AuditPage, error) {
	cur, hasCur, err := storage.ParseAuditCursor(q.Cursor)
	if err != nil {
		return storage.AuditPage{}, fmt.Errorf("query audit: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := q.PageSize() + 1
	out := make([]*storage.AuditRecord, 0, min(n, 64))
	cmp := func(r *storage.AuditRecord, p storage.AuditPosition) int { return storage.PositionOf(r).Compare(p) }
	if q.Ascending {
		i := 0
		if hasCur {
			i, _ = slices.BinarySearchFunc(s.audit, cur, cmp)
			for i < len(s.audit) && cmp(s.audit[i], cur) <= 0 {
				i++
			}
		}
		for ; i < len(s.audit) && len(out) < n; i++ {
			if q.Matches(s.audit[i]) {
				out = append(out, s.audit[i].Clone())
			}
		}
	} else {
		i := len(s.audit) - 1
		if hasCur {
			j, _ := slices.BinarySearchFunc(s.audit, cur, cmp)
			i = j - 1
		}
		for ; i >= 0 && len(out) < n; i-- {
			if q.Matches(s.audit[i]) {
				out = append(out, s.audit[i].Clone())
			}
		}
	}
	return q.NextPage(out), nil
}

// TailAudit delivers records appended after the call.
func (s *Store) TailAudit(ctx context.Context) (<-chan *storage.AuditRecord, error) {
	return s.tail.Subscribe(ctx), nil
}

// AuditChains lists chain ids, sorted.
func (s *Store) AuditChains(ctx context.Context) ([]string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.chains))
	for c := range s.chains {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

// VerifyAudit checks one chain.
func (s *Store) VerifyAudit(ctx context.Context, chain string, anchors ...storage.ChainHead) (storage.VerifyReport, error) {
	s.mu.RLock()
	recs := slices.Clone(s.chains[chain])
	s.mu.RUnlock()
	if len(recs) == 0 {
		return storage.VerifyReport{}, fmt.Errorf("verify audit chain %q: %w", chain, storage.ErrNotFound)
	}
	v := storage.NewChainVerifier(chain, storage.ChainHead{})
	v.Anchor(anchors...)
	for _, r := range recs {
		if !v.Add(r) {
			break
		}
	}
	return v.Report(), nil
}

// ---------------------------------------------------------------- agents

func validAgentID(id action.AgentID) error {
	if id.Org == "" || id.Team == "" || id.Agent == "" {
		return fmt.Errorf("agent id %q needs org, team and agent: %w", id, storage.ErrInvalid)
	}
	return nil
}

// PutAgent creates or replaces an agent.
func (s *Store) PutAgent(ctx context.Context, a *storage.Agent) error {
	if err := validAgentID(a.ID); err != nil {
		return fmt.Errorf("put agent: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.agents[a.ID] = a.Clone()
	return nil
}

// GetAgent returns a copy of an agent.
func (s *Store) GetAgent(ctx context.Context, id action.AgentID) (*storage.Agent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.agents[id]
	if !ok {
		return nil, fmt.Errorf("get agent %s: %w", id, storage.ErrNotFound)
	}
	return a.Clone(), nil
}

// ListAgents returns matching agents sorted by id.
func (s *Store) ListAgents(ctx context.Context, f storage.AgentFilter) ([]*storage.Agent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*storage.Agent
	for _, a := range s.agents {
		if (f.Org == "" || a.ID.Org == f.Org) && (f.Team == "" || a.ID.Team == f.Team) && (f.Status == "" || a.Status == f.Status) {
			out = append(out, a.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *storage.Agent) int { return CompareAgentIDs(a.ID, b.ID) })
	return out, nil
}

// CompareAgentIDs orders ids by org, team, then agent.
func CompareAgentIDs(a, b action.AgentID) int {
	if c := strings.Compare(a.Org, b.Org); c != 0 {
		return c
	}
	if c := strings.Compare(a.Team, b.Team); c != 0 {
		return c
	}
	return strings.Compare(a.Agent, b.Agent)
}

// SetAgentStatus changes an agent's status.
func (s *Store) SetAgentStatus(ctx context.Context, id action.AgentID, st storage.AgentStatus, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.agents[id]
	if !ok {
		return fmt.Errorf("set status of agent %s: %w", id, storage.ErrNotFound)
	}
	a.Status, a.StatusReason = st, reason
	return nil
}

// TouchAgent records a heartbeat.
func (s *Store) TouchAgent(ctx context.Context, id action.AgentID, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.agents[id]
	if !ok {
		return fmt.Errorf("touch agent %s: %w", id, storage.ErrNotFound)
	}
	a.LastSeen = at
	return nil
}

// SetAgentMode sets an agent's enforcement-mode override.
func (s *Store) SetAgentMode(ctx context.Context, id action.AgentID, m action.Mode) error {
	if err := storage.ValidAgentMode(m); err != nil {
		return fmt.Errorf("set mode of agent %s: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.agents[id]
	if !ok {
		return fmt.Errorf("set mode of agent %s: %w", id, storage.ErrNotFound)
	}
	a.Mode = m
	return nil
}

// PutNonce stores a single-use nonce.
func (s *Store) PutNonce(ctx context.Context, nonce string, expires time.Time) error {
	if nonce == "" {
		return fmt.Errorf("put nonce: empty nonce: %w", storage.ErrInvalid)
	}
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if exp, ok := s.nonces[nonce]; ok && now.Before(exp) {
		return fmt.Errorf("put nonce: %w", storage.ErrConflict)
	}
	for n, exp := range s.nonces { // nonces are few and short-lived
		if !now.Before(exp) {
			delete(s.nonces, n)
		}
	}
	s.nonces[nonce] = expires
	return nil
}

// ConsumeNonce deletes a live nonce.
func (s *Store) ConsumeNonce(ctx context.Context, nonce string, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.nonces[nonce]
	if !ok || !now.Before(exp) {
		return fmt.Errorf("consume nonce: %w", storage.ErrNotFound)
	}
	delete(s.nonces, nonce)
	return nil
}

// RevokeCredential marks a token id revoked until expires.
func (s *Store) RevokeCredential(ctx context.Context, tokenID string, expires time.Time) error {
	if tokenID == "" {
		return fmt.Errorf("revoke credential: empty token id: %w", storage.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.revoked[tokenID]; !ok || expires.After(old) {
		s.revoked[tokenID] = expires
	}
	return nil
}

// CredentialRevoked reports whether a token id is revoked.
func (s *Store) CredentialRevoked(ctx context.Context, tokenID string) (bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	exp, ok := s.revoked[tokenID]
	return ok && s.opts.Now().Before(exp), nil
}

// ---------------------------------------------------------------- policies

// SavePolicyVersion stores a new, inactive version.
func (s *Store) SavePolicyVersion(ctx context.Context, v *storage.PolicyVersion) error {
	if v.Version == "" {
		return fmt.Errorf("save policy version: empty version: %w", storage.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.policies[v.Version]; ok {
		return fmt.Errorf("save policy version %s: %w", v.Version, storage.ErrConflict)
	}
	c := v.Clone()
	c.Active, c.ActivatedAt = false, time.Time{}
	s.policies[v.Version] = c
	s.saved = append(s.saved, v.Version)
	return nil
}

// ActivatePolicyVersion makes version the active one.
func (s *Store) ActivatePolicyVersion(ctx context.Context, version string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.policies[version]
	if !ok {
		return fmt.Errorf("activate policy version %s: %w", version, storage.ErrNotFound)
	}
	if old, ok := s.policies[s.active]; ok {
		old.Active = false
	}
	v.Active, v.ActivatedAt = true, at
	s.active = version
	return nil
}

// ActivePolicyVersion returns the active version.
func (s *Store) ActivePolicyVersion(ctx context.Context) (*storage.PolicyVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.policies[s.active]
	if !ok {
		return nil, fmt.Errorf("active policy version: %w", storage.ErrNotFound)
	}
	return v.Clone(), nil
}

// GetPolicyVersion returns one version.
func (s *Store) GetPolicyVersion(ctx context.Context, version string) (*storage.PolicyVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.policies[version]
	if !ok {
		return nil, fmt.Errorf("get policy version %s: %w", version, storage.ErrNotFound)
	}
	return v.Clone(), nil
}

// PolicyHistory lists versions newest first (by CreatedAt, then save order).
func (s *Store) PolicyHistory(ctx context.Context, limit int) ([]*storage.PolicyVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*storage.PolicyVersion, 0, len(s.saved))
	for i := len(s.saved) - 1; i >= 0; i-- {
		out = append(out, s.policies[s.saved[i]])
	}
	slices.SortStableFunc(out, func(a, b *storage.PolicyVersion) int { return b.CreatedAt.Compare(a.CreatedAt) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	for i, v := range out {
		out[i] = v.Clone()
	}
	return out, nil
}

// ---------------------------------------------------------------- approvals

// CreateApproval stores a pending approval.
func (s *Store) CreateApproval(ctx context.Context, a *storage.Approval) error {
	if err := storage.ValidateNewApproval(a); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.approvals[a.ID]; ok {
		return fmt.Errorf("create approval %s: %w", a.ID, storage.ErrConflict)
	}
	c := a.Clone()
	c.Status = storage.ApprovalPending
	s.approvals[a.ID] = c
	return nil
}

// DecideApproval sets a final status once and wakes waiters.
func (s *Store) DecideApproval(ctx context.Context, id string, st storage.ApprovalStatus, by, comment string, at time.Time) (*storage.Approval, error) {
	if err := storage.ValidateDecision(id, st); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.approvals[id]
	if !ok {
		return nil, fmt.Errorf("decide approval %s: %w", id, storage.ErrNotFound)
	}
	if a.Status != storage.ApprovalPending {
		return nil, fmt.Errorf("decide approval %s: already %s: %w", id, a.Status, storage.ErrConflict)
	}
	a.Status, a.DecidedBy, a.Comment, a.DecidedAt = st, by, comment, at
	if ch, ok := s.decided[id]; ok {
		close(ch)
		delete(s.decided, id)
	}
	return a.Clone(), nil
}

// GetApproval returns one approval.
func (s *Store) GetApproval(ctx context.Context, id string) (*storage.Approval, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.approvals[id]
	if !ok {
		return nil, fmt.Errorf("get approval %s: %w", id, storage.ErrNotFound)
	}
	return a.Clone(), nil
}

// ListApprovals returns matching approvals oldest first.
func (s *Store) ListApprovals(ctx context.Context, f storage.ApprovalFilter) ([]*storage.Approval, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*storage.Approval
	for _, a := range s.approvals {
		if f.Matches(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b *storage.Approval) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if n := f.PageSize(); len(out) > n {
		out = out[:n]
	}
	for i, a := range out {
		out[i] = a.Clone()
	}
	return out, nil
}

// WaitApproval blocks until the approval is decided or ctx ends.
func (s *Store) WaitApproval(ctx context.Context, id string) (*storage.Approval, error) {
	s.mu.Lock()
	a, ok := s.approvals[id]
	if !ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("wait for approval %s: %w", id, storage.ErrNotFound)
	}
	if a.Status != storage.ApprovalPending {
		c := a.Clone()
		s.mu.Unlock()
		return c, nil
	}
	ch, ok := s.decided[id]
	if !ok {
		ch = make(chan struct{})
		s.decided[id] = ch
	}
	s.mu.Unlock()
	select {
	case <-ch:
		return s.GetApproval(ctx, id)
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for approval %s: %w", id, ctx.Err())
	}
}

// ---------------------------------------------------------------- secrets

// PutSecret stores value, sealed when a Sealer is configured.
func (s *Store) PutSecret(ctx context.Context, name string, value []byte) error {
	if name == "" {
		return fmt.Errorf("put secret: empty name: %w", storage.ErrInvalid)
	}
	stored := slices.Clone(value)
	if s.opts.Sealer != nil {
		var err error
		if stored, err = s.opts.Sealer.Seal(value, []byte(name)); err != nil {
			return fmt.Errorf("put secret %s: seal: %w", name, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.secrets[name]
	s.secrets[name] = secret{value: stored, meta: storage.SecretMeta{Name: name, UpdatedAt: s.opts.Now(), Version: old.meta.Version + 1}}
	return nil
}

// GetSecret returns the plaintext value.
func (s *Store) GetSecret(ctx context.Context, name string) ([]byte, error) {
	s.mu.RLock()
	sec, ok := s.secrets[name]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get secret %s: %w", name, storage.ErrNotFound)
	}
	if s.opts.Sealer == nil {
		return slices.Clone(sec.value), nil
	}
	v, err := s.opts.Sealer.Open(sec.value, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("get secret %s: open: %w", name, err)
	}
	return v, nil
}

// ResealSecrets implements storage.Secrets.
func (s *Store) ResealSecrets(ctx context.Context) (int, error) {
	if s.opts.Sealer == nil {
		return 0, nil // nothing is sealed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	var errs error
	for name, sec := range s.secrets {
		if !s.opts.Sealer.NeedsReseal(sec.value) {
			continue
		}
		sealed, err := storage.Reseal(s.opts.Sealer, name, sec.value)
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		sec.value = sealed
		s.secrets[name] = sec
		n++
	}
	return n, errs
}

// ListSecrets lists secret names and versions, sorted by name.
func (s *Store) ListSecrets(ctx context.Context) ([]storage.SecretMeta, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]storage.SecretMeta, 0, len(s.secrets))
	for _, sec := range s.secrets {
		out = append(out, sec.meta)
	}
	slices.SortFunc(out, func(a, b storage.SecretMeta) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DeleteSecret removes a secret.
func (s *Store) DeleteSecret(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.secrets[name]; !ok {
		return fmt.Errorf("delete secret %s: %w", name, storage.ErrNotFound)
	}
	delete(s.secrets, name)
	return nil
}
