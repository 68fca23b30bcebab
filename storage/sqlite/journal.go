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
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agent-assembly/agent-assembly/internal/monoclock"
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
// CRC-32C of the file's name followed by the payload (frameSum), then the
// payload: the batch's entries (see appendEntry). On open, files whose lock
// is free were left by a process that died: their records not yet in
// audit_blocks are indexed and the files removed. A torn last frame (the
// write was never acknowledged) is ignored. Files written before the name
// was part of the checksum (CRC-32C of the payload alone) are still read:
// a file's first frame tells which (walkFrames).
//
// Each file is written in place into blocks that are already allocated and
// made durable before its first frame: a new file is zero-filled, and a
// full-size file whose records are all indexed is recycled instead (its
// first frame header zeroed, then renamed; a background goroutine keeps one
// such spare ready; sizes double from journalFirstBytes to journalFileBytes,
// so a little-used database keeps small files). An fdatasync then flushes
// data only: the file's size and blocks never change, so the filesystem has
// no metadata to commit, which took a third off fdatasync's latency on the
// build machines. A frame header of zeros ends a file's frames; in a
// recycled file, each write leaves one after its frame (the frames of the
// file's earlier life that follow it are checksummed under its earlier name,
// so they cannot pass for this file's even without it).
//
// Each chain is written by one process at a time: the first append to a chain
// takes chain-<hash>.lock in the same directory, and a second process that
// tries to append to it is refused (give each gateway its own replica id).

const (
	journalFirstBytes = 1 << 20   // the first journal file's size; each next one doubles
	journalFileBytes  = 16 << 20  // up to this size
	journalMaxPending = 256 << 10 // records journaled but not indexed before appends are refused
	// indexInterval is the indexer's pace under load: larger transactions
	// and blocks cost less per record (BenchmarkIndexAudit s2 with 100, 300
	// and 1,000 records per index: 5.4–6.2, 3.2–3.4 and 2.2–2.5 µs of CPU
	// and 153, 115 and 94 database bytes per record), and at 20,000
	// checks/s 50 ms makes blocks of about 1,000 records (20 ms: 400).
	// Queries index what is pending first, so only other processes on the
	// same file see records this much later.
	indexInterval = 50 * time.Millisecond
	frameHeader   = 8
	maxFrameBytes = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// endOfFrames is a zero frame header: it ends a file's frames.
var endOfFrames [frameHeader]byte

// frameSeed is what the checksums of a journal file's frames start from:
// the CRC-32C of the file's base name. A recycled file gets a new name, so
// the frames of its earlier life fail their checksums in its new one.
func frameSeed(base string) uint32 {
	return crc32.Checksum([]byte(base), crcTable)
}

// frameSum is a frame's checksum: the CRC-32C of its file's base name
// (seed) followed by its payload. Seed 0 gives the CRC-32C of the payload
// alone, the checksum of files written before names were part of it.
func frameSum(seed uint32, payload []byte) uint32 {
	return crc32.Update(seed, crcTable, payload)
}

// testHooks lets this package's crash test stop the background flusher and
// indexer, so that acknowledged records are only in the journal's
// shared-memory copy when the process dies.
var testHooks struct{ noFlush, noIndex bool }

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
	seed uint32 // frameSeed of the file's name
	f    *os.File
	size int64 // bytes of frames written
	cap  int64 // bytes frames may fill (allocated and durable)
	// recycled files hold an earlier life's bytes beyond size: each write
	// ends with a zero frame header, which cap leaves room for.
	recycled bool
	// shm, in DurabilityOS, is the file's copy in shared memory (shm.go):
	// frames are written there and copied to f by the flusher. It is set
	// and cleared holding both mu and shmMu.
	shm    *shmCopy
	synced int64 // with shm: bytes copied to f and fdatasynced
}

