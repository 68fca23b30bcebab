// Package postgres is the PostgreSQL storage driver, shared by every gateway replica.
//
// One database (or one schema of it) holds the audit log, agents, policy
// versions, approvals, secrets and counters of all replicas. Replicas
// coordinate through the database only: audit chains are per writer and
// guarded by a head check, counters are updated by single atomic statements,
// and LISTEN/NOTIFY carries notifications, approval wake-ups and audit tails
// across replicas.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/agent-assembly/agent-assembly/storage"
)

// Options configure a Store. The zero value is valid.
type Options struct {
	// Schema holds the tables. It is created if missing. Empty means the
	// connection's search_path (usually public), or the URL's schema
	// parameter (postgres://host/db?schema=aa).
	Schema string
	// Durability is how far AppendAudit goes before it returns:
	// storage.DurabilitySync (the default) waits for the commit to be flushed
	// on the server; storage.DurabilityOS commits with synchronous_commit=off,
	// so the records are in the server (they survive a gateway crash) and the
	// server's WAL writer flushes them within three wal_writer_delay periods
	// (PostgreSQL's default is 200ms; set wal_writer_delay = 15ms on the
	// server for the 50 ms window the SQLite driver keeps by default).
	Durability storage.Durability
	// SyncCounters makes counter and token bucket updates wait for the
	// commit to be flushed, like every other write. By default they commit
	// with synchronous_commit=off: counters are budget and rate state that
	// the Redis driver keeps in memory only, and a flush per reservation
	// would cap a hot key at one disk flush per request. A crash of the
	// database server can lose its last moments of counting (under-count);
	// a crash of the gateway loses nothing.
	SyncCounters bool
	// Sealer encrypts secrets before they are stored. Without one the
	// Secrets methods return storage.ErrNotSupported.
	Sealer storage.Sealer
	// MaxConns caps the connections of the pool; the notification listener
	// uses one more. Default 16.
	MaxConns int
	// ConnectTimeout bounds each connection attempt when the URL has no
	// connect_timeout, and the ping that checks an idle connection before
	// it is reused when the URL has no pool_ping_timeout. Default 5 s.
	ConnectTimeout time.Duration
	// SweepInterval is how often expired counters, nonces and revocations are
	// deleted. Default 1 minute; negative disables sweeping.
	SweepInterval time.Duration
	// Logger receives connection events of the listener. Default: discard.
	Logger *slog.Logger
	// Now is the clock that decides expiry of counters and revocations.
	// Default time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Durability == "" {
		o.Durability = storage.DurabilitySync
	}
	if o.MaxConns == 0 {
		o.MaxConns = 16
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate rejects options that cannot work.
func (o *Options) Validate() error {
	switch o.Durability {
	case "", storage.DurabilitySync, storage.DurabilityOS:
	default:
		return fmt.Errorf("postgres durability %q: want %q or %q: %w", o.Durability, storage.DurabilitySync, storage.DurabilityOS, storage.ErrInvalid)
	}
	if o.MaxConns < 0 || o.MaxConns > math.MaxInt32 {
		return fmt.Errorf("postgres max connections %d: must be between 0 and %d: %w", o.MaxConns, math.MaxInt32, storage.ErrInvalid)
	}
	if o.ConnectTimeout < 0 {
		return fmt.Errorf("postgres connect timeout %v: must not be negative: %w", o.ConnectTimeout, storage.ErrInvalid)
	}
	return nil
}

// Store is a storage.Store on PostgreSQL. It is safe for concurrent use, and
// any number of Stores (replicas) may share one database and schema.
type Store struct {
	opts    Options
	addr    string // host:port, for error messages
	schema  string // "" for the connection's default
	channel string // the LISTEN/NOTIFY channel of this schema
	// instance tells this Store's barrier notifications from other Stores'.
	instance string
	pool     *pgxpool.Pool
	lis      *listener

	headsMu sync.Mutex
	heads   map[string]*chainHead

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// AuditDurability is how far an audit append goes before it returns: the
// Options' durability, or the URL's durability parameter.
func (s *Store) AuditDurability() storage.Durability { return s.opts.Durability }

var _ storage.Store = (*Store)(nil)

// Pool tuning that the URL's pgxpool parameters (pool_max_conn_idle_time,
// pool_health_check_period) override. pgxpool pings a connection that was
// idle for more than a second before handing it out, so connections broken
// by an outage are replaced rather than failing statements.
const (
	// maxConnIdleTime closes the connections of a burst once it is over.
	maxConnIdleTime = 10 * time.Minute
	// healthCheckPeriod is how often idle connections are checked for
	// their idle time and lifetime.
	healthCheckPeriod = 30 * time.Second
)

// Open connects to the database at connURL (postgres://user@host:port/db?...),
// applies pending schema migrations and starts the notification listener.
// Migrations run in one transaction under an advisory lock, so replicas may
// start together.
//
// Besides pgx's parameters (sslmode, connect_timeout, application_name,
// ...) and pgxpool's (pool_max_conn_lifetime, pool_max_conn_idle_time,
// ...) the URL may set schema=NAME, durability=sync|os and
// pool_max_conns=N, which override opts. The database must be reachable:
// otherwise Open returns an error matching storage.ErrUnavailable.
func Open(ctx context.Context, connURL string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.setDefaults()
	cfg, err := poolConfig(connURL, &opts)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w: %w", storage.ErrInvalid, err)
	}
	cc := cfg.ConnConfig
	s := &Store{
		opts:    opts,
		addr:    net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))),
		schema:  opts.Schema,
		channel: channelName(opts.Schema),
		pool:    pool,
		heads:   make(map[string]*chainHead),
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	s.instance = hex.EncodeToString(id[:])
	if strings.HasPrefix(cc.Host, "/") {
		s.addr = cc.Host
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.migrate(ctx); err != nil {
		s.cancel()
		s.pool.Close()
		return nil, err
	}
	s.lis = newListener(s, cc)
	s.wg.Go(func() { s.lis.run(s.ctx) })
	if opts.SweepInterval > 0 {
		s.wg.Go(s.sweepLoop)
	}
	return s, nil
}

