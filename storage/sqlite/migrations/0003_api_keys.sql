-- Operator API keys: the SHA-256 of each secret, never the secret.
CREATE TABLE api_keys (
	id           TEXT    PRIMARY KEY,
	name         TEXT    NOT NULL,
	role         TEXT    NOT NULL,
	hash         BLOB    NOT NULL,
	created_ns   INTEGER NOT NULL,
	created_by   TEXT    NOT NULL,
	rotated_ns   INTEGER NOT NULL DEFAULT 0,
	last_used_ns INTEGER NOT NULL DEFAULT 0,
	revoked_ns   INTEGER NOT NULL DEFAULT 0
);