// auditLog is the journal and indexer that every Store on one file in this
// process shares (through the hub).
type auditLog struct {
	dir string
	db  *sql.DB // the indexer's own connection (synchronous=NORMAL: see removeIndexedFiles)
	// shmDir, when set, is where journal files get their shared-memory
	// copies (DurabilityOS); shmDirs are where recovery looks for copies
	// left by dead processes; shmPrefix names this directory's copies.
	shmDir    string
	shmDirs   []string
	shmPrefix string
	// shmMu keeps a copy mapped while the flusher reads it. It may be
	// taken while holding mu, never the other way round.
	shmMu sync.Mutex
	// spareShm is a removed file's copy kept for the next file (shm.go),
	// under poolMu.
	poolMu     sync.Mutex
	spareShm   *shmCopy
	spareFile  *keptFile    // under poolMu: a full-size file kept for reuse
	closing    bool         // under poolMu: copies and files are removed, not kept
	shmCreated atomic.Int64 // copies created rather than reused, for tests
	recycled   atomic.Int64 // journal files recycled rather than created, for tests

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
	// firstUnsynced is when unsynced was last set (monoclock): the oldest
	// write the next background flush covers.
	firstUnsynced time.Duration
	lastErr       error

	syncs atomic.Int64 // background fdatasyncs done, for tests
	// window is how soon after its write DurabilityOS promises a record on
	// disk: twice the flush interval (the flusher starts within one, and its
	// fdatasync must end within the other).
	window time.Duration
	// lateFlushes counts background flushes that ended more than window
	// after the oldest write they covered; lastLateLog is when
	// one was last logged (monoclock; the flusher's own).
	lateFlushes atomic.Int64
	lastLateLog time.Duration

	indexMu sync.Mutex
	// Reused across batches: enc under mu (append); entries and w under
	// indexMu (index). w is how the indexer stores blocks (blockS2;
	// blockRaw where a benchmark compares the two), its statements
	// prepared at the first index.
	enc     []byte
	entries []entry
	w       blockWriter

	kick      chan struct{}
	syncKick  chan struct{}
	spareKick chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup
}

// journalOptions are the parts of Options the journal uses.
type journalOptions struct {
	flush time.Duration // DurabilityOS's flush interval
	// shm is Options.SharedMemoryDir; useShm says whether appends use it
	// (DurabilityOS), otherwise it is only searched by recovery.
	shm    string
	useShm bool
}

