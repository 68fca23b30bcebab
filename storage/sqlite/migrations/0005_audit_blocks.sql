-- 0005: the audit log is stored in blocks. Each row holds consecutive records
-- of one chain in their canonical encoding (storage.AppendRecordEncoding)
-- followed by their hashes; queries decode blocks and filter in Go. One row
-- per block instead of six B-tree inserts per record is what lets the audit
-- journal (see audit.go) keep up with the gateway. Existing rows of the old
-- audit table are converted into blocks by Go code in the same transaction,
-- which then drops that table.
CREATE TABLE audit_blocks (
	chain       TEXT    NOT NULL,
	first_seq   INTEGER NOT NULL,
	last_seq    INTEGER NOT NULL,
	min_time_ns INTEGER NOT NULL,
	max_time_ns INTEGER NOT NULL,
	records     INTEGER NOT NULL,
	data        BLOB    NOT NULL,
	PRIMARY KEY (chain, first_seq)
);
CREATE INDEX audit_blocks_by_max_time ON audit_blocks (max_time_ns);
CREATE INDEX audit_blocks_by_min_time ON audit_blocks (min_time_ns);

CREATE TRIGGER audit_blocks_no_update BEFORE UPDATE ON audit_blocks
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_blocks_no_delete BEFORE DELETE ON audit_blocks
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
