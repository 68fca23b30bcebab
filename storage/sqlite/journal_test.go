package sqlite

import (
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"github.com/agent-assembly/agent-assembly/internal/syncbuf"
	"github.com/agent-assembly/agent-assembly/storage"
	"github.com/agent-assembly/agent-assembly/storage/memory"
)

func testRecord(chain string, i int, t0 time.Time) *storage.AuditRecord {
	return &storage.AuditRecord{
		Chain: chain, ID: fmt.Sprintf("%s-%d", chain, i), Time: t0.Add(time.Duration(i) * time.Millisecond),
		Event: storage.EventDecision, Agent: action.AgentID{Org: "acme", Team: "eng", Agent: fmt.Sprintf("a%d", i%3)},
		Kind: action.KindToolCall, Decision: action.Allow, Payload: []byte(fmt.Sprintf(`{"n":%d}`, i)), Reason: "ok",
	}
}

// TestLegacyAuditRowsConverted: a database written before migration 0005
// (one row per record in the audit table) opens with its records moved into
// blocks, verifiable and queryable, and the old table gone.
func TestLegacyAuditRowsConverted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aa.db")
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ns INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for v, name := range []string{"0001_init.sql", "0002_agent_mode_invalidations.sql", "0003_api_keys.sql", "0004_alerts_costs.sql"} {
		body, err := migrations.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Exec(string(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Exec(`INSERT INTO schema_migrations VALUES (?, ?, 0)`, v+1, name); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Unix(1_800_000_000, 0)
	var recs []*storage.AuditRecord
	for i := range 1500 { // more than one block
		recs = append(recs, testRecord("old", i, t0))
	}
	heads, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { return storage.ChainHead{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	tx, err := raw.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if _, err := tx.Exec(`INSERT INTO audit (`+legacyAuditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.Chain, r.Seq, r.ID, r.Time.UnixNano(), string(r.Event), r.Agent.Org, r.Agent.Team, r.Agent.Agent, r.SessionID, r.TraceID, r.SpanID,
			int64(r.Kind), r.Payload, int64(r.Decision), r.RuleID, r.PolicyVersion, int64(r.Mode), int64(r.ShadowDecision), r.Reason, int64(r.Latency), r.PrevHash, r.Hash); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(`INSERT INTO audit_chains VALUES ('old', ?, ?)`, heads["old"].Seq, heads["old"].Hash); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	raw.Close()

	s := openTest(t, Options{Path: path})
	rep, err := s.VerifyAudit(t.Context(), "old")
	if err != nil || !rep.OK || rep.Records != 1500 {
		t.Fatalf("VerifyAudit after conversion = %+v, %v", rep, err)
	}
	page, err := s.QueryAudit(t.Context(), storage.AuditQuery{Limit: 2, Ascending: true})
	if err != nil || len(page.Records) != 2 || page.Records[0].ID != "old-0" || page.Records[1].Seq != 2 {
		t.Fatalf("QueryAudit after conversion = %+v, %v", page, err)
	}
	// Appends continue the converted chain.
	if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("old", 1500, t0)}); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.VerifyAudit(t.Context(), "old"); err != nil || !rep.OK || rep.Records != 1501 {
		t.Fatalf("VerifyAudit after an append = %+v, %v", rep, err)
	}
	var n int
	if err := rawDB(t, s).QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'audit'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the old audit table is still there (%d, %v)", n, err)
	}
}

// journalFrame is one frame as auditLog.write lays it out in a file whose
// frameSeed is seed (0: as written before names were part of the checksum).
func journalFrame(seed uint32, recs []*storage.AuditRecord) []byte {
	payload := []byte{}
	for _, r := range recs {
		payload = appendEntry(payload, storage.AppendRecordEncoding(nil, r), r.Hash)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	out = binary.BigEndian.AppendUint32(out, frameSum(seed, payload))
	return append(out, payload...)
}

// TestJournalLeftByADeadProcessIsIndexed: journal files nobody holds (their
// process died before indexing them) are indexed at open, up to a torn last
// frame, and removed. New files are zero-filled ahead of their frames, so
// the dead process left a zero tail after its frames, and possibly a spare
// file that was never written; neither is mistaken for a torn frame. A
// recycled file holds its earlier life's frames after a zero frame header;
// they are not read as this file's. Files written before names were part
// of the frame checksum are read as before.
func TestJournalLeftByADeadProcessIsIndexed(t *testing.T) {
	name := func(i int) string { return fmt.Sprintf("journal-%020d-1.log", i) }
	t.Run("names in checksums", func(t *testing.T) { testJournalLeftByADeadProcess(t, frameSeed(name(1)), name) })
	t.Run("written before names were in checksums", func(t *testing.T) { testJournalLeftByADeadProcess(t, 0, name) })
}

func testJournalLeftByADeadProcess(t *testing.T, seed1 uint32, name func(int) string) {
	t0 := time.Unix(1_800_000_000, 0)
	var recs []*storage.AuditRecord
	for i := range 9 {
		recs = append(recs, testRecord("dead", i, t0))
	}
	if _, err := storage.LinkRecords(recs, func(string) (storage.ChainHead, error) { return storage.ChainHead{}, nil }); err != nil {
		t.Fatal(err)
	}
	zeroFilled := func(data []byte) []byte { return append(data, make([]byte, journalFirstBytes-len(data))...) }
	full := append(journalFrame(seed1, recs[:4]), journalFrame(seed1, recs[4:7])...)
	torn := journalFrame(seed1, recs[7:])
	torn = append(slices.Clone(full), torn[:len(torn)-5]...) // the process died inside this write
	// A recycled file's earlier life: frames of the same size and records,
	// checksummed under another name.
	earlier := journalFrame(frameSeed(name(0)), recs)
	earlierLife := func(data []byte) []byte {
		data = append(data, make([]byte, frameHeader)...) // the zero header each write leaves
		return append(data, earlier[len(data)%len(earlier):]...)
	}
	cases := []struct {
		name     string
		files    [][]byte
		records  int64
		wantTorn bool
	}{
		{"frames then zeros", [][]byte{zeroFilled(slices.Clone(full))}, 7, false},
		{"a torn frame then zeros", [][]byte{zeroFilled(slices.Clone(torn))}, 7, true},
		{"a torn frame at the end of the file", [][]byte{slices.Clone(torn)}, 7, true},
		{"frames, and a spare never written", [][]byte{zeroFilled(slices.Clone(full)), zeroFilled(nil)}, 7, false},
	}
	if seed1 != 0 {
		cases = append(cases, []struct {
			name     string
			files    [][]byte
			records  int64
			wantTorn bool
		}{
			{"recycled: frames, then the earlier life's", [][]byte{earlierLife(slices.Clone(full))}, 7, false},
			{"recycled: a torn frame over the earlier life's", [][]byte{append(slices.Clone(torn), earlier...)}, 7, true},
			{"frames, and a recycled spare never written", [][]byte{zeroFilled(slices.Clone(full)), earlierLife(nil)}, 7, false},
		}...)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "aa.db")
			if err := os.MkdirAll(path+"-audit", 0o700); err != nil {
				t.Fatal(err)
			}
			var names []string
			for i, data := range tc.files {
				name := filepath.Join(path+"-audit", name(i+1))
				if err := os.WriteFile(name, data, 0o600); err != nil {
					t.Fatal(err)
				}
				names = append(names, name)
			}
			var logs syncbuf.Buffer
			s := openTest(t, Options{Path: path, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			rep, err := s.VerifyAudit(t.Context(), "dead")
			if err != nil || !rep.OK || rep.Records != tc.records {
				t.Fatalf("VerifyAudit = %+v, %v; want the %d records of the complete frames", rep, err, tc.records)
			}
			for _, name := range names {
				if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("the recovered journal %s is still there: %v", name, err)
				}
			}
			if got := strings.Contains(logs.String(), "torn or damaged frame"); got != tc.wantTorn {
				t.Fatalf("torn-frame warning logged: %v, want %v; logs:\n%s", got, tc.wantTorn, logs.String())
			}
			// The chain continues from record 7: the torn records were never
			// acknowledged, so their numbers are reused.
			next := testRecord("dead", 7, t0)
			if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{next}); err != nil || next.Seq != 8 {
				t.Fatalf("append after recovery: seq %d, %v", next.Seq, err)
			}
		})
	}
}