// openAuditLog opens the journal directory of the database at dbPath,
// indexes what dead processes left there, and starts the indexer and the
// background fdatasync (every flush at most).
func openAuditLog(ctx context.Context, dbPath string, log *slog.Logger, o journalOptions) (*auditLog, error) {
	a := &auditLog{
		dir: dbPath + "-audit", dbPath: dbPath, log: log.With("component", "audit-journal"), interval: indexInterval,
		window: 2 * o.flush,
		heads:  make(map[string]storage.ChainHead), locks: make(map[string]*os.File), w: blockWriter{encoding: blockS2},
		kick: make(chan struct{}, 1), syncKick: make(chan struct{}, 1), spareKick: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	if err := a.setupShm(o.shm, o.useShm); err != nil {
		return nil, err
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
	if !testHooks.noIndex {
		a.wg.Go(a.runIndexer)
	}
	if !testHooks.noFlush {
		a.wg.Go(func() { a.runSync(o.flush) })
	}
	a.wg.Go(a.runSpare)
	return a, nil
}

// append links recs, journals them as one frame and makes them durable as
// asked (fdatasync when sync; otherwise the background flush within its
// interval). Nothing is changed when it fails.
func (a *auditLog) append(recs []*storage.AuditRecord, sync bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, err := a.appendLocked(recs, sync, false)
	return err
}

// tryAppend is append in DurabilityOS when it needs no waiting: the journal
// is free, the current file has a shared-memory copy with room for the
// frame, and every chain is already held. Otherwise it reports false, having
// changed nothing.
func (a *auditLog) tryAppend(recs []*storage.AuditRecord) (bool, error) {
	if !a.mu.TryLock() {
		return false, nil
	}
	defer a.mu.Unlock()
	return a.appendLocked(recs, false, true)
}

// chainHeads is the heads a batch moves, usually of one chain.
type chainHeads []chainHeadOf

// chainHeadOf is one chain's head in chainHeads.
type chainHeadOf struct {
	chain string
	head  storage.ChainHead
}

func (c chainHeads) get(chain string) (storage.ChainHead, bool) {
	for _, h := range c {
		if h.chain == chain {
			return h.head, true
		}
	}
	return storage.ChainHead{}, false
}

// set returns c with chain's head set to head.
func (c chainHeads) set(chain string, head storage.ChainHead) chainHeads {
	for i := range c {
		if c[i].chain == chain {
			c[i].head = head
			return c
		}
	}
	return append(c, chainHeadOf{chain, head})
}

// appendLocked is append with a.mu held; inline is tryAppend's: it reports
// false instead of waiting.
func (a *auditLog) appendLocked(recs []*storage.AuditRecord, sync, inline bool) (bool, error) {
	if a.npending >= journalMaxPending {
		return true, fmt.Errorf("%w: %d audit records are waiting to be indexed into the database (last error: %v)", storage.ErrUnavailable, a.npending, a.lastErr)
	}
	if inline && (a.cur == nil || a.cur.shm == nil) {
		return false, nil
	}
	for _, r := range recs {
		if inline && r.Seal != nil {
			return false, nil // a signed checkpoint: Seal rewrites its payload, which a retry could not undo
		}
		if _, ok := a.heads[r.Chain]; !ok {
			if inline {
				return false, nil
			}
			if err := a.takeChain(r.Chain); err != nil {
				return true, err
			}
		}
	}
	// Link and encode in one pass: the encoding the hash is taken over is
	// the one stored.
	var one [1]chainHeadOf // a batch is nearly always of one chain: no allocation
	heads := chainHeads(one[:0])
	entries := make([]entry, len(recs))
	payload := make([]byte, frameHeader, frameHeader+len(recs)*512)
	enc := a.enc
	for i, r := range recs {
		h, ok := heads.get(r.Chain)
		if !ok {
			h = a.heads[r.Chain]
		}
		h, enc = storage.LinkRecord(r, h, enc[:0])
		heads = heads.set(r.Chain, h)
		start := len(payload)
		payload = appendEntry(payload, enc, r.Hash)
		entries[i] = entry{chain: r.Chain, seq: r.Seq, timeNS: r.Time.UnixNano(), data: payload[start:len(payload):len(payload)]}
	}
	a.enc = enc[:0]
	unlink := func() {
		for _, r := range recs {
			r.Seq, r.PrevHash, r.Hash = 0, nil, nil
		}
	}
	if inline && a.cur.size+int64(len(payload)) > a.cur.cap {
		unlink() // the file is full: rotating is the writer's work
		return false, nil
	}
	if err := a.write(payload, sync); err != nil {
		unlink()
		return true, fmt.Errorf("%w: write audit journal: %w", storage.ErrUnavailable, err)
	}
	for _, h := range heads {
		a.heads[h.chain] = h.head
	}
	a.pending = append(a.pending, pendingBatch{file: a.cur.no, entries: entries})
	a.npending += len(entries)
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return true, nil
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
	j := a.cur
	binary.BigEndian.PutUint32(frame[0:4], uint32(len(frame)-frameHeader))
	binary.BigEndian.PutUint32(frame[4:8], frameSum(j.seed, frame[frameHeader:]))
	if j.shm != nil && j.size+int64(len(frame)) > j.cap {
		// Only an empty file gets a frame larger than itself: the file
		// alone holds it, and what follows.
		a.dropShm(j)
	}
	if j.shm != nil {
		return a.writeShm(j, frame, sync)
	}
	n := int64(len(frame))
	if j.recycled {
		frame = append(frame, endOfFrames[:]...)
	}
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
	j.size += n
	if !sync {
		a.kickSync()
	}
	return nil
}

// kickSync marks the current file as holding unsynced bytes and wakes the
// flusher, without waiting. Called with mu held.
func (a *auditLog) kickSync() {
	if !a.unsynced {
		a.firstUnsynced = monoclock.Now()
	}
	a.unsynced = true
	select {
	case a.syncKick <- struct{}{}:
	default:
	}
}

// writeShm writes frame to j's shared-memory copy and, when sync, flushes
// the copy to the file. On failure the frame is erased from the copy, the
// file is cut back to the frames before it, and the file is abandoned.
func (a *auditLog) writeShm(j *journalFile, frame []byte, sync bool) error {
	start := j.size
	copy(j.shm.mem[start:], frame)
	j.size += int64(len(frame))
	if !sync {
		a.kickSync()
		return nil
	}
	err := a.flushShm(j)
	if err != nil {
		clear(j.shm.mem[start:j.size])
		j.size = start
		if terr := j.f.Truncate(start); terr != nil {
			err = errors.Join(err, fmt.Errorf("cut %s back to %d bytes: %w", j.path, start, terr))
		}
		a.retire()
	}
	return err
}

// flushShm copies what j's shared-memory copy holds beyond the file's
// synced part to the file and fdatasyncs it. a.mu is held.
func (a *auditLog) flushShm(j *journalFile) error {
	if j.synced >= j.size {
		return nil
	}
	to := j.size
	if err := writeFrames(j, j.shm.mem[j.synced:to], j.synced); err != nil {
		return err
	}
	if err := fdatasync(j.f); err != nil {
		return err
	}
	j.synced = to
	return nil
}

// writeFrames writes frames, copied from j's shared-memory copy, to j's file
// at off, followed by a zero frame header when j is recycled.
func writeFrames(j *journalFile, frames []byte, off int64) error {
	if _, err := j.f.WriteAt(frames, off); err != nil {
		return err
	}
	if j.recycled {
		if _, err := j.f.WriteAt(endOfFrames[:], off+int64(len(frames))); err != nil {
			return err
		}
	}
	return nil
}

// dropShm writes j's shared-memory copy to the file and removes the copy;
// the file is written directly from then on. a.mu is held.
func (a *auditLog) dropShm(j *journalFile) {
	if err := a.flushShm(j); err != nil {
		a.log.Error("flush the audit journal's shared-memory copy", "file", j.path, "err", err)
	}
	a.shmMu.Lock()
	defer a.shmMu.Unlock()
	if err := j.shm.remove(); err != nil {
		a.log.Warn("remove the audit journal's shared-memory copy", "copy", j.shm.path, "err", err)
	}
	j.shm = nil
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
		if j, err = a.newJournalFile(a.growCap()); err != nil {
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

// newJournalFile recycles the kept journal file when it has size bytes, or
// else creates, locks and zero-fills one; either way the file and its
// directory entry are durable. It gives the file a shared-memory copy when
// the journal uses them (without one, if that fails: the file is then
// written directly).
func (a *auditLog) newJournalFile(size int64) (*journalFile, error) {
	j, err := a.reuseFile(size)
	if err != nil {
		a.log.Warn("recycle an audit journal file; creating a new one", "err", err)
	}
	if j == nil {
		j, err = newJournalFile(a.dir, size)
	}
	if err != nil || a.shmDir == "" {
		return j, err
	}
	if j.shm, err = a.takeShm(filepath.Join(a.shmDir, a.shmPrefix+filepath.Base(j.path))); err != nil {
		a.log.Warn("audit journal file without a shared-memory copy: its appends are written to the file, which costs more CPU", "file", j.path, "err", err)
	}
	return j, nil
}

// newJournalFile creates, locks and zero-fills a journal file of size bytes
// in dir, and makes the file and its directory entry durable.
func newJournalFile(dir string, size int64) (*journalFile, error) {
	path := journalPath(dir)
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
	return &journalFile{path: path, seed: frameSeed(filepath.Base(path)), f: f, cap: size}, nil
}

// journalPath names a new journal file in dir.
func journalPath(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("journal-%020d-%d.log", time.Now().UnixNano(), os.Getpid()))
}

// keptFile is a full-size journal file whose records are all indexed, kept
// open and locked to be recycled as a later file.
type keptFile struct {
	path string
	f    *os.File
}

// keepFile keeps j's file for reuse when it is full-size on disk (not one
// of the first, smaller files, nor extended by one huge frame or cut back
// after a failed write) and none is kept yet, reporting whether it did.
// Nothing may use j any more.
func (a *auditLog) keepFile(j *journalFile) bool {
	if fi, err := j.f.Stat(); err != nil || fi.Size() != journalFileBytes {
		return false
	}
	a.poolMu.Lock()
	defer a.poolMu.Unlock()
	if a.spareFile != nil || a.closing {
		return false
	}
	a.spareFile = &keptFile{path: j.path, f: j.f}
	return true
}

// removeJournal closes and deletes a journal file.
func (a *auditLog) removeJournal(f *os.File, path string) {
	f.Close()
	if err := os.Remove(path); err != nil {
		a.log.Warn("remove audit journal", "file", path, "err", err)
	}
}

// reuseFile recycles the kept file as a new journal file of size bytes, or
// returns nil when size is not the full size or no file is kept. The file's first frame header
// is zeroed and on disk before it is renamed: whichever name a crash leaves
// it under, it holds no frame that recovery could read as this file's (the
// frames of its earlier life are indexed already, and checksummed under
// its earlier name).
func (a *auditLog) reuseFile(size int64) (*journalFile, error) {
	a.poolMu.Lock()
	k := a.spareFile
	if k == nil || size != journalFileBytes {
		a.poolMu.Unlock()
		return nil, nil
	}
	a.spareFile = nil
	a.poolMu.Unlock()
	path := journalPath(a.dir)
	fail := func(at string, err error) (*journalFile, error) {
		k.f.Close()
		os.Remove(at)
		return nil, fmt.Errorf("recycle audit journal %s as %s: %w", k.path, path, err)
	}
	if _, err := k.f.WriteAt(endOfFrames[:], 0); err != nil {
		return fail(k.path, err)
	}
	if err := fdatasync(k.f); err != nil {
		return fail(k.path, err)
	}
	if err := os.Rename(k.path, path); err != nil {
		return fail(k.path, err)
	}
	if err := syncFile(a.dir); err != nil {
		return fail(path, err)
	}
	a.recycled.Add(1)
	return &journalFile{path: path, seed: frameSeed(filepath.Base(path)), f: k.f, cap: size - frameHeader, recycled: true}, nil
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
		j, err := a.newJournalFile(size)
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
			a.discard(j)
		}
	}
}

// discard closes and deletes a journal file and its shared-memory copy,
// the file first (a copy without a file is removed by recover). Nothing may
// use the copy any more.
func (a *auditLog) discard(j *journalFile) {
	if !a.keepFile(j) {
		a.removeJournal(j.f, j.path)
	}
	if j.shm != nil {
		j.shm.used = min(j.size, int64(len(j.shm.mem)))
		a.recycleShm(j.shm)
		j.shm = nil
	}
}

// takeShm returns a zero-filled copy at path: the kept one (cleared, then
// renamed: a crash in between leaves a copy whose journal is gone, which
// recover removes), or a new one. Copies are journalFileBytes long whatever
// their file's size, so that any kept copy fits the next file.
func (a *auditLog) takeShm(path string) (*shmCopy, error) {
	a.poolMu.Lock()
	c := a.spareShm
	a.spareShm = nil
	a.poolMu.Unlock()
	if c == nil {
		a.shmCreated.Add(1)
		return createShm(path, journalFileBytes)
	}
	clear(c.mem[:c.used])
	c.used = 0
	if err := os.Rename(c.path, path); err != nil {
		a.log.Warn("reuse a shared-memory journal copy", "copy", c.path, "err", err)
		c.remove()
		return createShm(path, journalFileBytes)
	}
	c.path = path
	return c, nil
}

// recycleShm keeps c for the next journal file of its size, or removes it
// when one is kept already or the journal is closing. Nothing may use c.
func (a *auditLog) recycleShm(c *shmCopy) {
	a.poolMu.Lock()
	keep := a.spareShm == nil && !a.closing
	if keep {
		a.spareShm = c
	}
	a.poolMu.Unlock()
	if keep {
		return
	}
	if err := c.remove(); err != nil {
		a.log.Warn("remove the audit journal's shared-memory copy", "copy", c.path, "err", err)
	}
}

// retire stops writing the current file. It is fdatasynced (what os mode
// wrote is on disk before the file can be forgotten) and kept until the
// indexer has stored its records.
func (a *auditLog) retire() {
	if a.cur == nil {
		return
	}
	var err error
	if a.cur.shm != nil {
		err = a.flushShm(a.cur)
	} else {
		err = fdatasync(a.cur.f)
	}
	if err != nil {
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
		var err error
		if a.w.stmts == nil {
			a.w.stmts, err = prepareBlockStatements(ctx, a.db, a.w.encoding)
		}
		if err == nil {
			err = writeTx(ctx, a.db, func(tx *sql.Tx) error { return insertBlocks(ctx, tx, entries, &a.w) })
		}
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
	if len(a.retired) == 0 || (len(a.pending) > 0 && a.pending[0].file <= a.retired[0].no) {
		a.mu.Unlock()
		return
	}
	if err := syncFile(a.dbPath + "-wal"); err != nil {
		a.mu.Unlock()
		a.log.Warn("fsync the database WAL before removing indexed audit journals; keeping them", "err", err)
		return
	}
	var done []*journalFile
	keep := a.retired[:0]
	for _, j := range a.retired {
		waiting := len(a.pending) > 0 && a.pending[0].file <= j.no
		if waiting {
			keep = append(keep, j)
			continue
		}
		done = append(done, j)
	}
	clear(a.retired[len(keep):])
	a.retired = keep
	a.mu.Unlock()
	// Not under mu: the flusher may still be reading a copy (shmMu).
	a.shmMu.Lock()
	defer a.shmMu.Unlock()
	for _, j := range done {
		a.discard(j)
	}
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
		j, need, first := a.cur, a.unsynced, a.firstUnsynced
		a.unsynced = false
		if j != nil && need && j.shm != nil {
			from, to := j.synced, j.size
			a.mu.Unlock()
			if a.copyShm(j, from, to) {
				a.noteFlushed(first, monoclock.Now())
			}
			continue
		}
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
			a.noteFlushed(first, monoclock.Now())
		}
		fd.Close()
	}
}

