-- Budget reservations waiting for their usage report (storage.Counters
-- PutHold / TakeHold), kept in memory and persisted behind like counters.
CREATE TABLE budget_holds (
	key        TEXT    PRIMARY KEY,
	data       BLOB    NOT NULL,
	expires_ns INTEGER NOT NULL
) WITHOUT ROWID;
