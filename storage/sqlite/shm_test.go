package sqlite

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/storage"
)

// needShm skips a test where DefaultSharedMemoryDir is not a tmpfs.
func needShm(t *testing.T) {
	t.Helper()
	if err := checkTmpfs(DefaultSharedMemoryDir); err != nil {
		t.Skipf("no shared-memory journal copies on this machine: %v", err)
	}
}

// shmCopies lists the shared-memory copies of the store's journal.
func shmCopies(t *testing.T, s *Store) []string {
	t.Helper()
	copies, err := filepath.Glob(filepath.Join(DefaultSharedMemoryDir, s.hub.audit.shmPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return copies
}

// TestOSModeAppendsInlineIntoSharedMemory: in os mode a record is appended
// inline into the journal file's shared-memory copy, which holds every frame
// at once; the flusher copies them to the file within its interval. Sync
// mode, a store with shm=off and a signed checkpoint never go inline.
func TestOSModeAppendsInlineIntoSharedMemory(t *testing.T) {
	needShm(t)
	t0 := time.Now()
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	if done, err := s.TryAppendAudit([]*storage.AuditRecord{testRecord("c", 0, t0)}); done || err != nil {
		t.Fatalf("first append to a chain went inline (%v, %v): taking the chain must wait", done, err)
	}
	if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("c", 0, t0)}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 20; i++ {
		r := testRecord("c", i, t0)
		// A background goroutine may hold the journal's lock for a moment:
		// the append then declines rather than wait, and is tried again.
		var done bool
		var err error
		for try := 0; !done && err == nil && try < 1000; try++ {
			if done, err = s.TryAppendAudit([]*storage.AuditRecord{r}); !done {
				if r.Seq != 0 || r.Hash != nil {
					t.Fatalf("a declined append changed the record: %+v", r)
				}
				time.Sleep(time.Millisecond)
			}
		}
		if !done || err != nil {
			t.Fatalf("append %d not inline: %v, %v", i, done, err)
		}
		if r.Seq != int64(i+1) || len(r.Hash) != storage.HashSize {
			t.Fatalf("inline append did not link the record: seq %d, hash %x", r.Seq, r.Hash)
		}
	}
	sealed := testRecord("c", 20, t0)
	sealed.Seal = func(storage.ChainHead) []byte { return []byte(`{}`) }
	if done, _ := s.TryAppendAudit([]*storage.AuditRecord{sealed}); done {
		t.Fatal("a sealed record went inline")
	}

	copies := shmCopies(t, s)
	if len(copies) == 0 {
		t.Fatal("no shared-memory copy of the journal")
	}
	a := s.hub.audit
	a.mu.Lock()
	cur, size := a.cur, a.cur.size
	a.mu.Unlock()
	mem, err := os.ReadFile(filepath.Join(DefaultSharedMemoryDir, a.shmPrefix+filepath.Base(cur.path)))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	end, clean, err := walkFrames(mem, cur.seed, func(payload []byte, _ int) error {
		k, err := decodeEntries(payload, func(*storage.AuditRecord, []byte) error { return nil })
		n += k
		return err
	})
	if err != nil || !clean || int64(end) != size || n != 20 {
		t.Fatalf("the copy holds %d records in %d bytes (clean %v, %v); want 20 in %d", n, end, clean, err, size)
	}
	// The flusher brings the file up to the copy.
	for start := time.Now(); ; time.Sleep(time.Millisecond) {
		file, err := os.ReadFile(cur.path)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(file[:size], mem[:size]) {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the journal file never caught up with its shared-memory copy")
		}
	}
	rep, err := s.VerifyAudit(t.Context(), "c")
	if err != nil || !rep.OK || rep.Records != 20 {
		t.Fatalf("VerifyAudit = %+v, %v", rep, err)
	}

	for _, o := range []Options{{Durability: storage.DurabilitySync}, {Durability: storage.DurabilityOS, SharedMemoryDir: SharedMemoryOff}} {
		o.Path = filepath.Join(t.TempDir(), "aa.db")
		other := openTest(t, o)
		if err := other.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("c", 0, t0)}); err != nil {
			t.Fatal(err)
		}
		if done, _ := other.TryAppendAudit([]*storage.AuditRecord{testRecord("c", 1, t0)}); done {
			t.Errorf("%+v: appended inline", o)
		}
		if c := shmCopies(t, other); len(c) != 0 {
			t.Errorf("%+v: shared-memory copies %v", o, c)
		}
	}
}