// noteFlushed counts a background flush that ended (at end) more than the
// flush window after the oldest write it covered (first), and logs it at
// most once a minute: the disk, or the flusher's wait for a CPU, broke what
// DurabilityOS promises.
func (a *auditLog) noteFlushed(first, end time.Duration) {
	late := end - first
	if late <= a.window {
		return
	}
	n := a.lateFlushes.Add(1)
	if a.lastLateLog != 0 && end-a.lastLateLog < time.Minute {
		return
	}
	a.lastLateLog = end
	a.log.Warn("an os-mode audit flush ended later than the durability window: the records it covered were on disk late",
		"after_write", late, "window", a.window, "late_flushes", n)
}

// copyShm copies bytes [from, to) of j's shared-memory copy to the file and
// fdatasyncs it, without holding mu: appends go on meanwhile, beyond to. It
// reports whether the bytes are on disk (a failure is logged).
func (a *auditLog) copyShm(j *journalFile, from, to int64) (ok bool) {
	a.shmMu.Lock()
	var err error
	if j.shm != nil && from < to { // else flushed and dropped meanwhile
		if err = writeFrames(j, j.shm.mem[from:to], from); err == nil {
			err = fdatasync(j.f)
		}
	}
	a.shmMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.log.Error("copy the audit journal's shared-memory copy to disk; records written in os mode are not yet on disk", "file", j.path, "err", err)
		if j == a.cur {
			a.unsynced = true // retried at the next kick; retire flushes it too
		}
		return false
	}
	j.synced = max(j.synced, to)
	a.syncs.Add(1)
	return true
}

