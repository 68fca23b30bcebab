-- 0008: audit journal files (<database>-audit/journal-*.log) checksum each
-- frame over the file's name followed by its payload, so that full files
-- can be recycled instead of zero-filled anew. A binary from before this
-- migration would read such a file's frames as damaged and lose what a
-- crash left in it, so the version goes up to make such a binary refuse the
-- database. No table changes.
SELECT 1;