// TestJournalFilesRotate: appends fill zero-filled journal files of growing
// size, rotating to the prepared spare; every record is indexed, the chain
// verifies, and closing leaves no journal file behind.
func TestJournalFilesRotate(t *testing.T) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		t.Run(string(d), func(t *testing.T) { testJournalFilesRotate(t, d) })
	}
}

// testJournalFilesRotate: in os mode the appends go inline into the files'
// shared-memory copies, which are gone with the files after close.
func testJournalFilesRotate(t *testing.T, d storage.Durability) {
	path := filepath.Join(t.TempDir(), "aa.db")
	s, err := Open(t.Context(), Options{Path: path, Logger: discard(), Durability: d})
	if err != nil {
		t.Fatal(err)
	}
	prefix := s.hub.audit.shmPrefix
	t0 := time.Unix(1_800_000_000, 0)
	payload := strings.Repeat("x", 2000)
	const n = 3000 // about 6 MB of journal: files of 1, 2 and 4 or 8 MiB
	caps := map[int64]bool{}
	inline := 0
	for i := 0; i < n; i += 50 {
		var batch []*storage.AuditRecord
		for j := i; j < i+50; j++ {
			r := testRecord("rot", j, t0)
			r.Payload = []byte(`{"p":"` + payload + `"}`)
			batch = append(batch, r)
		}
		done, err := s.TryAppendAudit(batch)
		if done {
			inline++
		} else {
			err = s.AppendAudit(t.Context(), batch)
		}
		if err != nil {
			t.Fatal(err)
		}
		a := s.hub.audit
		a.mu.Lock()
		if a.cur.size > a.cur.cap {
			t.Errorf("journal %s holds %d bytes of frames in %d zero-filled", a.cur.path, a.cur.size, a.cur.cap)
		}
		if (a.cur.shm != nil) != (d == storage.DurabilityOS) {
			t.Errorf("%s mode: journal %s has a shared-memory copy: %v", d, a.cur.path, a.cur.shm != nil)
		}
		caps[a.cur.cap] = true
		a.mu.Unlock()
	}
	// Files double in size. The 4 MiB file may come after the 8 MiB one:
	// when the background goroutine is still preparing the next file (the
	// spare) as the current one fills, the rotation makes the one after it.
	for _, c := range []int64{1 << 20, 2 << 20} {
		if !caps[c] {
			t.Errorf("no journal file of %d bytes was written; sizes seen: %v", c, caps)
		}
	}
	if !caps[4<<20] && !caps[8<<20] {
		t.Errorf("no journal file of 4 or 8 MiB was written; sizes seen: %v", caps)
	}
	// A batch that needs a new file (or the first, or one that meets a
	// background goroutine holding the journal's lock) declines; most go
	// inline.
	if d == storage.DurabilityOS && inline < n/50/2 {
		t.Errorf("%d of %d batches appended inline", inline, n/50)
	}
	if d == storage.DurabilitySync && inline != 0 {
		t.Errorf("sync mode appended %d batches inline", inline)
	}
	rep, err := s.VerifyAudit(t.Context(), "rot")
	if err != nil || !rep.OK || rep.Records != n {
		t.Fatalf("VerifyAudit = %+v, %v; want %d records", rep, err, n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	left, err := filepath.Glob(filepath.Join(path+"-audit", "journal-*.log"))
	if err != nil || len(left) != 0 {
		t.Fatalf("journal files left after close: %v, %v", left, err)
	}
	if left, _ := filepath.Glob(filepath.Join(DefaultSharedMemoryDir, prefix+"*")); len(left) != 0 {
		t.Fatalf("shared-memory copies left after close: %v", left)
	}
}

// TestChainWrittenByAnotherProcessIsRefused: while another process holds a
// chain's lock, appends to that chain fail with ErrConflict naming it, and
// other chains are unaffected.
func TestChainWrittenByAnotherProcessIsRefused(t *testing.T) {
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db")})
	// Another open file description stands in for another process.
	probe := &auditLog{dir: s.hub.audit.dir, db: s.hub.audit.db, heads: map[string]storage.ChainHead{}, locks: map[string]*os.File{}}
	if err := probe.takeChain("taken"); err != nil {
		t.Fatal(err)
	}
	defer probe.locks["taken"].Close()
	t0 := time.Now()
	err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("taken", 0, t0)})
	if !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("append to a chain another process writes: %v, want ErrConflict", err)
	}
	if err := s.AppendAudit(t.Context(), []*storage.AuditRecord{testRecord("free", 0, t0)}); err != nil {
		t.Fatal(err)
	}
}

