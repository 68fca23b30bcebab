package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/klauspost/compress/s2"

	"github.com/agent-assembly/agent-assembly/storage"
)

// blockMaxRecords caps the records stored in one audit_blocks row.
const blockMaxRecords = 1024

// How a block's entries are stored (audit_blocks.encoding, migration 0007).
// Blocks written before 0007 are blockRaw; the indexer writes blockS2.
// Records of one gateway repeat most of their fields (agent, rule, policy
// version, payload shape), so S2 stores them in about a fifth of the bytes,
// and the indexer and WAL checkpoints then write a fifth as much
// (BenchmarkIndexAudit).
const (
	blockRaw = 0 // the entries as they are
	blockS2  = 1 // the entries compressed with S2 (github.com/klauspost/compress/s2, block format)
)

// maxBlockBytes bounds the decompressed size a block may claim, so that a
// damaged length cannot make a reader allocate without limit.
const maxBlockBytes = maxFrameBytes

// blockScratch is reused from block to block by one writer: the entries of a
// block and their compressed form.
type blockScratch struct{ raw, packed []byte }

// blockEntries returns the entries a stored block holds, decompressing them
// into *scratch when they are compressed; the result is valid until the next
// call with the same scratch. A block that cannot be decompressed, or of an
// encoding this binary does not know, is storage.ErrInvalid.
func blockEntries(encoding int64, data []byte, scratch *[]byte) ([]byte, error) {
	switch encoding {
	case blockRaw:
		return data, nil
	case blockS2:
		n, err := s2.DecodedLen(data)
		if err != nil {
			return nil, fmt.Errorf("decompress audit block: %w: %w", err, storage.ErrInvalid)
		}
		if n > maxBlockBytes {
			return nil, fmt.Errorf("decompress audit block: it claims %d bytes, more than %d: %w", n, maxBlockBytes, storage.ErrInvalid)
		}
		out, err := s2.Decode((*scratch)[:cap(*scratch)], data)
		if err != nil {
			return nil, fmt.Errorf("decompress audit block: %w: %w", err, storage.ErrInvalid)
		}
		*scratch = out
		return out, nil
	default:
		return nil, fmt.Errorf("audit block encoding %d is unknown to this binary (upgrade agent-assembly): %w", encoding, storage.ErrInvalid)
	}
}

// entry is one audit record in its stored form, as it sits in a journal frame
// and in a block: uvarint(len(encoding)), the canonical encoding
// (storage.AppendRecordEncoding), then the record's hash.
type entry struct {
	chain  string
	seq    int64
	timeNS int64
	data   []byte
}

// appendEntry appends a record's stored form, given its canonical encoding
// and its hash, to dst.
func appendEntry(dst, enc, hash []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(enc)))
	dst = append(dst, enc...)
	return append(dst, hash...)
}

// decodeEntries calls fn with every record stored in data (a block or a
// journal frame), in order. index counts the entries before the one that
// failed, when decoding fails.
func decodeEntries(data []byte, fn func(r *storage.AuditRecord, raw []byte) error) (index int, err error) {
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || n > uint64(len(data)-k) || uint64(len(data)-k)-n < storage.HashSize {
			return index, fmt.Errorf("malformed entry length: %w", storage.ErrInvalid)
		}
		end := k + int(n) + storage.HashSize
		r, err := storage.DecodeRecordEncoding(data[k : k+int(n)])
		if err != nil {
			return index, err
		}
		r.Hash = bytes.Clone(data[k+int(n) : end])
		if err := fn(r, data[:end]); err != nil {
			return index, err
		}
		data = data[end:]
		index++
	}
	return index, nil
}

// insertBlocks stores entries (in append order; each chain's in Seq order) as
// blocks of at most blockMaxRecords per chain, stored in the given encoding
// (blockS2, or blockRaw for migration 0005, which runs before the encoding
// column exists), and moves each chain's head forward, inside tx. scratch,
// when not nil, is reused for the blocks' bytes (the driver copies a bound
// blob).
func insertBlocks(ctx context.Context, tx *sql.Tx, entries []entry, scratch *blockScratch, encoding int) error {
	if scratch == nil {
		scratch = new(blockScratch)
	}
	byChain := make(map[string][]entry, 1)
	var order []string
	for _, e := range entries {
		if _, ok := byChain[e.chain]; !ok {
			order = append(order, e.chain)
		}
		byChain[e.chain] = append(byChain[e.chain], e)
	}
	insert := `INSERT INTO audit_blocks (chain, first_seq, last_seq, min_time_ns, max_time_ns, records, encoding, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
	if encoding == blockRaw {
		insert = `INSERT INTO audit_blocks (chain, first_seq, last_seq, min_time_ns, max_time_ns, records, data)
			VALUES (?, ?, ?, ?, ?, ?, ?)`
	}
	ins, err := tx.PrepareContext(ctx, insert)
	if err != nil {
		return err
	}
	defer ins.Close()
	for _, chain := range order {
		es := byChain[chain]
		for len(es) > 0 {
			block := es[:min(len(es), blockMaxRecords)]
			es = es[len(block):]
			size := 0
			for _, e := range block {
				size += len(e.data)
			}
			data := slices.Grow(scratch.raw[:0], size)
			lo, hi := block[0].timeNS, block[0].timeNS
			for _, e := range block {
				data = append(data, e.data...)
				lo, hi = min(lo, e.timeNS), max(hi, e.timeNS)
			}
			last := block[len(block)-1]
			scratch.raw = data
			args := []any{chain, block[0].seq, last.seq, lo, hi, len(block), data}
			if encoding == blockS2 {
				scratch.packed = s2.Encode(scratch.packed[:cap(scratch.packed)], data)
				args = append(args[:6], blockS2, scratch.packed)
			}
			if _, err := ins.ExecContext(ctx, args...); err != nil {
				return fmt.Errorf("store audit records %d..%d of chain %q: %w", block[0].seq, last.seq, chain, err)
			}
			hash := last.data[len(last.data)-storage.HashSize:]
			if _, err := tx.ExecContext(ctx, `INSERT INTO audit_chains (chain, seq, hash) VALUES (?, ?, ?)
				ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
				WHERE excluded.seq > audit_chains.seq`, chain, last.seq, hash); err != nil {
				return fmt.Errorf("move head of audit chain %q: %w", chain, err)
			}
		}
	}
	return nil
}

// entryOf returns r's stored form as an entry.
func entryOf(r *storage.AuditRecord) entry {
	return entry{chain: r.Chain, seq: r.Seq, timeNS: r.Time.UnixNano(), data: appendEntry(nil, storage.AppendRecordEncoding(nil, r), r.Hash)}
}

// convertAuditRows moves the records of the pre-0005 audit table into blocks
// and drops the table (migration 0005, inside its transaction).
func convertAuditRows(ctx context.Context, tx *sql.Tx) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit'`).Scan(&n); err != nil || n == 0 {
		return err
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+legacyAuditColumns+` FROM audit ORDER BY chain, seq`)
	if err != nil {
		return err
	}
	var entries []entry
	for rows.Next() {
		r, err := scanLegacyRecord(rows)
		if err != nil {
			rows.Close()
			return err
		}
		entries = append(entries, entryOf(r))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if err := insertBlocks(ctx, tx, entries, nil, blockRaw); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DROP TABLE audit`)
	return err
}
