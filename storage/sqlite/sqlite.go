// Package sqlite is the embedded storage driver: all of storage.Store in one
// SQLite file (pure Go, modernc.org/sqlite), so a fresh machine runs the
// gateway with no database server.
//
// # Connections
//
// SQLite allows one writer at a time, so every write goes through one
// connection (transactions BEGIN IMMEDIATE); reads use a pool of query-only
// connections that WAL mode lets run beside the writer.
//
// # Durability
//
// Audit records are made durable in an append-only journal next to the
// database (journal.go): with DurabilitySync every batch is fdatasynced
// before AppendAudit returns, so an acknowledged record survives power loss;
// with DurabilityOS the batch is written to the OS (it survives a crash of the
// gateway process) and a background flusher fdatasyncs the journal at most
// FlushInterval (DefaultFlushInterval) after the write, so a record is on
// disk within twice FlushInterval of its write (the flush window: 50 ms by
// default), unless the disk or the flusher's wait for a CPU is slower, which
// is counted and logged. An indexer moves journaled
// records into the audit_blocks table a few times a second; queries index
// what is pending first, so they always see every acknowledged record.
//
// Everything else is written straight to SQLite. With DurabilitySync the
// database runs synchronous=FULL: every commit fsyncs the WAL before it
// returns. With DurabilityOS it runs synchronous=NORMAL and a background
// flusher fsyncs the WAL after commits, within FlushInterval. SQLite itself
// fsyncs the WAL before and the database after every checkpoint, so
// checkpointed data is durable in both modes.
//
// # Several instances
//
// Stores opened on the same file in one process share their notifications,
// audit tails, approval wake-ups and counters, so they behave as replicas.
// Stores in different processes share the data; approval waits notice a
// decision by polling, but tails and Notifier do not cross processes and each
// process keeps its own counters: use Redis (--counters) for that. Each
// process must write its own audit chains (a chain is locked by the first
// process that appends to it), and a process sees another's audit records
// once that process has indexed them (within about 50 ms).
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/internal/broadcast"
	"github.com/agent-assembly/agent-assembly/storage/memory"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// DefaultPath is the gateway's default database file.
const DefaultPath = "./data/aa.db"

// DurabilityOS's background flush. Every flush is a write and an fdatasync,
// which cost 120–300 µs of CPU on the build machines (a VM, where each disk
// request traps to the hypervisor) whatever their size, and two disk
// requests. Under load the flusher runs once per interval, so the interval
// sets that cost. At 5 ms (the default until 2026-11-27) the flusher took
// 0.7–1.7 µs of CPU per check in the ext_authz benchmark, and a gateway at
// 1,000 ext_authz checks/s made the disk serve 185 flushes and 575 writes a
// second; at 25 ms, 0–0.4 µs, and 43 flushes and 145 writes
// (docs/performance.md). The window a power loss can take, twice the
// interval, is still tighter than the usual relaxed modes of databases
// (PostgreSQL's synchronous_commit=off: up to three wal_writer_delay
// periods, 600 ms by default; MongoDB's journal: 100 ms).
const (
	// DefaultFlushInterval is Options.FlushInterval's default: records are
	// on disk within 50 ms of their write.
	DefaultFlushInterval = 25 * time.Millisecond
	// MaxFlushInterval is the longest FlushInterval Open accepts.
	MaxFlushInterval = time.Second
)