// poolConfig parses connString, less this driver's URL parameters (which
// it moves into opts), into the pool's configuration.
func poolConfig(connString string, opts *Options) (*pgxpool.Config, error) {
	connString, query, err := urlOptions(connString, opts)
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w: %w", storage.ErrInvalid, err)
	}
	cc := cfg.ConnConfig
	if opts.Schema != "" {
		// Every connection, the listener's too, starts with the schema
		// as its search path: no statement per acquire.
		cc.RuntimeParams["search_path"] = pgx.Identifier{opts.Schema}.Sanitize()
	}
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = opts.ConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "agent-assembly"
	}
	cfg.MaxConns = int32(opts.MaxConns)
	if !query.Has("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = maxConnIdleTime
	}
	if !query.Has("pool_health_check_period") {
		cfg.HealthCheckPeriod = healthCheckPeriod
	}
	if !query.Has("pool_ping_timeout") {
		cfg.PingTimeout = opts.ConnectTimeout
	}
	return cfg, nil
}

// urlOptions takes this driver's parameters out of a postgres:// URL into
// opts, before pgx parses the URL (pgx would send them to the server as
// settings). It returns the URL without them and the query that remains.
// A keyword/value connection string is returned as it is.
func urlOptions(connString string, opts *Options) (string, url.Values, error) {
	if !strings.HasPrefix(connString, "postgres://") && !strings.HasPrefix(connString, "postgresql://") {
		return connString, url.Values{}, nil
	}
	base, rawQuery, _ := strings.Cut(connString, "?")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", nil, fmt.Errorf("open postgres: URL query: %w: %w", storage.ErrInvalid, err)
	}
	take := func(name string) (string, bool) {
		v, ok := query[name]
		delete(query, name)
		if !ok || len(v) == 0 {
			return "", false
		}
		return v[0], true // the first, as pgx reads repeated parameters
	}
	if v, ok := take("schema"); ok {
		opts.Schema = v
	}
	if v, ok := take("durability"); ok {
		opts.Durability = storage.Durability(v)
	}
	if v, ok := take("pool_max_conns"); ok {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 {
			return "", nil, fmt.Errorf("postgres URL parameter pool_max_conns=%q: want a positive integer: %w", v, storage.ErrInvalid)
		}
		opts.MaxConns = int(n)
	}
	if err := opts.Validate(); err != nil {
		return "", nil, err
	}
	if len(query) > 0 {
		base += "?" + query.Encode()
	}
	return base, query, nil
}

// channelName derives the NOTIFY channel from the schema, so stores on
// different schemas of one database do not hear each other.
func channelName(schema string) string {
	const prefix = "agent_assembly"
	if schema == "" {
		return prefix
	}
	name := prefix + "_" + schema
	if len(name) > 63 { // NAMEDATALEN-1
		h := fnv.New64a()
		h.Write([]byte(schema))
		name = fmt.Sprintf("%s_%x", prefix, h.Sum64())
	}
	return name
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.do(ctx, "ping", func(c *pgx.Conn) error { return c.Ping(ctx) })
}

// Close stops the listener and closes every connection, after waiting for
// the operations in progress to finish, as database/sql does. Subscriptions
// and tails end; later calls return storage.ErrClosed.
func (s *Store) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.pool.Close()
	})
	return nil
}

// ---------------------------------------------------------------- plumbing

