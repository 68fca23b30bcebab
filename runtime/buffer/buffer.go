// Package buffer is the runtime's durable store-and-forward queue of audit
// events: an SQLite database in WAL mode that keeps events in arrival order
// until the gateway acknowledges them.
package buffer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite" // the pure-Go SQLite driver

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// ErrClosed is returned by a closed Buffer.
var ErrClosed = errors.New("buffer closed")

// Buffer is a durable FIFO of events. It is safe for concurrent use.
// Appends from concurrent callers share one transaction and one fsync.
type Buffer struct {
	db        *sql.DB
	reporter  string
	queue     chan *pending
	done      chan struct{}
	mu        sync.Mutex // guards closed
	closed    bool
	count     chan struct{}
	n         atomic.Int64 // events on disk
	unwritten atomic.Int64 // writes queued or in progress, not yet on disk
}

type pending struct {
	evs  []*v1.ReportedEvent
	done chan error // nil for fire-and-forget appends
}

// Open opens (creating if needed) the buffer at path. The reporter id, a
// name for this buffer that stays the same across restarts, is created on
// first open and prefixed with prefix.
func Open(ctx context.Context, path, prefix string) (*Buffer, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open event buffer: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open event buffer: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+abs+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open event buffer %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `
		CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL);
		CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open event buffer %s: create tables: %w", path, err)
	}
	var id string
	err = db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'reporter'`).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		id = prefix + uuid.NewString()
		_, err = db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('reporter', ?)`, id)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open event buffer %s: reporter id: %w", path, err)
	}
	b := &Buffer{db: db, reporter: id, queue: make(chan *pending, 1024), done: make(chan struct{}), count: make(chan struct{}, 1)}
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open event buffer %s: count events: %w", path, err)
	}
	b.n.Store(n)
	go b.run()
	return b, nil
}

// Reporter is the buffer's stable reporter id, the namespace of its event ids.
func (b *Buffer) Reporter() string { return b.reporter }

// Append makes evs durable in order and returns when they are. Their event
// ids are assigned by the buffer (Peek sets them).
func (b *Buffer) Append(ctx context.Context, evs ...*v1.ReportedEvent) error {
	p := &pending{evs: evs, done: make(chan error, 1)}
	if err := b.enqueue(ctx, p); err != nil {
		return err
	}
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("append buffered events: %w", ctx.Err())
	}
}

// Enqueue queues evs for the next write without waiting for it. It fails
// only when the buffer is closed or its queue is full.
func (b *Buffer) Enqueue(evs ...*v1.ReportedEvent) error {
	p := &pending{evs: evs}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.unwritten.Add(1)
	select {
	case b.queue <- p:
		return nil
	default:
		b.unwritten.Add(-1)
		return errors.New("enqueue buffered events: queue full")
	}
}

// EnqueueWait is Enqueue that, when the queue is full, waits for room
// (the writer drains it) until ctx ends, instead of failing.
func (b *Buffer) EnqueueWait(ctx context.Context, evs ...*v1.ReportedEvent) error {
	return b.enqueue(ctx, &pending{evs: evs})
}

func (b *Buffer) enqueue(ctx context.Context, p *pending) error {
	// Holding mu for the send keeps Close from closing the queue under it;
	// run keeps draining, so the send cannot block for long.
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.unwritten.Add(1)
	select {
	case b.queue <- p:
		return nil
	case <-ctx.Done():
		b.unwritten.Add(-1)
		return fmt.Errorf("append buffered events: %w", ctx.Err())
	}
}

// Idle reports whether nothing is queued for writing.
func (b *Buffer) Idle() bool { return b.unwritten.Load() == 0 }

// Written is signalled (without blocking) after each write, so a forwarder
// can wake up.
func (b *Buffer) Written() <-chan struct{} { return b.count }

func (b *Buffer) run() {
	defer close(b.done)
	for p := range b.queue {
		batch := []*pending{p}
	fill:
		for len(batch) < 256 {
			select {
			case q, ok := <-b.queue:
				if !ok {
					break fill
				}
				batch = append(batch, q)
			default:
				break fill
			}
		}
		err := b.write(batch)
		b.unwritten.Add(-int64(len(batch)))
		for _, q := range batch {
			if q.done != nil {
				q.done <- err
			}
		}
		select {
		case b.count <- struct{}{}:
		default:
		}
	}
}

func (b *Buffer) write(batch []*pending) error {
	tx, err := b.db.Begin()
	if err != nil {
		return fmt.Errorf("write buffered events: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	st, err := tx.Prepare(`INSERT INTO events (body) VALUES (?)`)
	if err != nil {
		return fmt.Errorf("write buffered events: %w", err)
	}
	defer st.Close()
	var n int64
	for _, p := range batch {
		for _, ev := range p.evs {
			body, err := proto.Marshal(ev)
			if err != nil {
				return fmt.Errorf("write buffered events: encode: %w", err)
			}
			if _, err := st.Exec(body); err != nil {
				return fmt.Errorf("write buffered events: %w", err)
			}
			n++
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("write buffered events: commit: %w", err)
	}
	b.n.Add(n)
	return nil
}

// Entry is one buffered event and its position.
type Entry struct {
	Seq   int64
	Event *v1.ReportedEvent
}

// Peek returns up to n of the oldest events, in order, with EventId set to
// their sequence number.
func (b *Buffer) Peek(ctx context.Context, n int) ([]Entry, error) {
	rows, err := b.db.QueryContext(ctx, `SELECT seq, body FROM events ORDER BY seq LIMIT ?`, n)
	if err != nil {
		return nil, fmt.Errorf("peek buffered events: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		var e Entry
		var body []byte
		if err := rows.Scan(&e.Seq, &body); err != nil {
			return nil, fmt.Errorf("peek buffered events: %w", err)
		}
		e.Event = &v1.ReportedEvent{}
		if err := proto.Unmarshal(body, e.Event); err != nil {
			return nil, fmt.Errorf("peek buffered events: event %d is corrupt: %w", e.Seq, err)
		}
		e.Event.EventId = strconv.FormatInt(e.Seq, 10)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("peek buffered events: %w", err)
	}
	return out, nil
}

// Ack deletes every event up to and including seq.
func (b *Buffer) Ack(ctx context.Context, seq int64) error {
	res, err := b.db.ExecContext(ctx, `DELETE FROM events WHERE seq <= ?`, seq)
	if err != nil {
		return fmt.Errorf("ack buffered events: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil {
		b.n.Add(-n)
	}
	return nil
}

// Len is the number of buffered events.
func (b *Buffer) Len() int64 { return b.n.Load() }

// Close writes what is queued and closes the database.
func (b *Buffer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.queue)
	b.mu.Unlock()
	<-b.done
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("close event buffer: %w", err)
	}
	return nil
}