// setupShm decides where shared-memory copies live (dir: "" for
// DefaultSharedMemoryDir when it is a tmpfs, SharedMemoryOff for none, else a
// tmpfs directory that must exist) and whether appends use them.
func (a *auditLog) setupShm(dir string, use bool) error {
	prefix, err := shmPrefix(a.dir)
	if err != nil {
		return fmt.Errorf("audit journal: %w", err)
	}
	a.shmPrefix = prefix
	explicit := dir != "" && dir != SharedMemoryOff
	if dir == "" {
		dir = DefaultSharedMemoryDir
	}
	// Recovery also looks in the default place: a crash in os mode must
	// not be forgotten because the next start was configured otherwise.
	for _, d := range []string{dir, DefaultSharedMemoryDir} {
		if d != SharedMemoryOff && !slices.Contains(a.shmDirs, d) {
			a.shmDirs = append(a.shmDirs, d)
		}
	}
	if !use || dir == SharedMemoryOff {
		return nil
	}
	if err := checkTmpfs(dir); err != nil {
		if explicit {
			return fmt.Errorf("audit journal shared memory: %w", err)
		}
		a.log.Info("os durability without a shared-memory journal copy: appends are written to the journal file, which costs more CPU", "dir", dir, "reason", err)
		return nil
	}
	a.shmDir = dir
	return nil
}

