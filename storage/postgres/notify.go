package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Every Store LISTENs on one channel per schema (Store.channel) on a
// dedicated connection. A notification's first byte says what it is:
//
//	n  a Notifier message: "nr<len(topic)>:<topic><payload>" with a raw
//	   UTF-8 payload, or "nb<base64 topic>:<base64 payload>"
//	a  committed audit records: "a<from>:<to>:<chain>"
//	b  a subscription barrier: "b<token>"
//
// Notifications are sent after the writing transaction commits, so a
// listener that reacts by reading sees the data. PostgreSQL delivers them to
// each listener in commit order, which Subscribe relies on: it sends a
// barrier and activates the new subscriber when the barrier comes back, so
// the subscriber gets exactly the messages published after Subscribe began,
// even those that the listener had not yet received when it began.

// maxNotifyPayload is PostgreSQL's limit on a NOTIFY payload (8000 bytes,
// less the terminator).
const maxNotifyPayload = 7999

// subBuffer is how many messages a subscriber may fall behind before
// messages to it are dropped (and logged).
const subBuffer = 256

// listener owns the LISTEN connection and fans notifications out. It
// dials the connection itself rather than taking one from the pool: the
// connection lives as long as the store, outside the pool's size, lifetime
// and idle rules, and it cancels a wait by a deadline, which leaves it
// usable, where pooled connections send a cancel request.
type listener struct {
	s   *Store
	cfg *pgx.ConnConfig

	mu        sync.Mutex
	ready     chan struct{} // closed while listening
	connected bool
	lastErr   error
	everUp    bool
	subs      map[string]map[*notifySub]struct{}
	barriers  map[string]*notifySub // pending subscriptions by barrier token
	tails     map[*tailSub]struct{}
	dropped   int64
	seq       uint64 // barrier tokens
}

type notifySub struct {
	ch chan []byte
	// resync subscribers (internal ones) receive a nil message after the
	// listener reconnects: notifications sent meanwhile were lost.
	resync bool
	// active is set once the subscriber's barrier came back; until then
	// it receives nothing. live is closed then.
	active bool
	live   chan struct{}
	token  string
}

// activate marks sub live; l.mu is held.
func (l *listener) activate(sub *notifySub) {
	if sub.active {
		return
	}
	sub.active = true
	close(sub.live)
	if sub.token != "" {
		delete(l.barriers, sub.token)
	}
}

func newListener(s *Store, cfg *pgx.ConnConfig) *listener {
	cfg = cfg.Copy()
	// Cancel a wait by expiring the socket deadline, not by a cancel
	// request: the connection stays usable after a timed-out wait.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	return &listener{
		s:        s,
		cfg:      cfg,
		ready:    make(chan struct{}),
		subs:     make(map[string]map[*notifySub]struct{}),
		barriers: make(map[string]*notifySub),
		tails:    make(map[*tailSub]struct{}),
	}
}

// run keeps a listening connection until ctx ends, reconnecting with
// backoff after errors.
func (l *listener) run(ctx context.Context) {
	defer l.shutdown()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		c, err := l.connect(ctx)
		if err != nil {
			l.setDown(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		l.setUp()
		err = l.receive(ctx, c)
		closeConn(c)
		if ctx.Err() != nil {
			return
		}
		l.s.opts.Logger.Warn("postgres listener lost its connection; reconnecting", "addr", l.s.addr, "err", err)
		l.setDown(err)
	}
}

func (l *listener) connect(ctx context.Context) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, l.cfg)
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{l.s.channel}.Sanitize()); err != nil {
		closeConn(c)
		return nil, err
	}
	return c, nil
}

// closeConn closes c, waiting at most a second for the server to hear of it.
func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// receive dispatches notifications until the connection fails. An idle
// connection is pinged every 30 s so a dead peer is noticed.
func (l *listener) receive(ctx context.Context, c *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := c.WaitForNotification(wctx)
		cancel()
		if n != nil {
			l.dispatch(n.Payload)
		}
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !pgconn.Timeout(err) || c.IsClosed() {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = c.Ping(pctx)
		cancel()
		if err != nil {
			return err
		}
	}
}