// Options configures Open. Zero values take the defaults.
type Options struct {
	// Path is the database file (DefaultPath when empty). Its directory is
	// created (0700) if missing.
	Path string
	// Durability is DurabilitySync (default) or DurabilityOS.
	Durability storage.Durability
	// Sealer encrypts secret values. Without one, PutSecret and GetSecret
	// fail with storage.ErrNotSupported: plaintext is never stored.
	Sealer storage.Sealer
	// Logger receives migrations and background errors (slog.Default when nil).
	Logger *slog.Logger
	// FlushInterval bounds how long DurabilityOS lets a commit wait for its
	// fsync (DefaultFlushInterval when zero, at most MaxFlushInterval). A
	// record is promised on disk within twice this of its write.
	FlushInterval time.Duration
	// SharedMemoryDir is where DurabilityOS keeps the audit journal's
	// shared-memory copies (shm.go): "" for DefaultSharedMemoryDir when it
	// is a tmpfs (else none), SharedMemoryOff for none, or a tmpfs
	// directory, which must then exist. Recovery always also looks in
	// DefaultSharedMemoryDir.
	SharedMemoryDir string
	// ReadConns is the size of the read pool (default 4).
	ReadConns int
	// CounterFlushInterval is how often changed counters are written to the
	// file (default 100 ms). A crash loses at most this much counter history.
	CounterFlushInterval time.Duration
	// CheckpointInterval is how often the WAL is checkpointed into the
	// database file (default 1 s).
	CheckpointInterval time.Duration
	// ApprovalPoll is how often WaitApproval re-reads an approval, to notice
	// decisions made by other processes (default 500 ms).
	ApprovalPoll time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.Durability == "" {
		o.Durability = storage.DurabilitySync
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.ReadConns == 0 {
		o.ReadConns = 4
	}
	if o.CounterFlushInterval == 0 {
		o.CounterFlushInterval = 100 * time.Millisecond
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Second
	}
	if o.ApprovalPoll == 0 {
		o.ApprovalPoll = 500 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate rejects options Open cannot honour.
func (o *Options) Validate() error {
	var errs []error
	switch o.Durability {
	case storage.DurabilitySync, storage.DurabilityOS:
	default:
		errs = append(errs, fmt.Errorf("durability %q: want %q or %q", o.Durability, storage.DurabilitySync, storage.DurabilityOS))
	}
	if o.FlushInterval < 0 || o.FlushInterval > MaxFlushInterval {
		errs = append(errs, fmt.Errorf("flush interval %v: want 0 < interval <= %v", o.FlushInterval, MaxFlushInterval))
	}
	if o.ReadConns < 1 {
		errs = append(errs, fmt.Errorf("read connections %d: want at least 1", o.ReadConns))
	}
	if o.CounterFlushInterval < 0 || o.ApprovalPoll < 0 || o.CheckpointInterval < 0 {
		errs = append(errs, errors.New("intervals must be positive"))
	}
	if strings.ContainsAny(o.Path, "?#") {
		errs = append(errs, fmt.Errorf("path %q: must not contain ? or #", o.Path))
	}
	return errors.Join(errs...)
}

// Store is a storage.Store backed by one SQLite file.
type Store struct {
	opts   Options
	log    *slog.Logger
	path   string
	writer *sql.DB
	reader *sql.DB
	ckpt   *sql.DB // one connection for background checkpoints
	hub    *hub

	dirty    chan struct{} // a commit awaits its fsync (DurabilityOS)
	walSyncs atomic.Int64  // background WAL fsyncs done, for tests
	stop     chan struct{}
	wg       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

var _ storage.Store = (*Store)(nil)

//go:embed migrations/*.sql
var migrations embed.FS

// Open opens (creating if needed) the database at opts.Path, applies any
// missing schema migrations, and starts the background flushers.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	if dir := filepath.Dir(opts.Path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("open sqlite store: %w", err)
		}
	}
	abs, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	s := &Store{opts: opts, log: opts.Logger.With("store", "sqlite", "path", opts.Path), path: abs,
		dirty: make(chan struct{}, 1), stop: make(chan struct{})}
	syncMode := "FULL"
	if opts.Durability == storage.DurabilityOS {
		syncMode = "NORMAL"
	}
	common := url.Values{}
	common.Add("_pragma", "busy_timeout(10000)")
	common.Add("_pragma", "foreign_keys(1)")
	common.Add("_pragma", "journal_mode(WAL)")
	common.Add("_pragma", "synchronous("+syncMode+")")
	// Checkpoints run in the background (checkpoint), not inside a commit.
	wq := url.Values{"_txlock": {"immediate"}, "_pragma": {"wal_autocheckpoint(0)"}}
	for k, v := range common {
		wq[k] = append(wq[k], v...)
	}
	if s.writer, err = sql.Open("sqlite", "file:"+abs+"?"+wq.Encode()); err != nil {
		return nil, fmt.Errorf("open sqlite store %s: %w", opts.Path, err)
	}
	s.writer.SetMaxOpenConns(1)
	s.writer.SetMaxIdleConns(1)
	s.writer.SetConnMaxLifetime(0)
	s.writer.SetConnMaxIdleTime(0)
	if err := s.migrate(ctx); err != nil {
		s.writer.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", opts.Path, err)
	}
	rq := url.Values{}
	for k, v := range common {
		rq[k] = v
	}
	rq.Add("_pragma", "query_only(1)")
	if s.reader, err = sql.Open("sqlite", "file:"+abs+"?"+rq.Encode()); err != nil {
		s.writer.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", opts.Path, err)
	}
	s.reader.SetMaxOpenConns(opts.ReadConns)
	s.reader.SetMaxIdleConns(opts.ReadConns)
	cq := url.Values{}
	for k, v := range common {
		cq[k] = v
	}
	if s.ckpt, err = sql.Open("sqlite", "file:"+abs+"?"+cq.Encode()); err != nil {
		s.reader.Close()
		s.writer.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", opts.Path, err)
	}
	s.ckpt.SetMaxOpenConns(1)
	// Stores reaching one file through different paths share one hub.
	hubKey := abs
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		hubKey = real
	}
	s.hub, err = acquireHub(ctx, hubKey, s)
	if err != nil {
		s.ckpt.Close()
		s.reader.Close()
		s.writer.Close()
		return nil, fmt.Errorf("open sqlite store %s: %w", opts.Path, err)
	}
	if opts.Durability == storage.DurabilityOS {
		s.wg.Go(s.flushWAL)
	}
	s.wg.Go(s.maintain)
	s.wg.Go(s.checkpoint)
	return s, nil
}