// close indexes what is left, removes the journal files and releases the
// chain locks.
func (a *auditLog) close(ctx context.Context) error {
	close(a.stop)
	a.wg.Wait()
	if n := a.lateFlushes.Load(); n > 0 {
		a.log.Warn("os-mode audit flushes that ended later than the durability window, since the start", "window", a.window, "late_flushes", n, "flushes", a.syncs.Load())
	}
	a.poolMu.Lock()
	a.closing = true
	if c := a.spareShm; c != nil {
		a.spareShm = nil
		if err := c.remove(); err != nil {
			a.log.Warn("remove the audit journal's shared-memory copy", "copy", c.path, "err", err)
		}
	}
	if k := a.spareFile; k != nil {
		a.spareFile = nil
		a.removeJournal(k.f, k.path)
	}
	a.poolMu.Unlock()
	a.mu.Lock()
	a.retire()
	if a.spare != nil { // never written: nothing to index
		a.discard(a.spare)
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
		if j.shm != nil {
			// Flushed by retire; kept with its file for the next open.
			_ = syscall.Munmap(j.shm.mem)
			j.shm.f.Close()
			j.shm = nil
		}
	}
	a.retired = nil
	a.mu.Unlock()
	a.indexMu.Lock()
	serr := a.w.stmts.close()
	a.w.stmts = nil
	a.indexMu.Unlock()
	return errors.Join(err, serr, a.db.Close())
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
	}
	a.removeOrphanCopies()
	return nil
}