// TestSharedMemoryDirMustBeTmpfs: a configured directory that is not a
// tmpfs is refused by name; the default falls back to writing the file.
func TestSharedMemoryDirMustBeTmpfs(t *testing.T) {
	dir := t.TempDir() // a disk filesystem on the build machines
	if checkTmpfs(dir) == nil {
		t.Skipf("%s is a tmpfs here", dir)
	}
	_, err := Open(t.Context(), Options{Path: filepath.Join(dir, "aa.db"), Durability: storage.DurabilityOS, SharedMemoryDir: dir, Logger: discard()})
	if err == nil || !strings.Contains(err.Error(), dir+" is not a tmpfs") {
		t.Fatalf("Open with shm=%s: %v", dir, err)
	}
	if _, err := Open(t.Context(), Options{Path: filepath.Join(dir, "aa.db"), Durability: storage.DurabilityOS, SharedMemoryDir: filepath.Join(dir, "missing"), Logger: discard()}); err == nil {
		t.Fatal("Open with a missing shared-memory directory succeeded")
	}
}

// TestBatchLargerThanJournalFileLeavesSharedMemory: a batch larger than a
// fresh journal file goes to the file alone, whose copy is dropped; the
// records after it are appended to the file, and all verify.
func TestBatchLargerThanJournalFileLeavesSharedMemory(t *testing.T) {
	needShm(t)
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	t0 := time.Now()
	var big []*storage.AuditRecord
	for i := range 800 {
		r := testRecord("big", i, t0)
		r.Payload = []byte(`{"p":"` + strings.Repeat("y", 2000) + `"}`) // 1.6 MB in all: more than the first 1 MiB file
		big = append(big, r)
	}
	if err := s.AppendAudit(t.Context(), big); err != nil {
		t.Fatal(err)
	}
	a := s.hub.audit
	a.mu.Lock()
	if a.cur.shm != nil || a.cur.size <= a.cur.cap {
		t.Errorf("journal %s: copy %v, %d bytes in %d", a.cur.path, a.cur.shm != nil, a.cur.size, a.cur.cap)
	}
	a.mu.Unlock()
	if c := shmCopies(t, s); len(c) > 1 { // at most the spare's
		t.Errorf("copies left: %v", c)
	}
	for i := 800; i < 810; i++ {
		if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("big", i, t0)}); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.VerifyAudit(t.Context(), "big")
	if err != nil || !rep.OK || rep.Records != 810 {
		t.Fatalf("VerifyAudit = %+v, %v", rep, err)
	}
}

