// Package redis is the Redis storage driver: budget counters, rate limits and notification fan-out shared by gateway replicas.
//
// It implements storage.Counters and storage.Notifier. Every counter update
// is one Lua script, so it is atomic across replicas; notifications use
// Redis pub/sub. Approvals wake-ups across replicas travel as Notifier
// messages on storage.TopicApprovals.
package redis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Options configure a Store. The zero value is valid.
type Options struct {
	// Prefix starts every key and channel name, so several deployments (or
	// tests) can share one Redis. Default "aa:".
	Prefix string
	// SubscriberBuffer is how many messages a subscriber may fall behind
	// before further messages to it are dropped. Default 256.
	SubscriberBuffer int
	// Logger receives dropped-message warnings. Default: discard.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = "aa:"
	}
	if o.SubscriberBuffer == 0 {
		o.SubscriberBuffer = 256
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate rejects options that cannot work.
func (o *Options) Validate() error {
	if o.SubscriberBuffer < 0 {
		return fmt.Errorf("redis subscriber buffer %d: must not be negative: %w", o.SubscriberBuffer, storage.ErrInvalid)
	}
	return nil
}

// Store keeps counters and fans out notifications on Redis. It is safe for
// concurrent use; any number of Stores (replicas) may share one Redis.
type Store struct {
	c    *goredis.Client
	opts Options
	addr string

	mu     sync.Mutex
	closed bool
	done   chan struct{}  // closed by Close
	wg     sync.WaitGroup // subscription goroutines
}

// Compile-time guards.
var (
	_ storage.Counters = (*Store)(nil)
	_ storage.Notifier = (*Store)(nil)
)

// Open connects to the Redis at url (redis://[user:pass@]host:port/db, or
// rediss:// for TLS; go-redis's query parameters such as dial_timeout
// apply) and checks that it answers.
//
// Commands are not retried by the client unless the URL sets max_retries: a
// retried script whose first attempt did reach the server would count a
// reservation twice. The URL may set prefix=NAME to namespace every key
// (it overrides Options.Prefix), so several deployments or tests can share
// one Redis.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	url, prefix, hasPrefix := takeQueryParam(url, "prefix")
	if hasPrefix {
		opts.Prefix = prefix
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ro, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("open redis: %w: %w", storage.ErrInvalid, err)
	}
	if !hasQueryParam(url, "max_retries") {
		ro.MaxRetries = -1
	}
	s := New(goredis.NewClient(ro), opts)
	if err := s.Ping(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// takeQueryParam removes one query parameter (which go-redis would reject)
// and returns the URL without it.
func takeQueryParam(rawURL, name string) (string, string, bool) {
	u, err := url.Parse(rawURL)
	if err != nil || !u.Query().Has(name) {
		return rawURL, "", false
	}
	q := u.Query()
	v := q.Get(name)
	q.Del(name)
	u.RawQuery = q.Encode()
	return u.String(), v, true
}

func hasQueryParam(rawURL, name string) bool {
	u, err := url.Parse(rawURL)
	return err == nil && u.Query().Has(name)
}

// New returns a Store on an existing client, which the Store owns from now
// on (Close closes it).
func New(c *goredis.Client, opts Options) *Store {
	opts.setDefaults()
	return &Store{c: c, opts: opts, addr: c.Options().Addr, done: make(chan struct{})}
}

// Client returns the underlying client.
func (s *Store) Client() *goredis.Client { return s.c }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.fail(ctx, "ping", s.c.Ping(ctx).Err())
}

// Close ends every subscription and closes the client.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	return s.c.Close()
}

// ---------------------------------------------------------------- errors

// UnavailableError is returned when Redis cannot be reached or is not
// serving. It matches storage.ErrUnavailable and wraps the cause.
type UnavailableError struct {
	// Op is what the store was doing ("reserve counter").
	Op string
	// Addr is the server's host:port.
	Addr string
	// Err is the underlying error.
	Err error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%s: redis %s unavailable: %s", e.Op, e.Addr, rootCause(e.Err))
}

// Unwrap returns storage.ErrUnavailable and the cause.
func (e *UnavailableError) Unwrap() []error { return []error{storage.ErrUnavailable, e.Err} }

func rootCause(err error) string {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed by the server"
	}
	return err.Error()
}

