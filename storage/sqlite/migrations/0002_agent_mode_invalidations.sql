-- Per-agent enforcement-mode override and the invalidation event log.
ALTER TABLE agents ADD COLUMN mode TEXT NOT NULL DEFAULT '';

CREATE TABLE invalidations (
	seq            INTEGER PRIMARY KEY,
	type           TEXT    NOT NULL,
	org            TEXT    NOT NULL,
	team           TEXT    NOT NULL,
	agent          TEXT    NOT NULL,
	policy_version TEXT    NOT NULL,
	approval_id    TEXT    NOT NULL,
	reason         TEXT    NOT NULL,
	time_ns        INTEGER NOT NULL,
	key            TEXT
);
CREATE UNIQUE INDEX invalidations_key ON invalidations (key) WHERE key IS NOT NULL;
CREATE INDEX invalidations_time ON invalidations (time_ns);