// frame returns a journal frame holding payload, checksummed from seed
// (frameSum; 0 for a file written before names were part of it).
func frame(seed uint32, payload string) []byte {
	f := make([]byte, frameHeader, frameHeader+len(payload))
	f = append(f, payload...)
	binary.BigEndian.PutUint32(f[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(f[4:8], frameSum(seed, f[frameHeader:]))
	return f
}

func TestPickJournal(t *testing.T) {
	zeros := make([]byte, 64)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	seed := frameSeed("journal-00000000000000000001-1.log")
	a, b, c := frame(seed, "first"), frame(seed, "second"), frame(seed, "third")
	file := join(a, b, zeros)
	// A recycled file: its frames end with a zero header, and frames of its
	// earlier life (checksummed under its earlier name) follow.
	earlier := frameSeed("journal-00000000000000000000-1.log")
	recycled := join(a, endOfFrames[:], frame(earlier, "old one"), frame(earlier, "old two"))
	// The process died between the flusher's two writes: the frames, then
	// the zero header after them. The earlier life's frame that follows
	// starts exactly where the header was to go; only its checksum, made
	// under the earlier name, tells that it is not this file's.
	unended := join(a, frame(earlier, "old two"))
	cases := []struct {
		name     string
		file     []byte
		copy     []byte
		fromCopy bool
		mismatch bool
	}{
		{"no copy", file, nil, false, false},
		{"the copy holds more frames", file, join(a, b, c, zeros), true, false},
		{"the copy holds the same frames", file, join(a, b, zeros), true, false},
		{"the copy holds fewer frames", file, join(a, zeros), false, true},
		{"the copy holds other frames", file, join(a, c, c, zeros), false, true},
		{"the copy is empty", file, []byte{}, false, true},
		{"recycled file, the copy holds more frames", recycled, join(a, b, c, zeros), true, false},
		{"recycled file, the copy holds its frames", recycled, join(a, zeros), true, false},
		{"recycled file, the copy holds other frames", recycled, join(c, zeros), false, true},
		{"recycled file without the header after its frames, the copy holds more", unended, join(a, b, c, zeros), true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, fromCopy, mismatch := pickJournal(tc.file, tc.copy, seed)
			if fromCopy != tc.fromCopy || (mismatch != nil) != tc.mismatch {
				t.Fatalf("fromCopy %v, mismatch %v; want %v, %v", fromCopy, mismatch, tc.fromCopy, tc.mismatch)
			}
			want := tc.file
			if tc.fromCopy {
				want = tc.copy
			}
			if !bytes.Equal(data, want) {
				t.Fatal("picked the wrong bytes")
			}
		})
	}
}

// TestOrphanedSharedMemoryCopiesRemoved: opening the database removes its
// copies whose journal file is gone, and leaves other databases' alone.
func TestOrphanedSharedMemoryCopiesRemoved(t *testing.T) {
	needShm(t)
	path := filepath.Join(t.TempDir(), "aa.db")
	if err := os.MkdirAll(path+"-audit", 0o700); err != nil {
		t.Fatal(err)
	}
	prefix, err := shmPrefix(path + "-audit")
	if err != nil {
		t.Fatal(err)
	}
	otherDir := t.TempDir()
	otherPrefix, err := shmPrefix(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(DefaultSharedMemoryDir, prefix+"journal-00000000000000000001-1.log")
	foreign := filepath.Join(DefaultSharedMemoryDir, otherPrefix+"journal-00000000000000000001-1.log")
	for _, p := range []string{orphan, foreign} {
		if err := os.WriteFile(p, frame(frameSeed(filepath.Base(orphan)), "x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.Remove(foreign) })
	openTest(t, Options{Path: path, Durability: storage.DurabilityOS})
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphaned copy still there: %v", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("another database's copy was touched: %v", err)
	}
}

// TestSharedMemoryCopiesReused: a journal file's copy is reused for a later
// file once the file is indexed and removed, so a long run keeps reusing a
// few copies (whose pages are already the process's) instead of creating
// one per file; every record verifies across the reused copies.
func TestSharedMemoryCopiesReused(t *testing.T) {
	needShm(t)
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	a := s.hub.audit
	t0 := time.Now()
	payload := []byte(`{"p":"` + strings.Repeat("z", 4000) + `"}`)
	files := map[string]bool{}
	n := 0
	for range 200 { // about 40 MB: files of 1, 2, 4, 8 and then 16 MiB
		appendBatch(t, s, "reuse", n, 50, t0, payload) // removes retired files now, keeping their copies
		n += 50
		a.mu.Lock()
		files[a.cur.path] = true
		a.mu.Unlock()
	}
	created := a.shmCreated.Load()
	if len(files) < 5 || created >= int64(len(files)) {
		t.Fatalf("%d copies created for %d journal files; want copies reused", created, len(files))
	}
	if c := shmCopies(t, s); len(c) > 3 {
		t.Fatalf("%d copies exist: %v", len(c), c)
	}
	rep, err := s.VerifyAudit(t.Context(), "reuse")
	if err != nil || !rep.OK || rep.Records != int64(n) {
		t.Fatalf("VerifyAudit = %+v, %v", rep, err)
	}
	t.Logf("%d journal files, %d copies created", len(files), created)
}
