// Package sqlitetest helps tests play the attacker against the SQLite
// driver's audit log: it changes stored records behind the driver's back, the
// way someone with write access to the database file could.
package sqlitetest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/klauspost/compress/s2"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/agent-assembly/agent-assembly/storage"
)

// TamperRecord replaces the first occurrence of old with new (same length, so
// the block still decodes) inside the stored form of record seq of chain in
// the database file at path; with old nil it flips one bit of the record's
// last stored byte (part of its previous_hash) instead. It waits up to 10 s for the record to be indexed
// into audit_blocks (a compressed block is decompressed, changed and
// compressed again, so that it still reads), checks that the append-only trigger refuses the change,
// then drops the trigger and makes it.
func TamperRecord(ctx context.Context, path, chain string, seq int64, old, new []byte) error {
	if old != nil && (len(old) == 0 || len(old) != len(new)) {
		return errors.New("tamper: old and new must be non-empty and of the same length")
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	var first, encoding int64
	var data []byte
	for deadline := time.Now().Add(10 * time.Second); ; {
		err = db.QueryRowContext(ctx, `SELECT first_seq, encoding, data FROM audit_blocks WHERE chain = ? AND first_seq <= ? AND last_seq >= ?`,
			chain, seq, seq).Scan(&first, &encoding, &data)
		if err == nil {
			break
		}
		if !errors.Is(err, sql.ErrNoRows) || time.Now().After(deadline) {
			return fmt.Errorf("tamper: record %d of chain %q: %w", seq, chain, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A compressed block is changed the way an attacker would: decompressed,
	// edited and compressed again, so that it still reads.
	if encoding == 1 {
		if data, err = s2.Decode(nil, data); err != nil {
			return fmt.Errorf("tamper: block of chain %q at record %d: %w", chain, first, err)
		}
	}
	for off := 0; off < len(data); {
		n, k := binary.Uvarint(data[off:])
		if k <= 0 || int(n)+k+storage.HashSize > len(data)-off {
			return fmt.Errorf("tamper: block of chain %q at record %d is malformed", chain, first)
		}
		enc := data[off+k : off+k+int(n)]
		r, err := storage.DecodeRecordEncoding(enc)
		if err != nil {
			return fmt.Errorf("tamper: %w", err)
		}
		if r.Seq == seq {
			if old == nil {
				enc[len(enc)-1] ^= 0x01
			} else if i := bytes.Index(enc, old); i >= 0 {
				copy(enc[i:], new)
			} else {
				return fmt.Errorf("tamper: record %d does not contain %q", seq, old)
			}
			if encoding == 1 {
				data = s2.Encode(nil, data)
			}
			update := `UPDATE audit_blocks SET data = ? WHERE chain = ? AND first_seq = ?`
			if _, err := db.ExecContext(ctx, update, data, chain, first); err == nil {
				return errors.New("tamper: the append-only trigger let an UPDATE of the audit log through")
			}
			if _, err := db.ExecContext(ctx, `DROP TRIGGER IF EXISTS audit_blocks_no_update`); err != nil {
				return fmt.Errorf("tamper: %w", err)
			}
			_, err := db.ExecContext(ctx, update, data, chain, first)
			return err
		}
		off += k + int(n) + storage.HashSize
	}
	return fmt.Errorf("tamper: record %d of chain %q is not in its block", seq, chain)
}
