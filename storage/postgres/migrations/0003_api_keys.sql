-- Operator API keys: the SHA-256 of each secret, never the secret.
CREATE TABLE api_keys (
    id           text   PRIMARY KEY,
    name         text   NOT NULL,
    role         text   NOT NULL,
    hash         bytea  NOT NULL,
    created_ns   bigint NOT NULL,
    created_by   text   NOT NULL,
    rotated_ns   bigint NOT NULL DEFAULT 0,
    last_used_ns bigint NOT NULL DEFAULT 0,
    revoked_ns   bigint NOT NULL DEFAULT 0
);
