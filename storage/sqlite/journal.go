package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// The audit journal is where an audit record becomes durable. AppendAudit
// links a batch to its chains, writes it as one frame to an append-only file
// (and, in DurabilitySync, fdatasyncs it) and answers. An indexer moves what
// was journaled into audit_blocks in the background, a few times a second, in
// large transactions; queries and verification first index everything
// journaled so far, so they always see every acknowledged record. On the hot
// path a batch therefore costs one write (plus one fdatasync in sync mode)
// instead of a SQLite transaction.
//
// Files live in <database>-audit/ as journal-<time>-<pid>.log, each locked
// (flock) by the process writing it. A frame is uint32 length, uint32
// CRC-32C of the payload, then the payload: the batch's entries (see
// appendEntry). On open, files whose lock is free were left by a process that
// died: their records not yet in audit_blocks are indexed and the files
// removed. A torn last frame (the write was never acknowledged) is ignored.
//
// Each file is zero-filled and made durable before its first frame (a
// background goroutine keeps one such spare ready; sizes double from
// journalFirstBytes to journalFileBytes, so a little-used database keeps
// small files), and frames
// are written in place. An fdatasync then flushes data only: the file's size
// and blocks never change, so the filesystem has no metadata to commit,
// which took a third off fdatasync's latency on the build machines. A frame
// header of zeros marks the unused rest of a file.
//
// Each chain is written by one process at a time: the first append to a chain
// takes chain-<hash>.lock in the same directory, and a second process that
// tries to append to it is refused (give each gateway its own replica id).

