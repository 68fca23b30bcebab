package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
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

// blockWriter is how insertBlocks stores blocks: their encoding (blockS2,
// or blockRaw for migration 0005, which runs before the encoding column
// exists), a block's entries and their compressed form reused from block to
// block, and statements prepared once on a connection (nil: prepared in
// each transaction).
type blockWriter struct {
	encoding    int
	raw, packed []byte
	stmts       *blockStatements
}

// blockStatements are insertBlocks' statements, prepared once on the
// indexer's connection and reused by each of its transactions: preparing
// them anew took about 15% of the indexer's CPU (BenchmarkIndexAudit).
type blockStatements struct{ insert, moveHead *sql.Stmt }

// blockSQL is insertBlocks' SQL for blocks stored in encoding.
func blockSQL(encoding int) (insert, moveHead string) {
	insert = `INSERT INTO audit_blocks (chain, first_seq, last_seq, min_time_ns, max_time_ns, records, encoding, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`
	if encoding == blockRaw {
		insert = `INSERT INTO audit_blocks (chain, first_seq, last_seq, min_time_ns, max_time_ns, records, data)
			VALUES (?, ?, ?, ?, ?, ?, ?)`
	}
	moveHead = `INSERT INTO audit_chains (chain, seq, hash) VALUES (?, ?, ?)
		ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
		WHERE excluded.seq > audit_chains.seq`
	return insert, moveHead
}

// prepareBlockStatements prepares insertBlocks' statements on db.
func prepareBlockStatements(ctx context.Context, db *sql.DB, encoding int) (*blockStatements, error) {
	insert, moveHead := blockSQL(encoding)
	ins, err := db.PrepareContext(ctx, insert)
	if err != nil {
		return nil, err
	}
	head, err := db.PrepareContext(ctx, moveHead)
	if err != nil {
		ins.Close()
		return nil, err
	}
	return &blockStatements{insert: ins, moveHead: head}, nil
}

// close closes the statements; a nil b has none.
func (b *blockStatements) close() error {
	if b == nil {
		return nil
	}
	return errors.Join(b.insert.Close(), b.moveHead.Close())
}

// insertBlocks stores entries (in append order; each chain's in Seq order) as
// blocks of at most blockMaxRecords per chain, as w says, and moves each
// chain's head forward, inside tx.
func insertBlocks(ctx context.Context, tx *sql.Tx, entries []entry, w *blockWriter) error {
	byChain := make(map[string][]entry, 1)
	var order []string
	for _, e := range entries {
		if _, ok := byChain[e.chain]; !ok {
			order = append(order, e.chain)
		}
		byChain[e.chain] = append(byChain[e.chain], e)
	}
	var ins, head *sql.Stmt
	if w.stmts != nil {
		ins, head = tx.StmtContext(ctx, w.stmts.insert), tx.StmtContext(ctx, w.stmts.moveHead)
	} else {
		insert, moveHead := blockSQL(w.encoding)
		var err error
		if ins, err = tx.PrepareContext(ctx, insert); err != nil {
			return err
		}
		defer ins.Close()
		if head, err = tx.PrepareContext(ctx, moveHead); err != nil {
			return err
		}
		defer head.Close()
	}
	for _, chain := range order {
		es := byChain[chain]
		for len(es) > 0 {
			block := es[:min(len(es), blockMaxRecords)]
			es = es[len(block):]
			size := 0
			for _, e := range block {
				size += len(e.data)
			}
			data := slices.Grow(w.raw[:0], size)
			lo, hi := block[0].timeNS, block[0].timeNS
			for _, e := range block {
				data = append(data, e.data...)
				lo, hi = min(lo, e.timeNS), max(hi, e.timeNS)
			}
			last := block[len(block)-1]
			w.raw = data // the driver copies a bound blob
			var err error
			if w.encoding == blockS2 {
				w.packed = s2.Encode(w.packed[:cap(w.packed)], data)
				_, err = ins.ExecContext(ctx, chain, block[0].seq, last.seq, lo, hi, len(block), blockS2, w.packed)
			} else {
				_, err = ins.ExecContext(ctx, chain, block[0].seq, last.seq, lo, hi, len(block), data)
			}
			if err != nil {
				return fmt.Errorf("store audit records %d..%d of chain %q: %w", block[0].seq, last.seq, chain, err)
			}
			hash := last.data[len(last.data)-storage.HashSize:]
			if _, err := head.ExecContext(ctx, chain, last.seq, hash); err != nil {
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
	if err := insertBlocks(ctx, tx, entries, &blockWriter{encoding: blockRaw}); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `DROP TABLE audit`)
	return err
}
