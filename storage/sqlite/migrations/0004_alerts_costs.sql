-- The alerts feed, its silences and the daily cost ledger.
CREATE TABLE alerts (
	id         TEXT    PRIMARY KEY,
	time_ns    INTEGER NOT NULL,
	kind       TEXT    NOT NULL,
	severity   TEXT    NOT NULL,
	org        TEXT    NOT NULL,
	team       TEXT    NOT NULL,
	agent      TEXT    NOT NULL,
	summary    TEXT    NOT NULL,
	details    TEXT    NOT NULL,
	source     TEXT    NOT NULL,
	silence_id TEXT    NOT NULL
);
CREATE INDEX alerts_time ON alerts (time_ns DESC, id DESC);

CREATE TABLE alert_silences (
	id           TEXT    PRIMARY KEY,
	kind         TEXT    NOT NULL,
	severity     TEXT    NOT NULL,
	agent_prefix TEXT    NOT NULL,
	starts_ns    INTEGER NOT NULL,
	ends_ns      INTEGER NOT NULL,
	comment      TEXT    NOT NULL,
	created_by   TEXT    NOT NULL,
	created_ns   INTEGER NOT NULL
);

CREATE TABLE cost_daily (
	day               TEXT    NOT NULL,
	org               TEXT    NOT NULL,
	team              TEXT    NOT NULL,
	agent             TEXT    NOT NULL,
	model             TEXT    NOT NULL,
	micro_usd         INTEGER NOT NULL,
	prompt_tokens     INTEGER NOT NULL,
	completion_tokens INTEGER NOT NULL,
	requests          INTEGER NOT NULL,
	PRIMARY KEY (day, org, team, agent, model)
);