// fail maps a go-redis error to the storage error vocabulary.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	var ne net.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, goredis.ErrClosed):
		return fmt.Errorf("%s: redis: %w", op, storage.ErrClosed)
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return fmt.Errorf("%s: redis: %w", op, err)
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, goredis.ErrPoolTimeout), errors.Is(err, goredis.ErrPoolExhausted),
		goredis.IsLoadingError(err), goredis.IsMasterDownError(err), goredis.IsClusterDownError(err),
		goredis.IsTryAgainError(err), goredis.IsMaxClientsError(err), goredis.IsReadOnlyError(err):
		return &UnavailableError{Op: op, Addr: s.addr, Err: err}
	}
	return fmt.Errorf("%s: redis %s: %w", op, s.addr, err)
}

// ---------------------------------------------------------------- counters

func (s *Store) counterKey(key string) string { return s.opts.Prefix + "c:" + key }
func (s *Store) bucketKey(key string) string  { return s.opts.Prefix + "tb:" + key }
func (s *Store) holdKey(key string) string    { return s.opts.Prefix + "h:" + key }

// Counter values travel through Lua numbers (doubles), so they are exact up
// to 2^53 (9e15 micro-USD, nine billion dollars).

// reserveScript: KEYS[1] counter; ARGV amount, limit, expiry (Unix ms).
// Returns {allowed, used}.
var reserveScript = goredis.NewScript(`
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > limit - amount then
	return {0, used}
end
if amount ~= 0 then
	used = redis.call('INCRBY', KEYS[1], ARGV[1])
	redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
return {1, used}
`)

// adjustScript: KEYS[1] counter; ARGV delta, expiry (Unix ms). Returns the
// new value.
var adjustScript = goredis.NewScript(`
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return v
`)

// takeTokenScript: KEYS[1] bucket (hash: t tokens, l last update in Unix
// µs); ARGV rate per second, burst, now (Unix µs). Returns {ok, wait ns}.
// A new bucket starts full; time going backwards (replicas' clocks differ)
// refills nothing. The key lives until the bucket would be full again, plus
// a minute.
var takeTokenScript = goredis.NewScript(`
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens, last
if b[1] then
	tokens, last = tonumber(b[1]), tonumber(b[2])
else
	tokens, last = burst, now
end
if now > last then
	tokens = math.min(burst, tokens + (now - last) / 1e6 * rate)
	last = now
end
local ok, wait = 0, 0
if tokens >= 1 - 1e-9 then
	ok = 1
	tokens = math.max(0, tokens - 1)
else
	wait = math.ceil((1 - tokens) / rate * 1e9)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'l', string.format('%.17g', last))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 60000)
return {ok, wait}
`)

// expiryMillis is expires in Unix milliseconds; times before the epoch
// (including the zero time) are already expired.
func expiryMillis(expires time.Time) int64 {
	if expires.IsZero() || expires.UnixMilli() < 1 {
		return 1
	}
	return expires.UnixMilli()
}

// Reserve atomically adds amount to key if the result stays within limit,
// and sets the key to expire at expires.
func (s *Store) Reserve(ctx context.Context, key string, amount, limit int64, expires time.Time) (storage.Reservation, error) {
	if key == "" || amount < 0 {
		return storage.Reservation{}, fmt.Errorf("reserve %d on counter %q: need a key and a non-negative amount: %w", amount, key, storage.ErrInvalid)
	}
	res, err := reserveScript.Run(ctx, s.c, []string{s.counterKey(key)}, amount, limit, expiryMillis(expires)).Int64Slice()
	if err != nil {
		return storage.Reservation{}, s.fail(ctx, "reserve counter", err)
	}
	if len(res) != 2 {
		return storage.Reservation{}, fmt.Errorf("reserve counter: redis script returned %d values, want 2", len(res))
	}
	return storage.Reservation{Allowed: res[0] == 1, Used: res[1]}, nil
}

// Adjust adds delta to key unconditionally and returns the new value.
func (s *Store) Adjust(ctx context.Context, key string, delta int64, expires time.Time) (int64, error) {
	if key == "" {
		return 0, fmt.Errorf("adjust counter: empty key: %w", storage.ErrInvalid)
	}
	v, err := adjustScript.Run(ctx, s.c, []string{s.counterKey(key)}, delta, expiryMillis(expires)).Int64()
	return v, s.fail(ctx, "adjust counter", err)
}