// goMigrations run after the SQL of their migration, in its transaction.
var goMigrations = map[int]func(context.Context, *sql.Tx) error{
	5: convertAuditRows,
}

// migrate applies the embedded migrations that schema_migrations does not
// list yet, each in its own transaction, in version order.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.writer.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT    NOT NULL,
		applied_ns INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	type migration struct {
		version int
		name    string
	}
	var all []migration
	for _, e := range entries {
		v, _, ok := strings.Cut(e.Name(), "_")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return fmt.Errorf("migrate: migration file %q is not NNNN_name.sql", e.Name())
		}
		all = append(all, migration{n, e.Name()})
	}
	slices.SortFunc(all, func(a, b migration) int { return a.version - b.version })
	var latest int
	if err := s.writer.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&latest); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if known := all[len(all)-1].version; latest > known {
		return fmt.Errorf("migrate: the database has schema version %d, newer than this binary knows (%d): upgrade agent-assembly", latest, known)
	}
	for _, m := range all {
		if m.version <= latest {
			continue
		}
		body, err := migrations.ReadFile("migrations/" + m.name)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		err = s.write(ctx, func(tx *sql.Tx) error {
			// Re-check inside the write lock: another process may have migrated.
			var done int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&done); err != nil || done > 0 {
				return err
			}
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return err
			}
			if hook := goMigrations[m.version]; hook != nil {
				if err := hook(ctx, tx); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)`, m.version, m.name, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate: apply %s: %w", m.name, err)
		}
		s.log.Info("applied schema migration", "migration", m.name)
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.reader.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// write runs fn in a write transaction and commits it.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return wrapErr(err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return wrapErr(err)
	}
	s.committed()
	return nil
}

// committed tells the WAL flusher there is something to fsync.
func (s *Store) committed() {
	if s.opts.Durability != storage.DurabilityOS {
		return
	}
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// wrapErr marks errors that mean the database cannot be used as
// ErrUnavailable, leaving context errors as they are.
func wrapErr(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, storage.ErrInvalid) || errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrConflict) {
		return err
	}
	return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
}

// flushWAL fsyncs the WAL file after commits (DurabilityOS), at most once
// per FlushInterval. See the package documentation for the bound.
func (s *Store) flushWAL() {
	walPath := s.path + "-wal"
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	// On stop, Close checkpoints the WAL with fsyncs; nothing left to do.
	p := pacer{kick: s.dirty, stop: s.stop, interval: s.opts.FlushInterval}
	for p.wait() {
		if f != nil {
			// A checkpoint can restart the WAL in place (same file) but a
			// truncation or close may replace it: reopen when it changed.
			fi, err1 := f.Stat()
			cur, err2 := os.Stat(walPath)
			if err1 != nil || err2 != nil || !os.SameFile(fi, cur) {
				f.Close()
				f = nil
			}
		}
		if f == nil {
			var err error
			if f, err = os.OpenFile(walPath, os.O_RDWR, 0); err != nil {
				s.log.Error("open WAL for background fsync; commits are not yet on disk", "err", err)
				continue
			}
		}
		if err := f.Sync(); err != nil {
			s.log.Error("fsync WAL; commits are not yet on disk", "err", err)
			continue
		}
		s.walSyncs.Add(1)
	}
}

// checkpoint copies committed WAL frames into the database file every
// CheckpointInterval from its own connection. Running it here rather than
// as SQLite's automatic checkpoint keeps its fsyncs off the commit path; a
// PASSIVE checkpoint never blocks the writer. When readers keep it from
// catching up and the WAL passes walLimitFrames, a TRUNCATE checkpoint
// (which waits for them) bounds its size.
func (s *Store) checkpoint() {
	const walLimitFrames = 64 << 10 // 256 MiB of 4 KiB pages
	tick := time.NewTicker(s.opts.CheckpointInterval)
	defer tick.Stop()
	mode := "PASSIVE"
	for {
		select {
		case <-tick.C:
		case <-s.stop:
			return
		}
		var busy, frames, done int
		err := s.ckpt.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &frames, &done)
		if err != nil {
			s.log.Warn("checkpoint WAL", "mode", mode, "err", err)
			continue
		}
		mode = "PASSIVE"
		if frames > walLimitFrames && done < frames {
			mode = "TRUNCATE"
		}
	}
}

// maintain persists counters and deletes expired rows.
func (s *Store) maintain() {
	tick := time.NewTicker(s.opts.CounterFlushInterval)
	defer tick.Stop()
	sweep := time.Now()
	for {
		select {
		case <-tick.C:
		case <-s.stop:
			return
		}
		ctx := context.Background()
		if err := s.hub.flushCounters(ctx, s); err != nil {
			s.log.Error("persist counters", "err", err)
		}
		if time.Since(sweep) > time.Minute {
			sweep = time.Now()
			now := s.opts.Now().UnixNano()
			err := s.write(ctx, func(tx *sql.Tx) error {
				for _, q := range []string{
					`DELETE FROM nonces WHERE expires_ns <= ?`,
					`DELETE FROM revoked_credentials WHERE expires_ns <= ?`,
					`DELETE FROM counters WHERE expires_ns <= ?`,
					`DELETE FROM budget_holds WHERE expires_ns <= ?`,
				} {
					if _, err := tx.ExecContext(ctx, q, now); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				s.log.Error("delete expired rows", "err", err)
			}
		}
	}
}

// Ping checks that both pools answer.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.reader.PingContext(ctx); err != nil {
		return wrapErr(err)
	}
	return wrapErr(s.writer.PingContext(ctx))
}

// AuditDurability is how far an audit append goes before it returns: the
// Options' durability, or the store URL's durability parameter.
func (s *Store) AuditDurability() storage.Durability { return s.opts.Durability }

// FlushWindow is how soon after its write an audit record is on disk at
// the latest with DurabilityOS (twice the flush interval; late flushes are
// counted and logged), and zero with DurabilitySync, where every record is
// on disk before its append returns.
func (s *Store) FlushWindow() time.Duration {
	if s.opts.Durability != storage.DurabilityOS {
		return 0
	}
	return s.hub.audit.window
}

// Close stops the background work, persists counters, and closes the file.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := s.hub.flushCounters(ctx, s)
		s.closeErr = errors.Join(err, s.hub.release(ctx, s), s.ckpt.Close(), s.reader.Close(), s.writer.Close())
	})
	return s.closeErr
}

// ---------------------------------------------------------------- hub

// hub is what every Store on one file in this process shares. It is the
// in-process stand-in for a server's notifications.
type hub struct {
	path     string
	refs     int
	notifier *memory.Notifier
	tail     *broadcast.Broadcaster[*storage.AuditRecord]
	counters *memory.Counters
	// appendMu orders tail delivery with commit order across the Stores.
	appendMu sync.Mutex
	// slowAppend is set while AppendAudit holds appendMu: it may be doing
	// I/O, so an inline append does not wait for it (lockInline).
	slowAppend atomic.Bool
	// inlineWait is defaultInlineWait; tests change it.
	inlineWait time.Duration
	// audit is the audit journal and its indexer (journal.go).
	audit *auditLog

	dirtyMu    sync.Mutex
	dirty      map[string]struct{} // counters changed since the last flush
	dirtyHolds map[string]struct{} // budget holds put or taken since then
}

var hubs = struct {
	sync.Mutex
	m map[string]*hub
}{m: make(map[string]*hub)}

func acquireHub(ctx context.Context, path string, s *Store) (*hub, error) {
	hubs.Lock()
	defer hubs.Unlock()
	if h, ok := hubs.m[path]; ok {
		h.refs++
		return h, nil
	}
	h := &hub{
		path:       path,
		refs:       1,
		notifier:   memory.NewNotifier(),
		tail:       broadcast.New[*storage.AuditRecord](memory.TailBuffer, broadcast.Disconnect),
		counters:   memory.NewCounters(s.opts.Now),
		dirty:      make(map[string]struct{}),
		inlineWait: defaultInlineWait,
		// budget holds changed since the last flush
		dirtyHolds: make(map[string]struct{}),
	}
	if err := h.loadCounters(ctx, s); err != nil {
		return nil, err
	}
	var err error
	if h.audit, err = openAuditLog(ctx, s.path, s.log, journalOptions{
		flush: s.opts.FlushInterval, shm: s.opts.SharedMemoryDir, useShm: s.opts.Durability == storage.DurabilityOS,
	}); err != nil {
		return nil, err
	}
	hubs.m[path] = h
	return h, nil
}

// release drops s's reference; the last one closes the audit journal
// (indexing what is left) and the notifications.
func (h *hub) release(ctx context.Context, s *Store) error {
	hubs.Lock()
	defer hubs.Unlock()
	h.refs--
	if h.refs > 0 {
		return nil
	}
	delete(hubs.m, h.path)
	h.tail.Close()
	h.notifier.Close()
	if err := h.audit.close(ctx); err != nil {
		return fmt.Errorf("close audit journal: %w", err)
	}
	return nil
}