const (
	journalFirstBytes = 1 << 20   // the first journal file's size; each next one doubles
	journalFileBytes  = 16 << 20  // up to this size
	journalMaxPending = 256 << 10 // records journaled but not indexed before appends are refused
	indexInterval     = 20 * time.Millisecond
	frameHeader       = 8
	maxFrameBytes     = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// zeroChunk fills new journal files (read only). It is small because the
// page cache keeps the folio size of the write that created a page, and the
// group-commit writer's small writes cost more CPU in large folios
// (measured on ext4, Linux 6.18: 3 KB pwrites into a file zero-filled with
// 1 MiB writes took 4.2–5.8 µs, with 64 KiB or 4 KiB writes 2.2–4.3 µs);
// 64 KiB rather than one page keeps the zero-filling itself cheap.
var zeroChunk = make([]byte, 64<<10)

type pendingBatch struct {
	file    int64 // journal file number the batch was written to
	entries []entry
}

type journalFile struct {
	no   int64
	path string
	f    *os.File
	size int64 // bytes of frames written
	cap  int64 // bytes zero-filled
}

// auditLog is the journal and indexer that every Store on one file in this
// process shares (through the hub).
type auditLog struct {
	dir      string
	db       *sql.DB // the indexer's own connection (synchronous=NORMAL: see removeIndexedFiles)
	dbPath   string
	log      *slog.Logger
	interval time.Duration

	mu       sync.Mutex
	heads    map[string]storage.ChainHead
	locks    map[string]*os.File
	cur      *journalFile
	spare    *journalFile // zero-filled and locked, for the next rotation
	nextCap  int64        // size of the next file to prepare
	nextNo   int64
	retired  []*journalFile
	pending  []pendingBatch
	npending int
	unsynced bool // written in os mode, not yet fdatasynced
	lastErr  error

	syncs atomic.Int64 // background fdatasyncs done, for tests

	indexMu sync.Mutex
	// Scratch reused across batches: enc under mu (append), entries and
	// block under indexMu (index).
	enc     []byte
	entries []entry
	block   []byte

	kick      chan struct{}
	syncKick  chan struct{}
	spareKick chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup
}

// openAuditLog opens the journal directory of the database at dbPath,
// indexes what dead processes left there, and starts the indexer and the
// background fdatasync (every flush at most).
func openAuditLog(ctx context.Context, dbPath string, log *slog.Logger, flush time.Duration) (*auditLog, error) {
	a := &auditLog{
		dir: dbPath + "-audit", dbPath: dbPath, log: log.With("component", "audit-journal"), interval: indexInterval,
		heads: make(map[string]storage.ChainHead), locks: make(map[string]*os.File),
		kick: make(chan struct{}, 1), syncKick: make(chan struct{}, 1), spareKick: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	q := url.Values{"_txlock": {"immediate"}}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(NORMAL)", "wal_autocheckpoint(0)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+dbPath+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	a.db = db
	if err := a.recover(ctx); err != nil {
		db.Close()
		return nil, err
	}
	a.wg.Go(a.runIndexer)
	a.wg.Go(func() { a.runSync(flush) })
	a.wg.Go(a.runSpare)
	return a, nil
}

// append links recs, journals them as one frame and makes them durable as
// asked (fdatasync when sync; otherwise the background flush within its
// interval). Nothing is changed when it fails.
func (a *auditLog) append(recs []*storage.AuditRecord, sync bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.npending >= journalMaxPending {
		return fmt.Errorf("%w: %d audit records are waiting to be indexed into the database (last error: %v)", storage.ErrUnavailable, a.npending, a.lastErr)
	}
	for _, r := range recs {
		if _, ok := a.heads[r.Chain]; !ok {
			if err := a.takeChain(r.Chain); err != nil {
				return err
			}
		}
	}
	// Link and encode in one pass: the encoding the hash is taken over is
	// the one stored.
	heads := make(map[string]storage.ChainHead, 1)
	entries := make([]entry, len(recs))
	payload := make([]byte, frameHeader, frameHeader+len(recs)*512)
	enc := a.enc
	for i, r := range recs {
		h, ok := heads[r.Chain]
		if !ok {
			h = a.heads[r.Chain]
		}
		heads[r.Chain], enc = storage.LinkRecord(r, h, enc[:0])
		start := len(payload)
		payload = appendEntry(payload, enc, r.Hash)
		entries[i] = entry{chain: r.Chain, seq: r.Seq, timeNS: r.Time.UnixNano(), data: payload[start:len(payload):len(payload)]}
	}
	a.enc = enc[:0]
	if err := a.write(payload, sync); err != nil {
		for _, r := range recs {
			r.Seq, r.PrevHash, r.Hash = 0, nil, nil
		}
		return fmt.Errorf("%w: write audit journal: %w", storage.ErrUnavailable, err)
	}
	for chain, h := range heads {
		a.heads[chain] = h
	}
	a.pending = append(a.pending, pendingBatch{file: a.cur.no, entries: entries})
	a.npending += len(entries)
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return nil
}

// write appends one frame (payload starts with room for its header) to the
// current file, rotating first when it is full. On failure the file is cut
// back to its previous length and abandoned, so no torn frame stays in front
// of later ones.
func (a *auditLog) write(frame []byte, sync bool) error {
	if len(frame)-frameHeader > maxFrameBytes {
		return fmt.Errorf("audit batch of %d bytes is too large", len(frame))
	}
	if a.cur == nil || (a.cur.size > 0 && a.cur.size+int64(len(frame)) > a.cur.cap) {
		if err := a.rotate(); err != nil {
			return err
		}
	}
	binary.BigEndian.PutUint32(frame[0:4], uint32(len(frame)-frameHeader))
	binary.BigEndian.PutUint32(frame[4:8], crc32.Checksum(frame[frameHeader:], crcTable))
	j := a.cur
	_, err := j.f.WriteAt(frame, j.size) // a frame larger than the file extends it
	if err == nil && sync {
		err = fdatasync(j.f)
	}
	if err != nil {
		if terr := j.f.Truncate(j.size); terr != nil {
			err = errors.Join(err, fmt.Errorf("cut %s back to %d bytes: %w", j.path, j.size, terr))
		}
		a.retire()
		return err
	}
	j.size += int64(len(frame))
	if !sync {
		a.unsynced = true
		select {
		case a.syncKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// rotate starts writing the spare journal file, or a new one when no spare
// is ready (the old one stays until its records are indexed), and asks for
// the next spare.
func (a *auditLog) rotate() error {
	a.retire()
	j := a.spare
	a.spare = nil
	if j == nil {
		var err error
		if j, err = newJournalFile(a.dir, a.growCap()); err != nil {
			return err
		}
	}
	a.nextNo++
	j.no = a.nextNo
	a.cur = j
	select {
	case a.spareKick <- struct{}{}:
	default:
	}
	return nil
}

// growCap returns the size for the next journal file and doubles it for the
// one after, up to journalFileBytes. a.mu is held.
func (a *auditLog) growCap() int64 {
	c := max(a.nextCap, journalFirstBytes)
	a.nextCap = min(2*c, journalFileBytes)
	return c
}

// newJournalFile creates, locks and zero-fills a journal file of size bytes
// in dir, and makes the file and its directory entry durable.
func newJournalFile(dir string, size int64) (*journalFile, error) {
	path := filepath.Join(dir, fmt.Sprintf("journal-%020d-%d.log", time.Now().UnixNano(), os.Getpid()))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*journalFile, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("prepare audit journal %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fail(fmt.Errorf("lock: %w", err))
	}
	for off := int64(0); off < size; off += int64(len(zeroChunk)) {
		if _, err := f.WriteAt(zeroChunk, off); err != nil {
			return fail(err)
		}
	}
	if err := fdatasync(f); err != nil {
		return fail(err)
	}
	if err := syncFile(dir); err != nil {
		return fail(err)
	}
	return &journalFile{path: path, f: f, cap: size}, nil
}

// runSpare keeps one zero-filled journal file ready, so that rotating never
// waits for one to be written.
func (a *auditLog) runSpare() {
	for {
		select {
		case <-a.spareKick:
		case <-a.stop:
			return
		}
		a.mu.Lock()
		ready := a.spare != nil
		var size int64
		if !ready {
			size = a.growCap()
		}
		a.mu.Unlock()
		if ready {
			continue
		}
		j, err := newJournalFile(a.dir, size)
		if err != nil {
			// rotate makes one itself, and reports what fails then.
			a.log.Warn("prepare the next audit journal file", "err", err)
			continue
		}
		a.mu.Lock()
		if a.spare == nil {
			a.spare, j = j, nil
		}
		a.mu.Unlock()
		if j != nil {
			j.f.Close()
			os.Remove(j.path)
		}
	}
}

// retire stops writing the current file. It is fdatasynced (what os mode
// wrote is on disk before the file can be forgotten) and kept until the
// indexer has stored its records.
func (a *auditLog) retire() {
	if a.cur == nil {
		return
	}
	if err := fdatasync(a.cur.f); err != nil {
		a.log.Error("fdatasync retired audit journal", "file", a.cur.path, "err", err)
	}
	a.retired = append(a.retired, a.cur)
	a.cur = nil
}

// takeChain locks chain for this process and reads its head.
func (a *auditLog) takeChain(chain string) error {
	sum := sha256.Sum256([]byte(chain))
	path := filepath.Join(a.dir, "chain-"+hex.EncodeToString(sum[:8])+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("%w: lock audit chain %q: %w", storage.ErrUnavailable, chain, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: audit chain %q is being written by another process on this database; give each gateway its own replica id", storage.ErrConflict, chain)
		}
		return fmt.Errorf("%w: lock audit chain %q: %w", storage.ErrUnavailable, chain, err)
	}
	var h storage.ChainHead
	err = a.db.QueryRow(`SELECT seq, hash FROM audit_chains WHERE chain = ?`, chain).Scan(&h.Seq, &h.Hash)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		f.Close()
		return fmt.Errorf("%w: read head of audit chain %q: %w", storage.ErrUnavailable, chain, err)
	}
	a.locks[chain] = f
	a.heads[chain] = h
	return nil
}

// index stores everything journaled so far in audit_blocks. Queries call it
// so they see every acknowledged record; the indexer calls it in the
// background.
func (a *auditLog) index(ctx context.Context) error {
	a.indexMu.Lock()
	defer a.indexMu.Unlock()
	a.mu.Lock()
	batches := a.pending
	a.pending = nil
	a.mu.Unlock()
	if len(batches) > 0 {
		entries := a.entries[:0]
		for _, b := range batches {
			entries = append(entries, b.entries...)
		}
		defer func() { clear(entries); a.entries = entries[:0] }() // the records' memory goes with their batches
		err := writeTx(ctx, a.db, func(tx *sql.Tx) error { return insertBlocks(ctx, tx, entries, &a.block) })
		if err != nil {
			err = fmt.Errorf("%w: index %d journaled audit records: %w", storage.ErrUnavailable, len(entries), err)
			a.mu.Lock()
			a.pending = append(batches, a.pending...)
			a.lastErr = err
			a.mu.Unlock()
			return err
		}
		a.mu.Lock()
		a.npending -= len(entries)
		a.lastErr = nil
		a.mu.Unlock()
	}
	a.removeIndexedFiles()
	return nil
}

// removeIndexedFiles deletes retired journal files none of whose records
// still wait for the indexer. The indexer commits without fsync (its records
// are safe in the journal), so the WAL is fsynced first: what the files held
// is then on disk in the database.
func (a *auditLog) removeIndexedFiles() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.retired) == 0 || (len(a.pending) > 0 && a.pending[0].file <= a.retired[0].no) {
		return
	}
	if err := syncFile(a.dbPath + "-wal"); err != nil {
		a.log.Warn("fsync the database WAL before removing indexed audit journals; keeping them", "err", err)
		return
	}
	keep := a.retired[:0]
	for _, j := range a.retired {
		waiting := len(a.pending) > 0 && a.pending[0].file <= j.no
		if waiting {
			keep = append(keep, j)
			continue
		}
		j.f.Close()
		if err := os.Remove(j.path); err != nil {
			a.log.Warn("remove indexed audit journal", "file", j.path, "err", err)
		}
	}
	clear(a.retired[len(keep):])
	a.retired = keep
}

// pacer waits for signals on kick, letting at most one through per
// interval.
type pacer struct {
	kick, stop <-chan struct{}
	interval   time.Duration
	last       time.Time
}

// wait returns true after the next signal, no sooner than interval after the
// previous return, and false once stop is closed.
func (p *pacer) wait() bool {
	select {
	case <-p.kick:
	case <-p.stop:
		return false
	}
	if d := time.Until(p.last.Add(p.interval)); d > 0 {
		select {
		case <-time.After(d):
		case <-p.stop:
			return false
		}
	}
	p.last = time.Now()
	return true
}

func (a *auditLog) runIndexer() {
	p := pacer{kick: a.kick, stop: a.stop, interval: a.interval}
	for p.wait() {
		if err := a.index(context.Background()); err != nil {
			a.log.Error("audit records are journaled but not yet indexed; retrying", "err", err)
			select {
			case a.kick <- struct{}{}:
			default:
			}
			select {
			case <-time.After(time.Second):
			case <-a.stop:
				return
			}
		}
	}
}

// runSync fdatasyncs what os-mode appends wrote, at most once per interval.
// On stop, close's retire fdatasyncs what is left.
func (a *auditLog) runSync(interval time.Duration) {
	p := pacer{kick: a.syncKick, stop: a.stop, interval: interval}
	for p.wait() {
		a.mu.Lock()
		j, need := a.cur, a.unsynced
		a.unsynced = false
		var fd *os.File
		if j != nil && need {
			// A duplicate descriptor lets the fdatasync run without
			// holding mu (appends continue) even if the file is retired
			// meanwhile.
			if nfd, err := syscall.Dup(int(j.f.Fd())); err == nil {
				fd = os.NewFile(uintptr(nfd), j.path)
			} else {
				a.unsynced = true
			}
		}
		a.mu.Unlock()
		if fd == nil {
			continue
		}
		if err := fdatasync(fd); err != nil {
			a.log.Error("fdatasync audit journal; records written in os mode are not yet on disk", "file", j.path, "err", err)
		} else {
			a.syncs.Add(1)
		}
		fd.Close()
	}
}

// close indexes what is left, removes the journal files and releases the
// chain locks.
func (a *auditLog) close(ctx context.Context) error {
	close(a.stop)
	a.wg.Wait()
	a.mu.Lock()
	a.retire()
	if a.spare != nil { // never written: nothing to index
		a.spare.f.Close()
		os.Remove(a.spare.path)
		a.spare = nil
	}
	a.mu.Unlock()
	err := a.index(ctx)
	a.mu.Lock()
	for _, f := range a.locks {
		f.Close()
	}
	clear(a.locks)
	for _, j := range a.retired {
		j.f.Close() // left on disk only if indexing failed: the next open indexes them
	}
	a.retired = nil
	a.mu.Unlock()
	return errors.Join(err, a.db.Close())
}

// recover indexes the records of journal files that no live process holds.
func (a *auditLog) recover(ctx context.Context) error {
	names, err := filepath.Glob(filepath.Join(a.dir, "journal-*.log"))
	if err != nil {
		return fmt.Errorf("audit journal: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		f, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("audit journal: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // its process is alive and indexes it itself
			continue
		}
		err = a.recoverFile(ctx, f, name)
		f.Close()
		if err != nil {
			return err
		}
		if err := os.Remove(name); err != nil {
			return fmt.Errorf("audit journal: %w", err)
		}
	}
	return nil
}

func (a *auditLog) recoverFile(ctx context.Context, f *os.File, name string) error {
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("audit journal %s: %w", name, err)
	}
	heads := map[string]int64{}
	headOf := func(chain string) (int64, error) {
		if h, ok := heads[chain]; ok {
			return h, nil
		}
		var h int64
		err := a.db.QueryRowContext(ctx, `SELECT seq FROM audit_chains WHERE chain = ?`, chain).Scan(&h)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		heads[chain] = h
		return h, nil
	}
	var entries []entry
	off := 0
	for off < len(data) {
		if len(data)-off < frameHeader {
			break
		}
		n := int(binary.BigEndian.Uint32(data[off:]))
		sum := binary.BigEndian.Uint32(data[off+4:])
		if n == 0 && sum == 0 && allZero(data[off:]) {
			off = len(data) // the unused, zero-filled rest of the file
			break
		}
		if n > len(data)-off-frameHeader || crc32.Checksum(data[off+frameHeader:off+frameHeader+n], crcTable) != sum {
			break
		}
		_, err := decodeEntries(data[off+frameHeader:off+frameHeader+n], func(r *storage.AuditRecord, raw []byte) error {
			h, err := headOf(r.Chain)
			if err != nil {
				return err
			}
			if r.Seq > h {
				entries = append(entries, entry{chain: r.Chain, seq: r.Seq, timeNS: r.Time.UnixNano(), data: raw})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("audit journal %s at offset %d: %w", name, off, err)
		}
		off += frameHeader + n
	}
	if off < len(data) {
		a.log.Warn("ignoring the end of an audit journal: a torn or damaged frame, never acknowledged", "file", name, "offset", off, "bytes", len(data)-off)
	}
	if len(entries) > 0 {
		if err := writeTx(ctx, a.db, func(tx *sql.Tx) error { return insertBlocks(ctx, tx, entries, nil) }); err != nil {
			return fmt.Errorf("audit journal %s: index %d records: %w", name, len(entries), err)
		}
		a.log.Info("indexed audit records journaled by a process that stopped", "file", name, "records", len(entries))
	}
	return nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeTx runs fn in a write transaction on db and commits it.
func writeTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// syncFile fsyncs the file or directory at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