// Counter returns the value of key, 0 when missing or expired.
func (s *Store) Counter(ctx context.Context, key string) (int64, error) {
	v, err := s.c.Get(ctx, s.counterKey(key)).Int64()
	if errors.Is(err, goredis.Nil) {
		return 0, nil
	}
	return v, s.fail(ctx, "read counter", err)
}

// TakeToken takes one token from bucket key, refilled at rate per second up
// to burst, at time now (the caller's clock).
func (s *Store) TakeToken(ctx context.Context, key string, rate float64, burst int64, now time.Time) (bool, time.Duration, error) {
	if key == "" || !(rate > 0) || burst < 1 || math.IsInf(rate, 0) {
		return false, 0, fmt.Errorf("take token from %q: need a key, rate > 0 and burst >= 1: %w", key, storage.ErrInvalid)
	}
	res, err := takeTokenScript.Run(ctx, s.c, []string{s.bucketKey(key)},
		strconv.FormatFloat(rate, 'g', -1, 64), burst, now.UnixMicro()).Int64Slice()
	if err != nil {
		return false, 0, s.fail(ctx, "take token", err)
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("take token: redis script returned %d values, want 2", len(res))
	}
	return res[0] == 1, time.Duration(res[1]), nil
}

// PutHold stores data under key, expiring at expires (SET with PXAT; an
// expiry already past stores nothing that can be taken).
func (s *Store) PutHold(ctx context.Context, key string, data []byte, expires time.Time) error {
	if key == "" {
		return fmt.Errorf("put hold: empty key: %w", storage.ErrInvalid)
	}
	err := s.c.Do(ctx, "SET", s.holdKey(key), data, "PXAT", expiryMillis(expires)).Err()
	return s.fail(ctx, "put hold", err)
}

// TakeHold returns and deletes key's value with GETDEL (Redis 6.2 and
// later), which is atomic.
func (s *Store) TakeHold(ctx context.Context, key string) ([]byte, error) {
	data, err := s.c.GetDel(ctx, s.holdKey(key)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("take hold %q: %w", key, storage.ErrNotFound)
	}
	if err != nil {
		return nil, s.fail(ctx, "take hold", err)
	}
	return data, nil
}

// PeekHold returns key's value with GET, leaving it.
func (s *Store) PeekHold(ctx context.Context, key string) ([]byte, error) {
	data, err := s.c.Get(ctx, s.holdKey(key)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("peek hold %q: %w", key, storage.ErrNotFound)
	}
	if err != nil {
		return nil, s.fail(ctx, "peek hold", err)
	}
	return data, nil
}

// ---------------------------------------------------------------- notifier

func (s *Store) channel(topic string) string { return s.opts.Prefix + "n:" + topic }

// Publish sends payload to every current subscriber of topic on every Store
// sharing this Redis and prefix.
func (s *Store) Publish(ctx context.Context, topic string, payload []byte) error {
	return s.fail(ctx, "publish", s.c.Publish(ctx, s.channel(topic), payload).Err())
}

// Subscribe delivers messages published to topic after it returns, until
// ctx ends or the store closes; then the channel is closed. It returns once
// Redis has confirmed the subscription. Each subscription holds its own
// connection, which go-redis re-establishes (and re-subscribes) after a
// Redis outage; messages published meanwhile are lost. A subscriber that
// falls SubscriberBuffer messages behind loses messages.
func (s *Store) Subscribe(ctx context.Context, topic string) (<-chan []byte, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("subscribe to %q: redis: %w", topic, storage.ErrClosed)
	}
	s.wg.Add(1) // before Close can wait, so Close waits for this one
	s.mu.Unlock()
	ps := s.c.Subscribe(ctx, s.channel(topic))
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		ps.Close()
		s.wg.Done()
		return nil, s.fail(ctx, "subscribe to "+topic, err)
	}
	in := ps.Channel(goredis.WithChannelSize(s.opts.SubscriberBuffer))
	out := make(chan []byte, s.opts.SubscriberBuffer)
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer ps.Close()
		var dropped int64
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			case m, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- []byte(m.Payload):
				default:
					dropped++
					s.opts.Logger.Warn("notification dropped: subscriber is not reading", "topic", topic, "dropped", dropped)
				}
			}
		}
	}()
	return out, nil
}