// do runs fn on a pooled connection. A statement that failed before any
// byte reached the server (a connection found dead when used) is retried
// once on a fresh connection.
func (s *Store) do(ctx context.Context, op string, fn func(c *pgx.Conn) error) error {
	for attempt := 0; ; attempt++ {
		if s.ctx.Err() != nil {
			return fmt.Errorf("%s: postgres: %w", op, storage.ErrClosed)
		}
		pc, err := s.pool.Acquire(ctx)
		if err != nil {
			return s.acquireFailed(ctx, op, err)
		}
		c := pc.Conn()
		err = fn(c)
		broken := err != nil && c.IsClosed()
		pc.Release() // a connection closed or left in a transaction is destroyed
		if err == nil {
			return nil
		}
		if broken && attempt == 0 && pgconn.SafeToRetry(err) && ctx.Err() == nil {
			continue
		}
		return s.fail(ctx, op, err, broken)
	}
}

// tx runs fn in a transaction on a pooled connection and commits.
func (s *Store) tx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return s.do(ctx, op, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, fn)
	})
}

// UnavailableError is returned when PostgreSQL cannot be reached or drops
// the connection. It matches storage.ErrUnavailable and wraps the cause.
type UnavailableError struct {
	// Op is what the store was doing ("append audit").
	Op string
	// Addr is the server's host:port.
	Addr string
	// Err is the underlying error.
	Err error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%s: postgres %s unavailable: %s", e.Op, e.Addr, rootCause(e.Err))
}

// Unwrap returns storage.ErrUnavailable and the cause.
func (e *UnavailableError) Unwrap() []error { return []error{storage.ErrUnavailable, e.Err} }

// rootCause is the most telling part of a connection error: the system
// call's error ("connect: connection refused") or the server's message.
func rootCause(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Message + " (SQLSTATE " + pe.Code + ")"
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Error()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "connection closed by the server"
	}
	return err.Error()
}

// acquireFailed maps an error of acquiring a pooled connection. The pool is
// closed only by Close. A deadline that passes while the pool dials or
// waits for a connection to come free means the database did not serve in
// time: the error matches both storage.ErrUnavailable and the deadline.
func (s *Store) acquireFailed(ctx context.Context, op string, err error) error {
	switch {
	case s.ctx.Err() != nil:
		return fmt.Errorf("%s: postgres: %w", op, storage.ErrClosed)
	case errors.Is(err, context.DeadlineExceeded):
		return &UnavailableError{Op: op, Addr: s.addr, Err: fmt.Errorf("acquire a connection: %w", err)}
	}
	return s.fail(ctx, op, err, false)
}

// fail maps a pgx error to the storage error vocabulary.
func (s *Store) fail(ctx context.Context, op string, err error, broken bool) error {
	var (
		pe *pgconn.PgError
		ce *pgconn.ConnectError
	)
	switch {
	case errors.Is(err, storage.ErrClosed):
		return fmt.Errorf("%s: postgres: %w", op, err)
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%s: %w", op, storage.ErrNotFound)
	case errors.As(err, &ce):
		return &UnavailableError{Op: op, Addr: s.addr, Err: err}
	case errors.As(err, &pe):
		switch {
		case pe.Code == "23505": // unique_violation
			return fmt.Errorf("%s: %w: %s", op, storage.ErrConflict, pe.Message)
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, crash, starting up
			pe.Code == "53300": // too many connections
			return &UnavailableError{Op: op, Addr: s.addr, Err: err}
		}
		return fmt.Errorf("%s: postgres: %w", op, err)
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		return fmt.Errorf("%s: postgres: %w", op, err)
	case broken, isNetError(err):
		return &UnavailableError{Op: op, Addr: s.addr, Err: err}
	}
	return fmt.Errorf("%s: postgres: %w", op, err)
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// ---------------------------------------------------------------- time

func nanos(t time.Time) int64 { return storage.UnixNanos(t) }

func fromNanos(n int64) time.Time { return storage.FromUnixNanos(n) }

// ---------------------------------------------------------------- sweeping

// sweepLoop deletes expired rows now and then. Every replica sweeps; the
// deletes are idempotent.
func (s *Store) sweepLoop() {
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
			if err := s.Sweep(ctx); err != nil && s.ctx.Err() == nil {
				s.opts.Logger.Warn("sweep expired rows", "err", err)
			}
			cancel()
		}
	}
}

// Sweep deletes expired counters, budget holds, nonces and revocations, and token
// buckets that have refilled completely.
func (s *Store) Sweep(ctx context.Context) error {
	now := nanos(s.opts.Now())
	return s.do(ctx, "sweep expired rows", func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue(`DELETE FROM counters WHERE expires_ns <= $1`, now)
		b.Queue(`DELETE FROM budget_holds WHERE expires_ns <= $1`, now)
		b.Queue(`DELETE FROM nonces WHERE expires_ns <= $1`, now)
		b.Queue(`DELETE FROM revoked_credentials WHERE expires_ns <> 0 AND expires_ns <= $1`, now)
		b.Queue(`DELETE FROM token_buckets WHERE full_ns < $1`, now)
		return c.SendBatch(ctx, b).Close()
	})
}