// TestQueryAuditAcrossBlocksMatchesMemory pages through records spread over
// many overlapping blocks of several chains, with times out of append order,
// and compares every page with the memory driver's answer.
func TestQueryAuditAcrossBlocksMatchesMemory(t *testing.T) {
	s := openTest(t, Options{Path: filepath.Join(t.TempDir(), "aa.db"), Durability: storage.DurabilityOS})
	m := memory.New(memory.Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Unix(1_800_000_000, 0)
	for batch := range 40 {
		var a, b []*storage.AuditRecord
		for i := range 1 + rng.IntN(30) {
			chain := []string{"c1", "c2", "c3"}[rng.IntN(3)]
			r := testRecord(chain, batch*100+i, t0)
			r.Time = t0.Add(time.Duration(batch*20+rng.IntN(60)) * time.Millisecond) // overlaps neighbours
			r.Decision = []action.Decision{action.Allow, action.Deny}[rng.IntN(2)]
			a, b = append(a, r), append(b, r.Clone())
		}
		if err := s.AppendAudit(t.Context(), a); err != nil {
			t.Fatal(err)
		}
		if err := m.AppendAudit(t.Context(), b); err != nil {
			t.Fatal(err)
		}
		if batch%3 == 0 {
			if err := s.indexed(t.Context()); err != nil { // many small blocks
				t.Fatal(err)
			}
		}
	}
	keys := func(p storage.AuditPage) []string {
		var out []string
		for _, r := range p.Records {
			out = append(out, fmt.Sprintf("%s/%d@%d", r.Chain, r.Seq, r.Time.UnixNano()))
		}
		return out
	}
	for name, q := range map[string]storage.AuditQuery{
		"newest first":  {Limit: 7},
		"oldest first":  {Limit: 11, Ascending: true},
		"one agent":     {Limit: 5, Agent: "a1"},
		"denied, asc":   {Limit: 9, Decision: action.Deny, Ascending: true},
		"time window":   {Limit: 4, Since: t0.Add(200 * time.Millisecond), Until: t0.Add(500 * time.Millisecond)},
		"window, asc":   {Limit: 6, Since: t0.Add(300 * time.Millisecond), Until: t0.Add(420 * time.Millisecond), Ascending: true},
		"one big page":  {Limit: 1000},
		"nothing found": {Limit: 3, Agent: "nobody"},
	} {
		qs, qm := q, q
		for pages := 0; ; pages++ {
			ps, err := s.QueryAudit(t.Context(), qs)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			pm, err := m.QueryAudit(t.Context(), qm)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys(ps), keys(pm)) || ps.NextCursor != pm.NextCursor {
				t.Fatalf("%s, page %d:\nsqlite %v (next %q)\nmemory %v (next %q)", name, pages, keys(ps), ps.NextCursor, keys(pm), pm.NextCursor)
			}
			if ps.NextCursor == "" {
				break
			}
			qs.Cursor, qm.Cursor = ps.NextCursor, pm.NextCursor
		}
	}
}

