-- Budget reservations waiting for their usage report, so any replica can
-- settle one (storage.Counters PutHold / TakeHold).
CREATE TABLE budget_holds (
	key        text   PRIMARY KEY,
	data       bytea  NOT NULL,
	expires_ns bigint NOT NULL
);
CREATE INDEX budget_holds_expires ON budget_holds (expires_ns);
