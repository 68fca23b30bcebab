// Package groupcommit batches concurrent audit appends so one AppendAudit
// call (one transaction, one fsync) makes many records durable at once.
//
// One goroutine owns the log. While it writes a batch, new records queue up;
// when the write returns it takes everything queued (up to MaxBatch) as the
// next batch. Under load, batches grow to match the backend's commit latency;
// when idle, a record is written alone and at once (MaxDelay 0).
//
// A log that can sometimes append without waiting (InlineLog: the SQLite
// store in os durability, which copies a record into shared memory) is
// given each record directly first, on the caller's goroutine: handing it
// to the writer and back costs more than such an append.
package groupcommit

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/monoclock"
	"github.com/agent-assembly/agent-assembly/storage"
)

// Metrics observes the writer. Implementations must be safe for concurrent use.
type Metrics interface {
	// ObserveBatch is called after each AppendAudit with the number of
	// records, how long the write took, and its error.
	ObserveBatch(records int, write time.Duration, err error)
}

// InlineLog is implemented by audit logs that can sometimes append at once,
// without waiting for a lock, I/O or another goroutine.
type InlineLog interface {
	// TryAppendAudit appends recs as AppendAudit would, if it can do so at
	// once. It reports false, having changed nothing, when it would have
	// to wait; the records then go through the writer.
	TryAppendAudit(recs []*storage.AuditRecord) (bool, error)
}

// Options configures a Writer.
type Options struct {
	// MaxBatch caps the records per AppendAudit (default 512).
	MaxBatch int
	// MaxDelay is how long the writer waits for more records after the
	// first of a batch arrives while no write is in progress (default 0:
	// batches form only from records that queue during the previous write).
	MaxDelay time.Duration
	// Chain, when set, is assigned to every record whose Chain is empty.
	Chain string
	// QueueSize bounds the records waiting for the writer (default 4×MaxBatch);
	// Append blocks, honouring its context, when the queue is full.
	QueueSize int
	// WriteTimeout bounds one AppendAudit (default 10s), so a hung backend
	// fails its batch and the writer moves on instead of stalling forever.
	WriteTimeout time.Duration
	// Logger receives write failures (slog.Default when nil).
	Logger *slog.Logger
	// Metrics, when set, observes every batch.
	Metrics Metrics
}

// Writer appends audit records through group commit.
type Writer struct {
	log    storage.AuditLog
	inline InlineLog // log, when it can append inline
	opts   Options
	lg     *slog.Logger

	mu      sync.RWMutex // write-held only by Close; guards closed and reqs sends
	closed  bool
	reqs    chan *request
	done    chan struct{}
	pool    sync.Pool
	written atomic.Uint64 // records written successfully
	inlined atomic.Uint64 // of which appended inline
	lastSeq atomic.Int64  // highest Seq written in Options.Chain
}

type request struct {
	rec  storage.AuditRecord
	err  error
	done chan struct{}
}

// New starts a writer appending to log.
func New(log storage.AuditLog, opts Options) *Writer {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4 * opts.MaxBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	w := &Writer{
		log:  log,
		opts: opts,
		lg:   opts.Logger.With("component", "audit-group-commit"),
		reqs: make(chan *request, opts.QueueSize),
		done: make(chan struct{}),
	}
	w.inline, _ = log.(InlineLog)
	w.pool.New = func() any { return &request{done: make(chan struct{}, 1)} }
	go w.run()
	return w
}

// Append queues a copy of r and blocks until the batch holding it is durable,
// then sets r's Seq, PrevHash and Hash (and Chain, when Options.Chain filled
// it in). A backend error fails every record of that batch and is returned
// to each caller; the gateway then fails closed.
//
// If ctx ends before r is queued, r is not written and ctx's error is
// returned. If it ends after, r is still written (the write does not depend
// on any caller's context) but Append returns ctx's error at once without
// waiting, and r is left unchanged.
//
// With an InlineLog, r is first offered to the log directly; only if it
// cannot take r at once does r go to the writer.
func (w *Writer) Append(ctx context.Context, r *storage.AuditRecord) error {
	return w.AppendUntil(ctx, r, time.Time{})
}

// ErrNotDurableYet is returned (wrapping context.DeadlineExceeded) by
// AppendUntil when the record was taken for writing but was not yet
// durable at the caller's deadline: it is still written.
var ErrNotDurableYet = fmt.Errorf("audit record taken but not durable by the caller's deadline: %w", context.DeadlineExceeded)

// AppendUntil is Append for a caller that must answer by until (when not
// zero) but must not lose its record: ctx bounds taking r for writing (the
// inline attempt and the queue), until bounds only the wait for r to be
// durable, which ends with ErrNotDurableYet. r is then still written, as
// when ctx ends after r is queued.
func (w *Writer) AppendUntil(ctx context.Context, r *storage.AuditRecord, until time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.inline != nil {
		if done, err := w.appendInline(r); done {
			return err
		}
	}
	req := w.pool.Get().(*request)
	req.rec = *r
	if req.rec.Chain == "" {
		req.rec.Chain = w.opts.Chain
	}
	req.err = nil

	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return fmt.Errorf("append audit record: %w", storage.ErrClosed)
	}
	select {
	case w.reqs <- req:
		w.mu.RUnlock()
	case <-ctx.Done():
		w.mu.RUnlock()
		w.pool.Put(req)
		return ctx.Err()
	}

	var expired <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		// The writer still owns req and will write it; it is not reused.
		return ctx.Err()
	case <-expired:
		return ErrNotDurableYet // as above: req is the writer's
	}
	err := req.err
	if err == nil {
		r.Chain, r.Seq, r.PrevHash, r.Hash = req.rec.Chain, req.rec.Seq, req.rec.PrevHash, req.rec.Hash
	}
	req.rec = storage.AuditRecord{}
	w.pool.Put(req)
	return err
}