func (l *listener) setUp() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.connected = true
	l.lastErr = nil
	close(l.ready)
	// The listener listens again: whatever is committed from now on is
	// delivered, so subscribers whose barrier was lost are live.
	for _, sub := range l.barriers {
		l.activate(sub)
	}
	if l.everUp {
		// Notifications sent while we were away are lost: let internal
		// subscribers re-read what they wait for.
		for _, set := range l.subs {
			for sub := range set {
				if sub.resync {
					select {
					case sub.ch <- nil:
					default:
					}
				}
			}
		}
		for t := range l.tails {
			t.push(tailRange{resync: true})
		}
	}
	l.everUp = true
}

func (l *listener) setDown(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lastErr = err
	if l.connected {
		l.connected = false
		l.ready = make(chan struct{})
	}
}

// shutdown closes every subscription when the store closes.
func (l *listener) shutdown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for topic, set := range l.subs {
		for sub := range set {
			close(sub.ch)
		}
		delete(l.subs, topic)
	}
	for t := range l.tails {
		t.stop()
		delete(l.tails, t)
	}
}

// waitReady waits until the listener is listening, for at most the connect
// timeout, so a subscription made now hears what is published after it.
func (l *listener) waitReady(ctx context.Context, op string) error {
	l.mu.Lock()
	ready := l.ready
	l.mu.Unlock()
	t := time.NewTimer(l.s.opts.ConnectTimeout + time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	case <-l.s.ctx.Done():
		return fmt.Errorf("%s: postgres: %w", op, storage.ErrClosed)
	case <-t.C:
		l.mu.Lock()
		err := l.lastErr
		l.mu.Unlock()
		if err == nil {
			err = errors.New("listener not connected")
		}
		return &UnavailableError{Op: op, Addr: l.s.addr, Err: err}
	}
}

func (l *listener) dispatch(payload string) {
	if payload == "" {
		return
	}
	switch payload[0] {
	case 'n':
		topic, msg, ok := decodeMessage(payload[1:])
		if !ok {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for sub := range l.subs[topic] {
			if !sub.active {
				continue
			}
			select {
			case sub.ch <- msg:
			default:
				l.dropped++
				l.s.opts.Logger.Warn("notification dropped: subscriber is not reading", "topic", topic, "dropped", l.dropped)
			}
		}
	case 'b':
		l.mu.Lock()
		defer l.mu.Unlock()
		if sub := l.barriers[payload[1:]]; sub != nil {
			l.activate(sub)
		}
	case 'a':
		chain, from, to, ok := parseAuditNotice(payload[1:])
		if !ok {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for t := range l.tails {
			t.push(tailRange{chain: chain, from: from, to: to})
		}
	}
}

// subscribe registers a subscriber to topic and returns once it is live:
// it hears every message committed after subscribe began. Internal
// subscribers (resync) re-read state after subscribing, so they are live at
// once and skip the barrier.
func (l *listener) subscribe(ctx context.Context, op, topic string, resync bool) (*notifySub, error) {
	sub := &notifySub{ch: make(chan []byte, subBuffer), resync: resync, live: make(chan struct{})}
	l.mu.Lock()
	if l.s.ctx.Err() != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("%s: postgres: %w", op, storage.ErrClosed)
	}
	set := l.subs[topic]
	if set == nil {
		set = make(map[*notifySub]struct{})
		l.subs[topic] = set
	}
	set[sub] = struct{}{}
	if resync {
		l.activate(sub)
	} else {
		l.seq++
		sub.token = strconv.FormatUint(l.seq, 36) + "." + l.s.instance
		l.barriers[sub.token] = sub
	}
	l.mu.Unlock()
	err := l.waitReady(ctx, op)
	if err == nil && !resync {
		err = l.s.do(ctx, op, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, `SELECT pg_notify($1, $2)`, l.s.channel, "b"+sub.token)
			return err
		})
		if err == nil {
			err = l.waitLive(ctx, op, sub)
		}
	}
	if err != nil {
		l.unsubscribe(topic, sub)
		return nil, err
	}
	return sub, nil
}

// waitLive waits for sub's barrier to come back.
func (l *listener) waitLive(ctx context.Context, op string, sub *notifySub) error {
	t := time.NewTimer(l.s.opts.ConnectTimeout + time.Second)
	defer t.Stop()
	select {
	case <-sub.live:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", op, context.Cause(ctx))
	case <-l.s.ctx.Done():
		return fmt.Errorf("%s: postgres: %w", op, storage.ErrClosed)
	case <-t.C:
		return &UnavailableError{Op: op, Addr: l.s.addr, Err: errors.New("the subscription barrier did not come back from the listener")}
	}
}