// recoverFile indexes the records of one journal file left by a dead
// process, read from its shared-memory copy when that holds more, and
// removes both.
func (a *auditLog) recoverFile(ctx context.Context, f *os.File, name string) error {
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("audit journal %s: %w", name, err)
	}
	var copyPath string
	var copyData []byte
	for _, dir := range a.shmDirs {
		p := filepath.Join(dir, a.shmPrefix+filepath.Base(name))
		if b, err := os.ReadFile(p); err == nil {
			copyPath, copyData = p, b
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("read the shared-memory copy of an audit journal", "file", name, "copy", p, "err", err)
		}
	}
	data, fromCopy, mismatch := pickJournal(data, copyData, frameSeed(filepath.Base(name)))
	switch {
	case mismatch != nil:
		a.log.Warn("ignoring the shared-memory copy of an audit journal", "file", name, "copy", copyPath, "reason", mismatch)
	case fromCopy:
		a.log.Info("recovering an audit journal from its shared-memory copy", "file", name, "copy", copyPath)
	}
	if err := a.indexJournal(ctx, data, name); err != nil {
		return err
	}
	// The indexer commits without fsync: make the records durable in the
	// database before the journal that holds them goes.
	if err := syncFile(a.dbPath + "-wal"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("audit journal %s: fsync the database WAL: %w", name, err)
	}
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("audit journal: %w", err)
	}
	if copyPath != "" {
		if err := os.Remove(copyPath); err != nil {
			a.log.Warn("remove the shared-memory copy of a recovered audit journal", "copy", copyPath, "err", err)
		}
	}
	return nil
}

