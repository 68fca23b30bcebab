-- 0007: how a block's entries are stored. 0: as they are (every block
-- written before this migration); 1: compressed with S2 (block format), as
-- the indexer writes them from now on. Existing blocks are not rewritten.
ALTER TABLE audit_blocks ADD COLUMN encoding INTEGER NOT NULL DEFAULT 0;
