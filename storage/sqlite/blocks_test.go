package sqlite

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"

	"github.com/agent-assembly/agent-assembly/storage"
)

// appendIndexed appends n records to chain in batches of 50, each indexed
// into a block of its own, and returns them as a query reads them back.
func appendIndexed(t *testing.T, s *Store, chain string, n int) []*storage.AuditRecord {
	t.Helper()
	t0 := time.Unix(1_800_000_000, 0)
	for i := 0; i < n; i += 50 {
		appendBatch(t, s, chain, i, min(50, n-i), t0, nil)
	}
	page, err := s.QueryAudit(t.Context(), storage.AuditQuery{Limit: 1000, Ascending: true})
	if err != nil || len(page.Records) != n {
		t.Fatalf("query: %d records, %v; want %d", len(page.Records), err, n)
	}
	return page.Records
}

type storedBlock struct {
	first, encoding int64
	data            []byte
}

func storedBlocks(t *testing.T, s *Store) []storedBlock {
	t.Helper()
	rows, err := rawDB(t, s).QueryContext(t.Context(), `SELECT first_seq, encoding, data FROM audit_blocks ORDER BY first_seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []storedBlock
	for rows.Next() {
		var b storedBlock
		if err := rows.Scan(&b.first, &b.encoding, &b.data); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// rewriteBlock replaces a stored block's encoding and bytes behind the
// driver's back.
func rewriteBlock(t *testing.T, s *Store, first, encoding int64, data []byte) {
	t.Helper()
	db := rawDB(t, s)
	if _, err := db.ExecContext(t.Context(), `DROP TRIGGER IF EXISTS audit_blocks_no_update`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(t.Context(), `UPDATE audit_blocks SET encoding = ?, data = ? WHERE first_seq = ?`, encoding, data, first); err != nil {
		t.Fatal(err)
	}
}

// TestAuditBlocksCompressed: the indexer stores blocks compressed, in
// fewer bytes than their entries; a block stored as it is (as every block
// written before migration 0007 is) reads and verifies beside them.
func TestAuditBlocksCompressed(t *testing.T) {
	s := openTest(t, Options{Path: t.TempDir() + "/aa.db", Durability: storage.DurabilityOS})
	want := appendIndexed(t, s, "gw", 500)
	blocks := storedBlocks(t, s)
	if len(blocks) == 0 {
		t.Fatal("no blocks stored")
	}
	var packed, raw int
	for _, b := range blocks {
		if b.encoding != blockS2 {
			t.Fatalf("block at record %d has encoding %d, want %d (S2)", b.first, b.encoding, blockS2)
		}
		entries, err := s2.Decode(nil, b.data)
		if err != nil {
			t.Fatalf("block at record %d: %v", b.first, err)
		}
		packed, raw = packed+len(b.data), raw+len(entries)
	}
	t.Logf("%d blocks: %d bytes stored for %d bytes of entries", len(blocks), packed, raw)
	if packed*2 > raw {
		t.Errorf("blocks take %d bytes for %d bytes of entries: not compressed", packed, raw)
	}

	// The first block as an older gateway stored it.
	entries, err := s2.Decode(nil, blocks[0].data)
	if err != nil {
		t.Fatal(err)
	}
	rewriteBlock(t, s, blocks[0].first, blockRaw, entries)
	page, err := s.QueryAudit(t.Context(), storage.AuditQuery{Limit: 1000, Ascending: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(page.Records, want, func(a, b *storage.AuditRecord) bool {
		return a.ID == b.ID && a.Seq == b.Seq && string(a.Hash) == string(b.Hash)
	}) {
		t.Fatalf("with one block stored uncompressed, the query returned other records")
	}
	rep, err := s.VerifyAudit(t.Context(), "gw")
	if err != nil || !rep.OK || rep.Records != 500 {
		t.Fatalf("verify with one uncompressed block: %+v, %v", rep, err)
	}
}

// TestDamagedAuditBlock: a block that cannot be decompressed, or whose
// encoding this binary does not know, fails verification at the block's
// first record with a reason that says so, and queries refuse with an error
// naming the block; nothing panics or allocates what a damaged length
// claims.
func TestDamagedAuditBlock(t *testing.T) {
	huge := binary.AppendUvarint(nil, 1<<40)
	for _, tc := range []struct {
		name     string
		encoding int64
		damage   func([]byte) []byte
		reason   string
	}{
		{"truncated", blockS2, func(b []byte) []byte { return b[:len(b)/2] }, "decompress audit block"},
		{"garbled", blockS2, func(b []byte) []byte {
			b = slices.Clone(b)
			for i := 1; i < len(b); i += 7 {
				b[i] ^= 0xA5
			}
			return b
		}, "cannot be read"},
		{"huge length", blockS2, func(b []byte) []byte { return append(slices.Clone(huge), b[1:]...) }, "decompress audit block"},
		{"unknown encoding", 9, func(b []byte) []byte { return b }, "encoding 9 is unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, Options{Path: t.TempDir() + "/aa.db", Durability: storage.DurabilityOS})
			appendIndexed(t, s, "gw", 300)
			var target storedBlock
			for _, b := range storedBlocks(t, s) {
				if b.first <= 120 {
					target = b
				}
			}
			rewriteBlock(t, s, target.first, tc.encoding, tc.damage(target.data))
			rep, err := s.VerifyAudit(t.Context(), "gw")
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || rep.FirstBadSeq < target.first || rep.FirstBadSeq > 120 || !strings.Contains(rep.Problem, tc.reason) {
				t.Fatalf("verify: %+v; want a failure at or after record %d and by 120, naming %q", rep, target.first, tc.reason)
			}
			t.Logf("verify: record %d: %s", rep.FirstBadSeq, rep.Problem)
			if _, err := s.QueryAudit(t.Context(), storage.AuditQuery{Limit: 1000}); err == nil || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("query over a damaged block: %v; want an error naming the damaged block", err)
			}
		})
	}
}
