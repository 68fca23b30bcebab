-- 0001: the initial schema. Times are Unix nanoseconds (0 = unset), so they
-- round-trip exactly: the audit hash covers them.

CREATE TABLE audit (
	chain           TEXT    NOT NULL,
	seq             INTEGER NOT NULL,
	id              TEXT    NOT NULL,
	time_ns         INTEGER NOT NULL,
	event           TEXT    NOT NULL,
	org             TEXT    NOT NULL,
	team            TEXT    NOT NULL,
	agent           TEXT    NOT NULL,
	session_id      TEXT    NOT NULL,
	trace_id        TEXT    NOT NULL,
	span_id         TEXT    NOT NULL,
	kind            INTEGER NOT NULL,
	payload         BLOB,
	decision        INTEGER NOT NULL,
	rule_id         TEXT    NOT NULL,
	policy_version  TEXT    NOT NULL,
	mode            INTEGER NOT NULL,
	shadow_decision INTEGER NOT NULL,
	reason          TEXT    NOT NULL,
	latency_ns      INTEGER NOT NULL,
	prev_hash       BLOB    NOT NULL,
	hash            BLOB    NOT NULL,
	PRIMARY KEY (chain, seq)
);
-- Paging order (Time, Chain, Seq) and the common filters.
CREATE INDEX audit_by_time    ON audit (time_ns, chain, seq);
CREATE INDEX audit_by_agent   ON audit (org, team, agent, time_ns, chain, seq);
CREATE INDEX audit_by_session ON audit (session_id, time_ns, chain, seq);
CREATE INDEX audit_by_trace   ON audit (trace_id, time_ns, chain, seq);

-- The log is append-only. The hash chain is what proves it; these triggers
-- stop accidents.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

-- The head of each chain, written in the same transaction as its records, so
-- VerifyAudit can tell when records were removed from the end.
CREATE TABLE audit_chains (
	chain TEXT    PRIMARY KEY,
	seq   INTEGER NOT NULL,
	hash  BLOB    NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER audit_chains_forward BEFORE UPDATE ON audit_chains
WHEN NEW.seq <= OLD.seq
BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward'); END;

CREATE TABLE agents (
	org           TEXT    NOT NULL,
	team          TEXT    NOT NULL,
	agent         TEXT    NOT NULL,
	labels        TEXT    NOT NULL,
	public_key    BLOB,
	status        TEXT    NOT NULL,
	status_reason TEXT    NOT NULL,
	parent_org    TEXT    NOT NULL,
	parent_team   TEXT    NOT NULL,
	parent_agent  TEXT    NOT NULL,
	depth         INTEGER NOT NULL,
	registered_ns INTEGER NOT NULL,
	last_seen_ns  INTEGER NOT NULL,
	PRIMARY KEY (org, team, agent)
) WITHOUT ROWID;

CREATE TABLE nonces (
	nonce      TEXT    PRIMARY KEY,
	expires_ns INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE revoked_credentials (
	token_id   TEXT    PRIMARY KEY,
	expires_ns INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE policy_versions (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	version      TEXT    NOT NULL UNIQUE,
	author       TEXT    NOT NULL,
	message      TEXT    NOT NULL,
	created_ns   INTEGER NOT NULL,
	activated_ns INTEGER NOT NULL,
	active       INTEGER NOT NULL
);
CREATE UNIQUE INDEX policy_versions_one_active ON policy_versions (active) WHERE active = 1;
CREATE INDEX policy_versions_by_created ON policy_versions (created_ns, id);

CREATE TABLE policy_documents (
	version_id INTEGER NOT NULL REFERENCES policy_versions (id),
	position   INTEGER NOT NULL,
	name       TEXT    NOT NULL,
	source     BLOB,
	PRIMARY KEY (version_id, position)
) WITHOUT ROWID;

CREATE TABLE approvals (
	id          TEXT    PRIMARY KEY,
	decision_id TEXT    NOT NULL,
	org         TEXT    NOT NULL,
	team        TEXT    NOT NULL,
	agent       TEXT    NOT NULL,
	kind        INTEGER NOT NULL,
	payload     BLOB,
	rule_id     TEXT    NOT NULL,
	reason      TEXT    NOT NULL,
	status      TEXT    NOT NULL,
	created_ns  INTEGER NOT NULL,
	expires_ns  INTEGER NOT NULL,
	decided_ns  INTEGER NOT NULL,
	decided_by  TEXT    NOT NULL,
	comment     TEXT    NOT NULL
);
CREATE INDEX approvals_by_status ON approvals (status, created_ns, id);
CREATE INDEX approvals_by_created ON approvals (created_ns, id);

-- Values are sealed (storage.Sealer); the name is the additional data.
CREATE TABLE secrets (
	name       TEXT    PRIMARY KEY,
	sealed     BLOB    NOT NULL,
	version    INTEGER NOT NULL,
	updated_ns INTEGER NOT NULL
) WITHOUT ROWID;

-- Budget counters, kept in memory and persisted behind.
CREATE TABLE counters (
	key        TEXT    PRIMARY KEY,
	value      INTEGER NOT NULL,
	expires_ns INTEGER NOT NULL
) WITHOUT ROWID;