// unsubscribe removes sub and closes its channel (unless shutdown did).
func (l *listener) unsubscribe(topic string, sub *notifySub) {
	l.mu.Lock()
	defer l.mu.Unlock()
	set := l.subs[topic]
	if _, ok := set[sub]; !ok {
		return
	}
	delete(set, sub)
	if len(set) == 0 {
		delete(l.subs, topic)
	}
	if sub.token != "" {
		delete(l.barriers, sub.token)
	}
	close(sub.ch)
}

// ---------------------------------------------------------------- Notifier

func encodeMessage(topic string, payload []byte) string {
	if utf8.ValidString(topic) && utf8.Valid(payload) && !strings.ContainsRune(topic, 0) && !containsNUL(payload) {
		return "nr" + strconv.Itoa(len(topic)) + ":" + topic + string(payload)
	}
	return "nb" + base64.RawStdEncoding.EncodeToString([]byte(topic)) + ":" + base64.RawStdEncoding.EncodeToString(payload)
}

func containsNUL(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return true
		}
	}
	return false
}

func decodeMessage(p string) (topic string, payload []byte, ok bool) {
	if p == "" {
		return "", nil, false
	}
	switch p[0] {
	case 'r':
		n, rest, ok := strings.Cut(p[1:], ":")
		size, err := strconv.Atoi(n)
		if !ok || err != nil || size < 0 || size > len(rest) {
			return "", nil, false
		}
		return rest[:size], []byte(rest[size:]), true
	case 'b':
		t, m, ok := strings.Cut(p[1:], ":")
		if !ok {
			return "", nil, false
		}
		tb, err1 := base64.RawStdEncoding.DecodeString(t)
		mb, err2 := base64.RawStdEncoding.DecodeString(m)
		return string(tb), mb, err1 == nil && err2 == nil
	}
	return "", nil, false
}

// Publish sends payload to the subscribers of topic on every Store that
// shares this database and schema. Payloads are small: the encoded message
// must fit PostgreSQL's 8000-byte NOTIFY limit.
func (s *Store) Publish(ctx context.Context, topic string, payload []byte) error {
	msg := encodeMessage(topic, payload)
	if len(msg) > maxNotifyPayload {
		return fmt.Errorf("publish to %q: message of %d bytes exceeds the postgres NOTIFY limit of %d: %w", topic, len(payload), maxNotifyPayload, storage.ErrInvalid)
	}
	return s.do(ctx, "publish", func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `SELECT pg_notify($1, $2)`, s.channel, msg)
		return err
	})
}

// Subscribe delivers messages published to topic after it returns, until
// ctx ends or the store closes; then the channel is closed. A subscriber that
// falls more than 256 messages behind loses messages. Messages published
// while the listener is reconnecting after a database outage are lost.
func (s *Store) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	sub, err := s.lis.subscribe(ctx, "subscribe", topic, false)
	if err != nil {
		return nil, err
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
		s.lis.unsubscribe(topic, sub)
	}()
	return sub.ch, nil
}

// ---------------------------------------------------------------- audit tail

// tailRange is a range of committed records to deliver, or a request to
// catch up on every chain after a reconnect.
type tailRange struct {
	chain    string
	from, to int64
	resync   bool
}

// tailSub is one TailAudit: a queue of ranges from the listener, drained by
// its own goroutine, which reads the records and delivers those beyond what
// it has delivered per chain. A slow reader therefore delays only itself.
type tailSub struct {
	mu      sync.Mutex
	pending []tailRange
	signal  chan struct{}
	done    chan struct{}
	once    sync.Once
}

func (t *tailSub) push(r tailRange) {
	t.mu.Lock()
	n := len(t.pending)
	if n > 0 && !r.resync {
		// Coalesce a continuation of the previous range of the same chain.
		if p := &t.pending[n-1]; !p.resync && p.chain == r.chain && p.to+1 >= r.from {
			p.to = max(p.to, r.to)
			t.mu.Unlock()
			t.wake()
			return
		}
	}
	t.pending = append(t.pending, r)
	t.mu.Unlock()
	t.wake()
}