// TestJournalFilesRecycled: once full-size journal files are indexed, they
// are recycled as the next files instead of new ones being zero-filled. A
// recycled file still holds its earlier life's bytes after the new frames,
// and each write leaves a zero frame header there, so the file's frames end
// cleanly where its records do. Every record verifies, and closing leaves
// no journal file behind.
func TestJournalFilesRecycled(t *testing.T) {
	for _, d := range []storage.Durability{storage.DurabilitySync, storage.DurabilityOS} {
		t.Run(string(d), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "aa.db")
			s, err := Open(t.Context(), Options{Path: path, Logger: discard(), Durability: d})
			if err != nil {
				t.Fatal(err)
			}
			a := s.hub.audit
			t0 := time.Unix(1_800_000_000, 0)
			payload := []byte(`{"p":"` + strings.Repeat("y", 8000) + `"}`)
			n, checked := 0, 0
			for a.recycled.Load() < 2 || checked < 3 {
				if n > 50_000 {
					t.Fatalf("%d records journaled, %d files recycled", n, a.recycled.Load())
				}
				appendBatch(t, s, "rec", n, 50, t0, payload)
				n += 50
				a.mu.Lock()
				j := a.cur
				if j.recycled && j.size > 0 {
					if j.shm != nil {
						if err := a.flushShm(j); err != nil {
							t.Fatal(err)
						}
					}
					data, err := os.ReadFile(j.path)
					if err != nil {
						t.Fatal(err)
					}
					end, clean, err := walkFrames(data, j.seed, nil)
					if err != nil || !clean || int64(end) != j.size {
						t.Errorf("recycled journal %s: frames end at %d (clean %v, %v); want a clean end at %d", j.path, end, clean, err, j.size)
					}
					// Its earlier life filled it to within a batch of the end.
					if j.size < j.cap/2 && allZero(data[j.size+frameHeader:]) {
						t.Errorf("recycled journal %s holds nothing of its earlier life", j.path)
					}
					checked++
				}
				a.mu.Unlock()
			}
			rep, err := s.VerifyAudit(t.Context(), "rec")
			if err != nil || !rep.OK || rep.Records != int64(n) {
				t.Fatalf("VerifyAudit = %+v, %v; want %d records", rep, err, n)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if left, err := filepath.Glob(filepath.Join(path+"-audit", "journal-*.log")); err != nil || len(left) != 0 {
				t.Fatalf("journal files left after close: %v, %v", left, err)
			}
			t.Logf("%d records, %d files recycled", n, a.recycled.Load())
		})
	}
}

// appendBatch appends count records of chain numbered from first on, each
// carrying payload (testRecord's own when nil), as one batch, then indexes
// everything journaled, so that indexed files are retired (and kept or
// removed) at once.
func appendBatch(t *testing.T, s *Store, chain string, first, count int, t0 time.Time, payload []byte) {
	t.Helper()
	var batch []*storage.AuditRecord
	for k := first; k < first+count; k++ {
		r := testRecord(chain, k, t0)
		if payload != nil {
			r.Payload = payload
		}
		batch = append(batch, r)
	}
	if err := s.AppendAudit(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	if err := s.hub.audit.index(t.Context()); err != nil {
		t.Fatal(err)
	}
}