// removeOrphanCopies deletes this directory's shared-memory copies whose
// journal file is gone (their process died while removing both).
func (a *auditLog) removeOrphanCopies() {
	for _, dir := range a.shmDirs {
		copies, _ := filepath.Glob(filepath.Join(dir, a.shmPrefix+"journal-*.log"))
		for _, p := range copies {
			name := filepath.Join(a.dir, strings.TrimPrefix(filepath.Base(p), a.shmPrefix))
			if _, err := os.Stat(name); errors.Is(err, fs.ErrNotExist) {
				if err := os.Remove(p); err != nil {
					a.log.Warn("remove an orphaned shared-memory copy of an audit journal", "copy", p, "err", err)
				}
			}
		}
	}
}

// indexJournal indexes the frames of one journal's bytes, from the first
// record its chain does not yet hold.
func (a *auditLog) indexJournal(ctx context.Context, data []byte, name string) error {
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
	off, clean, err := walkFrames(data, frameSeed(filepath.Base(name)), func(payload []byte, at int) error {
		_, err := decodeEntries(payload, func(r *storage.AuditRecord, raw []byte) error {
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
			return fmt.Errorf("audit journal %s at offset %d: %w", name, at, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !clean {
		a.log.Warn("ignoring the end of an audit journal: a torn or damaged frame, never acknowledged", "file", name, "offset", off, "bytes", len(data)-off)
	}
	if len(entries) > 0 {
		if err := writeTx(ctx, a.db, func(tx *sql.Tx) error { return insertBlocks(ctx, tx, entries, &blockWriter{encoding: a.w.encoding}) }); err != nil {
			return fmt.Errorf("audit journal %s: index %d records: %w", name, len(entries), err)
		}
		a.log.Info("indexed audit records journaled by a process that stopped", "file", name, "records", len(entries))
	}
	return nil
}

// walkFrames calls fn with each intact frame's payload and offset, in order,
// and returns where the intact frames end, and whether the rest is clean:
// nothing, or a zero frame header, which ends a file's frames (not a torn or
// damaged frame). seed is the file's frameSeed. A file whose first frame
// checks with seed 0 instead was written before names were part of the
// checksum; such a file is clean only when all that follows its frames is
// zero, as it was zero-filled. fn may be nil.
func walkFrames(data []byte, seed uint32, fn func(payload []byte, at int) error) (end int, clean bool, err error) {
	off := 0
	legacy := false
	for off < len(data) {
		if len(data)-off < frameHeader {
			return off, allZero(data[off:]), nil
		}
		n := int(binary.BigEndian.Uint32(data[off:]))
		sum := binary.BigEndian.Uint32(data[off+4:])
		if n == 0 && sum == 0 && (!legacy || allZero(data[off:])) {
			return off, true, nil
		}
		if n > len(data)-off-frameHeader {
			return off, false, nil
		}
		payload := data[off+frameHeader : off+frameHeader+n]
		if frameSum(seed, payload) != sum {
			if off != 0 || seed == 0 || frameSum(0, payload) != sum {
				return off, false, nil
			}
			legacy, seed = true, 0
		}
		if fn != nil {
			if err := fn(payload, off); err != nil {
				return off, false, err
			}
		}
		off += frameHeader + n
	}
	return off, true, nil
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