// appendInline offers r to the InlineLog, reporting whether it was taken
// (appended, or failed: a failure is not retried through the writer).
func (w *Writer) appendInline(r *storage.AuditRecord) (bool, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return true, fmt.Errorf("append audit record: %w", storage.ErrClosed)
	}
	chain := r.Chain
	if chain == "" {
		r.Chain = w.opts.Chain
	}
	one := [1]*storage.AuditRecord{r}
	start := monoclock.Now() // the monotonic clock alone: no wall-clock read
	done, err := w.inline.TryAppendAudit(one[:])
	if !done {
		r.Chain = chain
		return false, nil
	}
	if w.opts.Metrics != nil {
		w.opts.Metrics.ObserveBatch(1, monoclock.Now()-start, err)
	}
	if err != nil {
		r.Chain = chain
		w.lg.Error("audit append failed; failing the check", "err", err)
		return true, fmt.Errorf("append audit record: %w", err)
	}
	w.noteWritten(one[:])
	w.inlined.Add(1)
	return true, nil
}

func (w *Writer) run() {
	defer close(w.done)
	batch := make([]*request, 0, w.opts.MaxBatch)
	recs := make([]*storage.AuditRecord, 0, w.opts.MaxBatch)
	var timer *time.Timer
	for {
		first, ok := <-w.reqs
		if !ok {
			return
		}
		batch = append(batch[:0], first)
		open := w.fill(&batch)
		if open && w.opts.MaxDelay > 0 && len(batch) < w.opts.MaxBatch {
			if timer == nil {
				timer = time.NewTimer(w.opts.MaxDelay)
			} else {
				timer.Reset(w.opts.MaxDelay)
			}
		collect:
			for len(batch) < w.opts.MaxBatch {
				select {
				case r, ok := <-w.reqs:
					if !ok {
						open = false
						break collect
					}
					batch = append(batch, r)
				case <-timer.C:
					break collect
				}
			}
			timer.Stop()
		}
		recs = recs[:0]
		for _, r := range batch {
			recs = append(recs, &r.rec)
		}
		w.write(recs, batch)
		if len(batch) > 1 {
			// Callers are arriving concurrently: let the ones just woken
			// queue their next records so the next batch is full.
			runtime.Gosched()
		}
		clear(batch)
		clear(recs)
		if !open {
			return // closed and drained: a closed channel yields its buffer first
		}
	}
}

// fill takes every queued request without blocking, up to MaxBatch. It
// reports false once the queue is closed.
func (w *Writer) fill(batch *[]*request) bool {
	for len(*batch) < w.opts.MaxBatch {
		select {
		case r, ok := <-w.reqs:
			if !ok {
				return false
			}
			*batch = append(*batch, r)
		default:
			return true
		}
	}
	return true
}

func (w *Writer) write(recs []*storage.AuditRecord, batch []*request) {
	start := time.Now()
	// No caller's context governs the write: a record once queued is
	// written even if its caller gave up.
	ctx, cancel := context.WithTimeout(context.Background(), w.opts.WriteTimeout)
	err := w.log.AppendAudit(ctx, recs)
	cancel()
	if w.opts.Metrics != nil {
		w.opts.Metrics.ObserveBatch(len(recs), time.Since(start), err)
	}
	if err != nil {
		w.lg.Error("audit append failed; failing every check in the batch", "records", len(recs), "err", err)
		err = fmt.Errorf("append audit batch of %d: %w", len(recs), err)
	} else {
		w.noteWritten(recs)
	}
	for _, r := range batch {
		r.err = err
		r.done <- struct{}{}
	}
}

// noteWritten counts recs, just written, and raises LastSeq to the highest
// Seq among those of Options.Chain.
func (w *Writer) noteWritten(recs []*storage.AuditRecord) {
	w.written.Add(uint64(len(recs)))
	var hi int64
	for _, r := range recs {
		if r.Chain == w.opts.Chain && r.Seq > hi {
			hi = r.Seq
		}
	}
	for {
		cur := w.lastSeq.Load()
		if hi <= cur || w.lastSeq.CompareAndSwap(cur, hi) {
			return
		}
	}
}

// Written returns how many records the writer has written successfully.
func (w *Writer) Written() uint64 { return w.written.Load() }

// LastSeq returns the highest sequence number the writer has written in
// Options.Chain since it started (0 for none). Records that land
// concurrently are ordered by it: a record with a lower Seq landed before
// the one holding LastSeq, whatever order their appends returned in.
func (w *Writer) LastSeq() int64 { return w.lastSeq.Load() }

// Inlined returns how many of them were appended inline (InlineLog).
func (w *Writer) Inlined() uint64 { return w.inlined.Load() }

// Close stops accepting records, writes everything queued, and waits for the
// last write until ctx ends.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.reqs)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("close audit writer: records still being written: %w", context.Cause(ctx))
	}
}