func (t *tailSub) wake() {
	select {
	case t.signal <- struct{}{}:
	default:
	}
}

func (t *tailSub) take() []tailRange {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.pending
	t.pending = nil
	return p
}

func (t *tailSub) stop() { t.once.Do(func() { close(t.done) }) }

// TailAudit delivers the records committed after it returns, from any
// replica, in commit order per chain. After a database outage it catches
// up from the chain heads, so no record is skipped.
func (s *Store) TailAudit(ctx context.Context) (<-chan *storage.AuditRecord, error) {
	t := &tailSub{signal: make(chan struct{}, 1), done: make(chan struct{})}
	l := s.lis
	l.mu.Lock()
	if s.ctx.Err() != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("tail audit: postgres: %w", storage.ErrClosed)
	}
	l.tails[t] = struct{}{}
	l.mu.Unlock()
	remove := func() {
		l.mu.Lock()
		delete(l.tails, t)
		l.mu.Unlock()
		t.stop()
	}
	if err := l.waitReady(ctx, "tail audit"); err != nil {
		remove()
		return nil, err
	}
	last, err := s.chainHeads(ctx, "tail audit")
	if err != nil {
		remove()
		return nil, err
	}
	out := make(chan *storage.AuditRecord, subBuffer)
	go func() {
		defer close(out)
		defer remove()
		s.runTail(ctx, t, last, out)
	}()
	return out, nil
}

// chainHeads reads the head seq of every chain.
func (s *Store) chainHeads(ctx context.Context, op string) (map[string]int64, error) {
	heads := make(map[string]int64)
	err := s.do(ctx, op, func(c *pgx.Conn) error {
		clear(heads)
		rows, err := c.Query(ctx, `SELECT chain, head_seq FROM audit_chains`)
		if err != nil {
			return err
		}
		var (
			chain string
			seq   int64
		)
		_, err = pgx.ForEachRow(rows, []any{&chain, &seq}, func() error {
			heads[chain] = seq
			return nil
		})
		return err
	})
	return heads, err
}

func (s *Store) runTail(ctx context.Context, t *tailSub, last map[string]int64, out chan<- *storage.AuditRecord) {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.done:
			return
		case <-t.signal:
		case <-retry:
			retry = nil
			t.push(tailRange{resync: true})
			continue
		}
		for _, r := range t.take() {
			var err error
			if r.resync {
				err = s.tailResync(ctx, last, out)
			} else {
				err = s.tailRange(ctx, r.chain, last, r.to, out)
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				// The database is away: catch up from the heads later.
				s.opts.Logger.Warn("audit tail could not read records; will catch up", "err", err)
				t.take()
				retry = time.After(time.Second)
				break
			}
		}
	}
}

// tailRange delivers the records of chain after last[chain] up to to.
func (s *Store) tailRange(ctx context.Context, chain string, last map[string]int64, to int64, out chan<- *storage.AuditRecord) error {
	for last[chain] < to {
		var recs []*storage.AuditRecord
		err := s.do(ctx, "tail audit", func(c *pgx.Conn) error {
			recs = recs[:0]
			rows, err := c.Query(ctx, `SELECT `+auditColumns+` FROM audit_records
				WHERE chain = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT 1000`, chain, last[chain], to)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				r, err := scanRecord(rows)
				if err != nil {
					return err
				}
				recs = append(recs, r)
			}
			return rows.Err()
		})
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		for _, r := range recs {
			select {
			case out <- r:
			case <-ctx.Done():
				return ctx.Err()
			case <-s.ctx.Done():
				return s.ctx.Err()
			}
			last[chain] = r.Seq
		}
	}
	return nil
}

// tailResync delivers everything committed beyond last on every chain.
func (s *Store) tailResync(ctx context.Context, last map[string]int64, out chan<- *storage.AuditRecord) error {
	heads, err := s.chainHeads(ctx, "tail audit")
	if err != nil {
		return err
	}
	chains := make([]string, 0, len(heads))
	for ch := range heads {
		chains = append(chains, ch)
	}
	slices.Sort(chains)
	for _, ch := range chains {
		if heads[ch] > last[ch] {
			if err := s.tailRange(ctx, ch, last, heads[ch], out); err != nil {
				return err
			}
		}
	}
	return nil
}
